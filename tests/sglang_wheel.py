"""Find SGLang's wheel in the local cache and read files out of it (never committed to this repo).

`scripts/test.sh` fetches it once with `pip download --no-deps sglang==0.5.23 -d ~/.cache/radixlm/wheels`.
`read_wheel_text` reads one file, e.g. "sglang/test/test_programs.py". A wheel is a zip archive, so
`sys.path.insert(0, str(sglang_wheel()))` puts its pure-Python modules on the import path (zipimport);
`import sglang` then still needs SGLang's own dependencies (its `__init__` imports its runtime, e.g.
pybase64, torch, transformers).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

SGLANG_VERSION = "0.5.23"
WHEEL_DIR = Path.home() / ".cache" / "radixlm" / "wheels"
FETCH_COMMAND = f"pip download --no-deps sglang=={SGLANG_VERSION} -d {WHEEL_DIR}"


def sglang_wheel() -> Path | None:
    """The cached sglang wheel of SGLANG_VERSION (any platform tag), or None when it was not fetched."""
    found = sorted(WHEEL_DIR.glob(f"sglang-{SGLANG_VERSION}-*.whl"))
    return found[-1] if found else None


def read_wheel_text(member: str) -> str:
    """The text of file `member` (a path inside the wheel) of the cached wheel."""
    wheel = sglang_wheel()
    if wheel is None:
        raise FileNotFoundError(f"no sglang {SGLANG_VERSION} wheel in {WHEEL_DIR}; fetch it with: {FETCH_COMMAND}")
    with zipfile.ZipFile(wheel) as archive:
        return archive.read(member).decode("utf-8")
