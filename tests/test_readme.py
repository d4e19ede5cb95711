"""The README's Python code blocks run as written, each as its own script on the embedded model.

A block that cannot run here (it needs a GPU or a second machine) is preceded by an HTML comment
`<!-- readme-test: skip REASON -->`; the reason is shown as the skip reason. Every other block runs.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parent.parent / "README.md"
_BLOCK = re.compile(r"(?:<!-- readme-test: skip (?P<skip>[^>]*?) -->\s*)?```python\n(?P<code>.*?)```", re.S)


def _blocks() -> list:
    text = README.read_text()
    params = []
    for match in _BLOCK.finditer(text):
        line = text[: match.start("code")].count("\n") + 1
        marks = [pytest.mark.skip(reason=match["skip"])] if match["skip"] else []
        params.append(pytest.param(match["code"], id=f"README.md:{line}", marks=marks))
    return params


def test_readme_has_python_blocks() -> None:
    assert len(_blocks()) >= 5


@pytest.mark.slow
@pytest.mark.parametrize("code", _blocks())
def test_readme_block_runs(code: str, tmp_path: Path) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    # A private runtime directory: the block's default endpoint is its own engine, not a user's.
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, f"block failed:\n{code}\n--- stderr ---\n{proc.stderr[-4000:]}"
