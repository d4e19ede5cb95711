"""The HTTP front as a Starlette ASGI app: routes, bearer-token check, and errors as the APIs shape them."""

from __future__ import annotations

import secrets
from typing import Awaitable, Callable

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.base import BaseHTTPMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from . import openai_api, sglang_api
from .errors import HTTPError, error_response
from .front import ClientDisconnected, Front

# Health probes (a router's, a load balancer's) need no key; they reveal nothing.
OPEN_PATHS = frozenset({"/health", "/health_generate"})


def _openai_style(request: Request) -> bool:
    return request.url.path.startswith("/v1/")


class _BearerAuth(BaseHTTPMiddleware):
    def __init__(self, app, api_key: str) -> None:  # noqa: ANN001
        super().__init__(app)
        self.expected = f"Bearer {api_key}".encode()

    async def dispatch(self, request: Request, call_next: Callable[[Request], Awaitable[Response]]) -> Response:
        if request.url.path not in OPEN_PATHS:
            given = request.headers.get("authorization", "").encode()
            if not secrets.compare_digest(given, self.expected):
                err = HTTPError(401, "Incorrect API key provided: send it as 'Authorization: Bearer <key>'",
                                code="invalid_api_key")
                return error_response(err, _openai_style(request))
        return await call_next(request)


def build_app(front: Front) -> Starlette:
    """The ASGI app serving `front`'s engine."""
    def bind(handler):  # noqa: ANN001, ANN202
        async def endpoint(request: Request) -> Response:
            return await handler(front, request)
        return endpoint

    get_post = ["GET", "POST"]
    routes = [
        Route("/v1/chat/completions", bind(openai_api.chat_completions), methods=["POST"]),
        Route("/v1/completions", bind(openai_api.completions), methods=["POST"]),
        Route("/v1/models", bind(openai_api.models), methods=["GET"]),
        Route("/generate", bind(sglang_api.generate), methods=["POST", "PUT"]),
        Route("/get_model_info", bind(sglang_api.model_info), methods=["GET"]),
        Route("/model_info", bind(sglang_api.model_info), methods=["GET"]),
        Route("/get_server_info", bind(sglang_api.server_info), methods=["GET"]),
        Route("/server_info", bind(sglang_api.server_info), methods=["GET"]),
        Route("/flush_cache", bind(sglang_api.flush_cache), methods=get_post),
        Route("/end_trace", bind(sglang_api.end_trace), methods=["POST"]),
        Route("/health", bind(sglang_api.health), methods=["GET"]),
        Route("/health_generate", bind(sglang_api.health_generate), methods=["GET"]),
    ]

    async def on_http_error(request: Request, exc: HTTPError) -> Response:
        return error_response(exc, _openai_style(request))

    async def on_starlette_error(request: Request, exc: HTTPException) -> Response:
        return error_response(HTTPError(exc.status_code, f"{exc.detail}: {request.method} {request.url.path}"),
                              _openai_style(request))

    async def on_disconnect(request: Request, exc: ClientDisconnected) -> Response:
        return Response(status_code=499)  # nobody is listening; the engine request was aborted

    middleware = [Middleware(_BearerAuth, api_key=front.api_key)] if front.api_key else []
    return Starlette(routes=routes, middleware=middleware,
                     exception_handlers={HTTPError: on_http_error, HTTPException: on_starlette_error,
                                         ClientDisconnected: on_disconnect})
