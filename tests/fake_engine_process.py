"""`python tests/fake_engine_process.py ENDPOINT [CONFIG_JSON]`: an engine process on the fake model,
for tests that need a separate engine process (freezing it, or many client processes at once)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))

from fake_model import FakeModel  # noqa: E402
from radixlm.engine.engine import Engine, EngineConfig  # noqa: E402
from radixlm.engine.server import EngineServer  # noqa: E402

if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING, format="fake engine: %(message)s")
    config = EngineConfig(**json.loads(sys.argv[2])) if len(sys.argv) > 2 else EngineConfig()
    EngineServer(Engine(FakeModel(), config, eos_token_ids=[0]), sys.argv[1]).serve_forever()
