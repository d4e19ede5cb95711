"""Errors of the HTTP front, with the status codes and bodies the clients expect: OpenAI's
`{"error": {"message", "type", "param", "code"}}` on `/v1/...`, SGLang's `{"error": {"message"}}` on the
native endpoints (both carry `error.message`, which is what every client reads)."""

from __future__ import annotations

from typing import Any

from starlette.responses import JSONResponse

from ..connection import EngineDiedError, EngineError

# The engine's error codes (protocol.Error) as HTTP statuses.
ENGINE_STATUS = {"invalid_request": 400, "bad_message": 400, "too_large": 413, "unknown_request": 404,
                 "duplicate_request": 409, "bad_version": 400, "engine_error": 500}
OPENAI_TYPE = {400: "invalid_request_error", 401: "invalid_request_error", 404: "invalid_request_error",
               409: "invalid_request_error", 413: "invalid_request_error", 500: "server_error",
               503: "service_unavailable"}


class HTTPError(Exception):
    """A request the front answers with `status` and a message naming the problem; `param` is the
    request field at fault and `code` OpenAI's machine-readable code, where known."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code


def from_engine(exc: Exception) -> HTTPError:
    """The HTTPError for a failure of one engine call: the engine's errors, its absence, a timeout, and
    what the client refuses to send (an unknown option is a TypeError, a message over the size limit a
    ValueError) as 400."""
    if isinstance(exc, EngineError):
        return HTTPError(ENGINE_STATUS.get(exc.code, 500), exc.message, code=exc.code)
    if isinstance(exc, EngineDiedError):
        return HTTPError(503, f"the engine is not running: {exc}", code="engine_unavailable")
    if isinstance(exc, TimeoutError):
        return HTTPError(504, str(exc), code="timeout")
    if isinstance(exc, (ValueError, TypeError)):
        return HTTPError(400, str(exc))
    raise exc


def openai_body(err: HTTPError) -> dict[str, Any]:
    return {"error": {"message": err.message, "type": OPENAI_TYPE.get(err.status, "invalid_request_error"),
                      "param": err.param, "code": err.code}}


def sglang_body(err: HTTPError) -> dict[str, Any]:
    return {"error": {"message": err.message}}


def error_response(err: HTTPError, openai_style: bool) -> JSONResponse:
    return JSONResponse(openai_body(err) if openai_style else sglang_body(err), status_code=err.status)
