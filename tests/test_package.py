"""Packaging promises: light client import, the console command, clear model errors."""

from __future__ import annotations

import subprocess
import sys

import pytest

from radixlm.cli import main
from radixlm.engine.model_source import ModelNotFoundError, resolve_model


def test_import_radixlm_does_not_import_torch():
    code = "import sys, radixlm, radixlm.client, radixlm.protocol; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_engine_and_adapters_import_under_the_radixlm_namespace():
    import radixlm.adapters
    import radixlm.engine.engine

    assert radixlm.engine.engine.Engine.__module__ == "radixlm.engine.engine"
    assert radixlm.adapters.__name__ == "radixlm.adapters"


@pytest.mark.parametrize("name", ["no-such-model", "/nonexistent/model.gguf"])
def test_a_missing_model_says_what_to_pass(name):
    with pytest.raises(ModelNotFoundError, match="gguf|GGUF"):
        resolve_model(name)


def test_cli_reports_a_missing_model_without_a_traceback(capsys):
    assert main(["info", "--model", "no-such-model"]) == 2
    assert "smollm2" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_info_describes_smollm2(capsys):
    assert main(["info", "--model", "smollm2"]) == 0
    out = capsys.readouterr().out
    for words in ("llama", "30 layers", "134.5 M", "8192 tokens", "load time"):
        assert words in out


def test_the_native_kernels_sources_are_installed():
    """Every source the native kernels build from ships with the installed package (package-data)."""
    from radixlm.engine.quant.native import SOURCES

    missing = [str(p) for p in SOURCES if not p.is_file()]
    assert not missing, f"not installed: {missing}"
