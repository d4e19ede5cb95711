"""radixlm's httpx backend against llama-cpp-python's OpenAI-compatible server (`python -m llama_cpp.server`,
the `bench` extra) on the embedded SmolLM2 GGUF: `radixlm.connect("http://...")` recognises the server, and
a DSPy program runs on it through radixlm's DSPy adapter with JSON-schema constrained replies."""

from __future__ import annotations

import importlib.util
import subprocess
import sys

import pytest
from radixlm.bench.http_servers import free_port, wait_healthy

import radixlm
from radixlm.engine.model_source import ModelNotFoundError, embedded_gguf
from radixlm.http.llamacpp_wire import LlamaCppPythonDialect, gbnf_literal

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def llama_server():
    if importlib.util.find_spec("llama_cpp") is None:
        pytest.skip("llama-cpp-python is not installed (the `bench` extra: scripts/setup-bench.sh)")
    for module in ("fastapi", "sse_starlette", "starlette_context", "pydantic_settings"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"llama-cpp-python's server needs {module} (pip install 'llama-cpp-python[server]')")
    try:
        gguf = embedded_gguf("smollm2")
    except ModelNotFoundError as exc:
        pytest.skip(f"SmolLM2's GGUF is missing: {exc}")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--model_alias",
                             "smollm2", "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
                             "--n_threads", "1", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, timeout=120.0, path="/v1/models")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(scope="module")
def client(llama_server):
    c = radixlm.connect(llama_server, model="smollm2", timeout=120)
    yield c
    c.close()


def test_connect_recognises_llama_cpp_python(client):
    assert isinstance(client.dialect, LlamaCppPythonDialect)
    assert client.info() == {"models": ["smollm2"]}


def test_dspy_chain_of_thought_runs_through_the_httpx_backend(client):
    import dspy

    from radixlm.adapters.dspy import LM

    class QA(dspy.Signature):
        """Answer the question."""

        question: str = dspy.InputField()
        answer: str = dspy.OutputField()

    lm = LM("smollm2", client=client, cache=False, max_tokens=64, num_retries=0)
    with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
        pred = dspy.ChainOfThought(QA)(question="What is the capital of France?")
    assert "paris" in pred.answer.lower()  # greedy on llama.cpp: '{"reasoning": "Paris", "answer": "The capital...'
    assert pred.reasoning


def test_choices_become_a_gbnf_grammar(client):
    r = client.generate([{"role": "user", "content": "Is the sky blue? Answer yes or no."}], max_new_tokens=4,
                        choices=["yes", "no"])
    assert r.text in ("yes", "no")


def test_a_lark_grammar_is_refused_with_the_reason(client):
    with pytest.raises(ValueError, match="cannot constrain a reply to a Lark grammar"):
        client.generate([{"role": "user", "content": "Hi"}], max_new_tokens=4, lark='start: "a"')


def test_gbnf_literal_escapes_quotes_backslashes_and_control_characters():
    assert gbnf_literal('say "hi"\\\n') == '"say \\"hi\\"\\\\\\x0A"'
