"""The frontend language over a deterministic fake Backend (no model): text building, variables,
fork/join, run_batch, select arithmetic, dtype parsing, streaming."""

from __future__ import annotations

import random
import threading
import time

import pytest

import radixlm as sgl
from radixlm.lang import ChoiceScore, DTypeError, GenOutput, Usage
from radixlm.lang.choices import decide, greedy_token_selection, token_length_normalized, unconditional_likelihood_normalized
from radixlm.lang.ir import parse_dtype

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
        return GenOutput(text, "stop", Usage(len(prompt), 0, len(text)))

    def stream(self, prompt, **opts):
        self._record("stream", prompt, opts)
        text = self.reply(prompt, opts)
        for i in range(0, len(text), 2):
            yield text[i:i + 2]

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


@pytest.mark.parametrize("dtype,text,value", [(int, " 42", 42), (float, "-1.5", -1.5), (bool, "False", False),
                                              (str, '"hi"', "hi")])
def test_dtype_parsing(dtype, text, value):
    assert parse_dtype(dtype, text) == value


@pytest.mark.parametrize("dtype,text", [(int, "4.2"), (int, "abc"), (float, "x1"), (bool, "yes"), (str, "hi")])
def test_dtype_parse_errors(dtype, text):
    with pytest.raises(DTypeError):
        parse_dtype(dtype, text)


def test_typed_gen_constrains_with_a_regex_and_reports_bad_output():
    fake = FakeBackend(reply=lambda p, o: "12" if "good" in p else "twelve")

    @sgl.function
    def prog(s, word):
        s += word + sgl.gen("n", dtype=int)
        s += " then"

    good = prog.run(word="good", backend=fake)
    assert good["n"] == 12 and good.text() == "good12 then"
    assert fake.log[0][2]["regex"] == r"-?[0-9]{1,15}[ \n]?"
    bad = prog.run(word="bad", backend=fake)
    with pytest.raises(DTypeError):
        bad["n"]
    with pytest.raises(DTypeError):
        bad.text()
    with pytest.raises(ValueError):
        sgl.gen("x", dtype=list)
    with pytest.raises(ValueError):
        sgl.gen("x", dtype=int, regex="[0-9]")


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
