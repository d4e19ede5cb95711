"""The frontend language over a deterministic fake Backend (no model): text building, variables,
fork/join, run_batch, select arithmetic, typed gens, streaming, and SGLang's API surface (role and
variable scopes, fork item assignment, composition, logprob meta_info, global_config)."""

from __future__ import annotations

import asyncio
import random
import threading
import time

import pytest

import radixlm as sgl
from radixlm.lang import ChoiceScore, GenOutput, StreamPiece, Usage
from radixlm.lang.choices import decide, greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from radixlm.lang.ir import DTYPE_REGEX, REGEX_INT

CHATML = {r: (f"<{r}>", f"</{r}>") for r in ("system", "user", "assistant")}


class FakeBackend:
    """generate answers `reply(prompt, options)`; every call is logged in order."""

    def __init__(self, reply=None, scores=None, parts=CHATML, delay=None):
        self.reply = reply or (lambda prompt, opts: f"<{len(prompt)}>")
        self.scores = scores or {}
        self.parts, self.delay = parts, delay
        self.log: list[tuple] = []
        self.lock = threading.Lock()

    def _record(self, *entry):
        with self.lock:
            self.log.append(entry)

    def generate(self, prompt, **opts):
        if self.delay:
            time.sleep(self.delay())
        text = self.reply(prompt, opts)
        self._record("gen", prompt, opts)
        return GenOutput(text, "stop", Usage(len(prompt), 0, len(text)), None, self._logprobs(text, opts))

    @staticmethod
    def _logprobs(text, opts):
        """One token per character, logprob -i/10 for the i-th; None unless asked."""
        return [(-i / 10, i, ch) for i, ch in enumerate(text)] if opts.get("logprobs") else None

    def stream(self, prompt, **opts):
        """First a token whose text is held back (an empty piece), then two characters (tokens) per piece."""
        self._record("stream", prompt, opts)
        text = self.reply(prompt, opts)
        lps = self._logprobs("#" + text, opts)
        yield StreamPiece("", 1, lps and lps[:1])
        for i in range(0, len(text), 2):
            yield StreamPiece(text[i:i + 2], len(text[i:i + 2]), lps and lps[i + 1:i + 3])
        yield GenOutput(text, "stop", Usage(len(prompt), 0, len(text) + 1), None, lps)

    def cache_prefix(self, prompt):
        self._record("prefix", prompt)
        return Usage(len(prompt), 0, 0, "prefix")

    def score_choices(self, prefix, choices):
        self._record("score", prefix, tuple(choices))
        return [ChoiceScore(list(self.scores[(prefix, c)]), [], Usage(1, 0)) for c in choices]

    def chat_template_parts(self):
        return self.parts


def test_text_building_variables_and_sampling_options():
    fake = FakeBackend(reply=lambda p, o: "Paris")

    @sgl.function
    def qa(s, question):
        s += "Q: " + question + "\n"
        s += "A: " + sgl.gen("answer", max_tokens=7, stop=["\n"])
        s += "\nDone."

    state = qa.run(question="Capital?", temperature=0.5, backend=fake)
    assert state["answer"] == "Paris"
    assert state.text() == "Q: Capital?\nA: Paris\nDone."
    assert fake.log == [("gen", "Q: Capital?\nA: ", {"max_new_tokens": 7, "stop": ["\n"], "temperature": 0.5})]
    assert state.usage("answer") == Usage(len("Q: Capital?\nA: "), 0, 5)


def test_gen_does_not_block_and_keeps_order_within_a_state():
    release = threading.Event()
    fake = FakeBackend(reply=lambda p, o: (release.wait(5), "x")[1])

    @sgl.function
    def prog(s):
        s += "a" + sgl.gen("v1") + "b" + sgl.gen("v2") + "c"

    state = prog.run(backend=fake)  # returns while the first gen is still waiting
    assert not release.is_set() and fake.log == []
    release.set()
    assert state["v2"] == "x" and state.text() == "axbxc"
    assert [e[1] for e in fake.log] == ["a", "axb"]


def test_roles_render_with_the_template_parts_and_messages():
    fake = FakeBackend(reply=lambda p, o: "hi there")

    @sgl.function
    def chat(s):
        s += sgl.system("Be brief.")
        s += sgl.user("Hello")
        s += sgl.assistant(sgl.gen("reply"))
        s += sgl.user_begin() + "More" + sgl.user_end()

    state = chat.run(backend=fake)
    assert state.text() == "<system>Be brief.</system><user>Hello</user><assistant>hi there</assistant><user>More</user>"
    assert fake.log[0][1] == "<system>Be brief.</system><user>Hello</user><assistant>"
    assert state.messages() == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"},
                                {"role": "assistant", "content": "hi there"}, {"role": "user", "content": "More"}]
    no_template = chat.run(backend=FakeBackend(parts=None))
    with pytest.raises(RuntimeError, match="chat template"):
        no_template.text()


def test_fork_caches_the_prefix_once_then_branches_and_join_gathers():
    fake = FakeBackend(reply=lambda p, o: p[-1].upper())

    @sgl.function
    def prog(s):
        s += "root:"
        forks = s.fork(3)
        forks += ["a", "b", "c"]
        forks += sgl.gen("x")
        forks.join()
        s += "|"
        more = s.fork(2)
        more += "z"
        s.join(more, mode="concate_and_append")

    state = prog.run(backend=fake)
    assert state["x"] == ["A", "B", "C"]
    assert state.text() == "root:|zz"
    first_prefix = fake.log.index(("prefix", "root:"))
    gens = [i for i, e in enumerate(fake.log) if e[0] == "gen"]
    assert len(gens) == 3 and min(gens) > first_prefix
    assert sorted(e[1] for e in fake.log if e[0] == "gen") == ["root:a", "root:b", "root:c"]
    assert ("prefix", "root:|") in fake.log


def test_nested_forks_and_branch_fork_prefix():
    fake = FakeBackend(reply=lambda p, o: p[-1])

    @sgl.function
    def tree(s):
        s += "T"
        level1 = s.fork(2)
        level1 += ["0", "1"]
        for b in level1:
            level2 = b.fork(2)
            level2 += ["a", "b"]
            level2 += sgl.gen("leaf")
            level2.join()
        level1.join()

    state = tree.run(backend=fake)
    assert state["leaf"] == [["a", "b"], ["a", "b"]]
    prefixes = [e[1] for e in fake.log if e[0] == "prefix"]
    assert sorted(prefixes) == ["T", "T0", "T1"] and prefixes[0] == "T"
    assert sorted(e[1] for e in fake.log if e[0] == "gen") == ["T0a", "T0b", "T1a", "T1b"]


def test_run_batch_keeps_input_order_and_precaches_the_constant_prefix():
    rng = random.Random(0)
    fake = FakeBackend(reply=lambda p, o: p.split("#")[-1], delay=lambda: rng.random() * 0.01)

    @sgl.function
    def prog(s, n):
        s += sgl.system("sys")
        s += "constant header\n"
        s += f"item #{n}"
        s += sgl.gen("echo")

    assert prog.trace_prefix(fake) == "<system>sys</system>constant header\nitem #"

    @sgl.function
    def method_roles(s, q):
        s.system("sys")
        s.user("hello " + q)

    assert method_roles.trace_prefix(fake) == "<system>sys</system><user>hello "
    states = prog.run_batch([{"n": i} for i in range(30)], num_threads=8, backend=fake, progress_bar=True)
    assert [s["echo"] for s in states] == [str(i) for i in range(30)]
    assert fake.log[0] == ("prefix", "<system>sys</system>constant header\nitem #")
    assert sum(e[0] == "prefix" for e in fake.log) == 1


def test_trace_stops_at_the_first_generated_or_read_part():
    fake = FakeBackend()

    @sgl.function
    def prog(s, q):
        s += "fixed "
        s += sgl.gen("g")
        s += "after " + q

    @sgl.function
    def branchy(s, q):
        s += "head "
        if s["missing"]:
            s += "never"

    assert prog.trace_prefix(fake) == "fixed "
    assert branchy.trace_prefix(fake) == "head "


def test_select_methods_arithmetic():
    cond = [[-1.0, -3.0], [-1.5], [-1.0, -1.0, -9.0]]
    index, scores = decide(token_length_normalized, cond)
    assert scores == [-2.0, -1.5, pytest.approx(-11 / 3)] and index == 1
    # greedy: position 0 ties choices 0 and 2 (-1.0); position 1: -3.0 vs -1.0 -> choice 2
    assert decide(greedy_token_selection, cond)[0] == 2
    # a shorter choice is padded with its mean: [-1] -> [-1, -1] beats [-1, -2]
    assert decide(greedy_token_selection, [[-1.0, -2.0], [-1.0]])[0] == 1
    uncond = [[-0.5, -0.5], [-4.0], [-3.0]]
    index, scores = decide(unconditional_likelihood_normalized, cond, uncond)
    assert scores == [-1.5, 2.5, pytest.approx(-11 / 3 + 3.0)] and index == 1
    with pytest.raises(ValueError):
        decide(unconditional_likelihood_normalized, cond)


def test_select_in_a_program_uses_scores_and_unconditional_context():
    scores = {("Q?", " yes"): [-1.0, -1.0], ("Q?", " no"): [-0.5, -2.0],
              ("\n", " yes"): [-0.1, -0.1], ("\n", " no"): [-3.0, -3.0]}
    fake = FakeBackend(scores=scores)

    @sgl.function
    def prog(s, method):
        s += "Q?"
        s += sgl.select("ans", choices=[" yes", " no"], choices_method=method)
        s += "!"

    a = prog.run(method=None, backend=fake)
    assert a["ans"] == " yes" and a.scores("ans") == [-1.0, -1.25] and a.text() == "Q? yes!"
    assert prog.run(method=greedy_token_selection, backend=fake)["ans"] == " no"
    u = prog.run(method="unconditional_likelihood_normalized", backend=fake)
    assert u["ans"] == " no" and u.scores("ans") == [pytest.approx(-0.9), 1.75]
    assert prog.run(method=None, backend=fake).get_meta_info("ans")["choices"] == [" yes", " no"]
    assert sgl.gen("g", choices=["a", "b"]) == sgl.select("g", choices=["a", "b"])


def test_typed_gen_is_constrained_by_sglangs_regex_and_keeps_its_text():
    fake = FakeBackend(reply=lambda p, o: "12")

    @sgl.function
    def prog(s):
        s += "n=" + sgl.gen_int("n") + " then " + sgl.gen_string("w", stop=["!"]) + sgl.gen("b", dtype=bool)

    state = prog.run(stop=["\n\n"], backend=fake)
    assert state["n"] == "12" and state.text() == "n=12 then 1212"  # the value is the text, as in SGLang
    n_opts, w_opts, b_opts = (e[2] for e in fake.log)
    assert n_opts["regex"] == DTYPE_REGEX["int"] and n_opts["stop"] == ["\n\n", " ", "\n"]
    assert w_opts["regex"] == sgl.lang.REGEX_STR and w_opts["stop"] == ["!"]
    assert b_opts["regex"] == "(True|False)" and b_opts["stop"] == ["\n\n"]
    assert REGEX_INT == r"[-+]?[0-9]+[ \n]*"
    with pytest.raises(ValueError, match="dtype"):
        sgl.gen("x", dtype=list)
    with pytest.raises(ValueError, match="not both"):
        sgl.gen("x", dtype=int, regex="[0-9]")
    with pytest.raises(ValueError, match="invalid regex"):
        sgl.gen("x", regex="(")
    with pytest.raises(ValueError, match="fork"):
        sgl.gen("x", n=2)


def test_text_iter_streams_the_whole_program_or_one_variable():
    fake = FakeBackend(reply=lambda p, o: "abcdef")

    @sgl.function
    def prog(s):
        s += "start "
        s += sgl.gen("v")
        s += " end"

    state = prog.run(stream=True, backend=fake)
    pieces = list(state.text_iter())
    assert pieces == ["start ", "ab", "cd", "ef", " end"]
    assert fake.log[0][0] == "stream"
    assert list(prog.run(stream=True, backend=fake).text_iter("v")) == ["ab", "cd", "ef"]


def test_role_and_variable_scopes():
    fake = FakeBackend(reply=lambda p, o: " hi")

    @sgl.function
    def chat(s, question):
        s.system("Be brief.")
        with s.user():
            s += question
        with s.assistant():
            with s.var_scope("said"):
                s += "Sure:" + sgl.gen("answer")

    state = chat.run(question="Hello?", backend=fake)
    assert state.text() == "<system>Be brief.</system><user>Hello?</user><assistant>Sure: hi</assistant>"
    assert state["said"] == "Sure: hi" and state["answer"] == " hi"
    assert [m["role"] for m in state.messages()] == ["system", "user", "assistant"]
    assert fake.log[0][1] == "<system>Be brief.</system><user>Hello?</user><assistant>Sure:"

    @sgl.function
    def leading_space(s):
        s += sgl.assistant(sgl.gen("a"))

    assert leading_space.run(backend=fake).messages() == [{"role": "assistant", "content": "hi"}]  # lstripped


def test_fork_item_assignment_and_a_function_of_the_branch_index():
    fake = FakeBackend(reply=lambda p, o: p[-2:])

    @sgl.function
    def prog(s):
        s += "P"
        forks = s.fork(3)
        for i in range(3):
            forks[i] += f"-{i}"
        forks += lambda i: f"{i * 2}"
        forks += sgl.gen("tail")
        forks.join()
        s += "/" + forks[2]["tail"]

    state = prog.run(backend=fake)
    assert state["tail"] == ["00", "12", "24"] and state.text() == "P/24"
    with pytest.raises(TypeError, match="replaced"):
        forks = prog.run(backend=fake).fork(2)
        forks[0] = forks[1]


def test_a_program_called_inside_a_program_runs_on_the_same_state():
    fake = FakeBackend(reply=lambda p, o: "!")

    @sgl.function
    def greet(s, name):
        s += "Hi " + name + sgl.gen("mark")

    @sgl.function
    def outer(s):
        s += "<"
        s += greet("Ann") + ">"
        s += greet(name="Bob")

    state = outer.run(backend=fake)
    assert state.text() == "<Hi Ann!>Hi Bob!" and state["mark"] == "!"
    alone = greet("Cy", backend=fake)  # outside a program: a run of its own
    assert alone.text() == "Hi Cy!"


def test_logprobs_in_meta_info_with_sglangs_names():
    fake = FakeBackend(reply=lambda p, o: "abc")

    @sgl.function
    def prog(s):
        s += "x" + sgl.gen("plain") + sgl.gen("scored", return_logprob=True, top_logprobs_num=0,
                                             return_text_in_logprobs=True)

    state = prog.run(backend=fake, logprob_start_len=-1)
    meta = state.get_meta_info("scored")
    assert meta["output_token_logprobs"] == [(0.0, 0, "a"), (-0.1, 1, "b"), (-0.2, 2, "c")]
    assert meta["completion_tokens"] == 3 and meta["finish_reason"] == {"type": "stop", "matched": None}
    assert "output_token_logprobs" not in state.get_meta_info("plain")
    plain_opts, scored_opts = fake.log[0][2], fake.log[1][2]
    assert "logprobs" not in plain_opts and scored_opts["logprobs"] is True and scored_opts["logprob_start_len"] == -1
    untexted = prog.run(backend=fake, return_text_in_logprobs=False)  # the gen's own value wins
    assert untexted.get_meta_info("scored")["output_token_logprobs"][0] == (0.0, 0, "a")


def test_streamed_chunks_carry_their_own_tokens_logprobs():
    fake = FakeBackend(reply=lambda p, o: "abcd")

    @sgl.function
    def prog(s):
        s += "Q:" + sgl.gen("v", return_logprob=True)

    async def collect(state):
        return [item async for item in state.text_async_iter("v", return_meta_data=True)]

    chunks = asyncio.run(collect(prog.run(stream=True, backend=fake)))
    assert [text for text, _ in chunks] == ["ab", "cd"]
    first, second = (meta for _, meta in chunks)
    # the held-back first token's logprob rides with the first chunk that has text
    assert first["completion_tokens"] == 3 and len(first["output_token_logprobs"]) == 3
    assert first["output_token_logprobs_length"] == 3
    assert second["completion_tokens"] == 5 and len(second["output_token_logprobs"]) == 2
    streamed = prog.run(stream=True, backend=fake)
    assert list(streamed.text_iter("v")) == ["ab", "cd"] and streamed["v"] == "abcd"
    assert streamed.get_meta_info("v")["output_token_logprobs_length"] == 5


def test_stream_run_returns_at_once_and_reraises_the_bodys_error():
    release = threading.Event()

    @sgl.function
    def prog(s):
        s += "a"
        release.wait(5)
        raise KeyError("boom")

    state = prog.run(stream=True, backend=FakeBackend())
    release.set()
    with pytest.raises(KeyError, match="boom"):
        list(state.text_iter())


def test_run_keywords_global_config_and_unsupported_features():
    fake = FakeBackend(reply=lambda p, o: "r")

    @sgl.function
    def prog(s, a, b="B"):
        s += a + b + sgl.gen("g", max_tokens=3)

    previous = sgl.global_config.default_backend
    sgl.set_default_backend(fake)
    try:
        assert sgl.global_config.default_backend is fake
        state = prog.run("A", max_new_tokens=9, temperature=0, top_k=-1, frequency_penalty=0.5)
        assert state.text() == "ABr"
        assert fake.log[-1][2] == {"max_new_tokens": 3, "temperature": 0, "top_k": 0, "frequency_penalty": 0.5}
        states = prog.run_batch([("x",), ["y", "z"]], num_threads=2)
        assert [s.text() for s in states] == ["xBr", "yzr"]
    finally:
        sgl.set_default_backend(previous)
    with pytest.raises(ValueError, match="fork"):
        prog.run("A", n=2, backend=fake)
    with pytest.raises(ValueError, match="num_api_spec_tokens.*speculative"):
        sgl.function(num_api_spec_tokens=64)
    with pytest.raises(TypeError, match="run_batch item"):
        prog.run_batch([("x", "y", "z")], backend=fake)
