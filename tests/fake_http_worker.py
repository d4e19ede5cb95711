"""A worker for the scale-out tests: an engine on the fake model (tests/fake_model.py) and the real HTTP
front in one process. `python tests/fake_http_worker.py PORT` serves http://127.0.0.1:PORT until killed."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import uvicorn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from server_harness import client_for, fake_server  # noqa: E402

from radixlm.http.app import build_app  # noqa: E402
from radixlm.http.front import Front  # noqa: E402

if __name__ == "__main__":
    with fake_server(Path(tempfile.mkdtemp(prefix="radixlm-fake-worker-"))) as server:
        client = client_for(server, timeout=60)
        uvicorn.run(build_app(Front(client, "fake", 4096)), host="127.0.0.1", port=int(sys.argv[1]),
                    log_level="warning")
