"""The frontend language on a real engine (SmolLM2): SGLang-style programs, greedy outputs equal to
plain sequential requests, and prefix sharing visible in the engine's usage reports."""

from __future__ import annotations

import asyncio
import json

import pytest

import radixlm as sgl

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    c = sgl.connect(f"ipc://{tmp_path_factory.mktemp('ipc') / 'engine.sock'}", model="smollm2", timeout=120)
    yield c
    c.shutdown()


@pytest.fixture(scope="module")
def backend(client):
    b = sgl.EngineBackend(client)
    sgl.set_default_backend(b)
    return b


def replay(client, state, name, **opts):
    """The same gen as one plain sequential request (greedy)."""
    meta = state.get_meta_info(name)
    return client.generate(meta["prompt"], **opts).text


def test_chat_template_parts_match_the_engine_rendering(backend, client):
    parts = backend.chat_template_parts()
    assert parts["user"] == ("<|im_start|>user\n", "<|im_end|>\n")


def test_few_shot_qa(backend, client):
    @sgl.function
    def few_shot(s, question):
        s += "Q: What is the capital of Italy?\nA: Rome\n"
        s += "Q: What is the capital of Spain?\nA: Madrid\n"
        s += "Q: " + question + "\nA:" + sgl.gen("answer", max_tokens=8, stop="\n")

    state = few_shot.run(question="What is the capital of France?")
    assert "Paris" in state["answer"]
    assert state["answer"] == replay(client, state, "answer", max_new_tokens=8, stop="\n")


def test_multi_turn_chat_four_turns(backend, client):
    questions = ["Hi! Who are you?", "Name a color.", "Name a fruit.", "Say goodbye."]

    @sgl.function
    def chat(s):
        s += sgl.system("You are a helpful assistant.")
        for i, q in enumerate(questions):
            s += sgl.user(q)
            s += sgl.assistant(sgl.gen(f"turn{i}", max_tokens=12))

    state = chat.run()
    messages = state.messages()
    assert [m["role"] for m in messages] == ["system"] + ["user", "assistant"] * 4
    history = [{"role": "system", "content": "You are a helpful assistant."}]
    for i, q in enumerate(questions):  # the engine renders the model's own chat template
        history.append({"role": "user", "content": q})
        expected = client.generate(history, max_new_tokens=12).text
        assert state[f"turn{i}"] == expected != ""
        history.append({"role": "assistant", "content": expected})
    assert messages == [{**m, "content": m["content"].lstrip()} for m in history]  # SGLang strips a turn's start


def test_tree_of_thought_three_levels(backend, client):
    @sgl.function
    def tree(s, question):
        s += sgl.user(question) + sgl.assistant_begin() + "Let's think.\n"
        for b in s.fork(3):
            b += "Idea:" + sgl.gen("idea", max_tokens=3)
            checks = b.fork(3)
            for c in checks:
                c += "\nCheck:" + sgl.gen("check", max_tokens=3)
                leaves = c.fork(3)
                leaves += "\nVerdict:" + sgl.gen("verdict", max_tokens=2)
                leaves.join()
            checks.join()
            states.append(b)

    states: list = []
    state = tree.run(question="How can I save money?")
    assert len(states) == 3
    for b in states:
        b.sync()
        assert b.fork_prefix_usage.prompt_tokens > 10
        first = b.requests[0]
        assert first.cached_tokens >= b.fork_prefix_usage.prompt_tokens
        assert b["idea"] == replay(client, b, "idea", max_new_tokens=3)
        assert len(b["check"]) == 3 and [len(v) for v in b["verdict"]] == [3, 3, 3]
        for leaves in b["verdict"]:  # identical prompts under greedy decoding: identical verdicts
            assert leaves[0] == leaves[1] == leaves[2]


def test_tree_leaves_gathered(backend, client):
    @sgl.function
    def tree(s):
        s += "Numbers:"
        level1 = s.fork(3)
        level1 += [" 1", " 2", " 3"]
        for b in level1:
            level2 = b.fork(3)
            level2 += [",a", ",b", ",c"]
            for c in level2:
                level3 = c.fork(3)
                level3 += [";x", ";y", ";z"]
                level3 += sgl.gen("leaf", max_tokens=2)
                level3.join()
            level2.join()
        level1.join()

    state = tree.run()
    leaves = state["leaf"]
    assert len(leaves) == 3 and all(len(l2) == 3 and all(len(l3) == 3 for l3 in l2) for l2 in leaves)
    for i, a in enumerate(" 1 2 3".split()):
        for j, b in enumerate("abc"):
            for k, c in enumerate("xyz"):
                prompt = f"Numbers: {a},{b};{c}"
                assert leaves[i][j][k] == client.generate(prompt, max_new_tokens=2).text


def test_parallel_judge_fork_six_then_join(backend, client):
    aspects = ["clarity", "accuracy", "brevity", "tone", "grammar", "helpfulness"]

    @sgl.function
    def judge(s, answer):
        s += "You are grading this answer to 'What is 2+2?': " + answer + "\n"
        forks = s.fork(len(aspects))
        forks += [f"Rate its {a} from 1 to 5. Rating:" for a in aspects]
        forks += sgl.gen("rating", max_tokens=4, stop="\n")
        forks.join()
        s += "Summary:" + sgl.gen("summary", max_tokens=8)

    state = judge.run(answer="It is 4.")
    assert len(state["rating"]) == 6
    prefix = "You are grading this answer to 'What is 2+2?': It is 4.\n"
    for a, r in zip(aspects, state["rating"]):
        assert r == client.generate(prefix + f"Rate its {a} from 1 to 5. Rating:", max_new_tokens=4, stop="\n").text
    assert state.text() == prefix + "Summary:" + state["summary"]


def test_json_extraction_with_a_regex(backend, client):
    regex = r'\{"name": "[A-Za-z ]{1,20}", "age": [0-9]{1,3}\}'

    @sgl.function
    def extract(s, text):
        s += "Extract the person as JSON.\nText: " + text + "\nJSON: "
        s += sgl.gen("json", max_tokens=32, regex=regex)

    state = extract.run(text="Alice Smith is 31 years old.")
    data = json.loads(state["json"])
    assert set(data) == {"name", "age"} and isinstance(data["age"], int)
    assert state["json"] == replay(client, state, "json", max_new_tokens=32, regex=regex)


FIVE_SHOT = "".join(f"Question: {q}\nAnswer: {a}\n\n" for q, a in [
    ("What color is the sky on a clear day? (A) green (B) blue (C) red", "B"),
    ("How many legs does a cat have? (A) four (B) two (C) six", "A"),
    ("Which is a fruit? (A) carrot (B) potato (C) apple", "C"),
    ("What is frozen water called? (A) steam (B) ice (C) sand", "B"),
    ("Which animal barks? (A) dog (B) fish (C) bird", "A"),
])


def test_select_five_shot_multiple_choice_scores_equal_one_choice_at_a_time(backend, client):
    choices = [" A", " B", " C"]

    @sgl.function
    def mc(s, question, method=None):
        s += FIVE_SHOT + "Question: " + question + "\nAnswer:"
        s += sgl.select("answer", choices=choices, choices_method=method)

    state = mc.run(question="Which one is a planet? (A) Mars (B) chair (C) shoe")
    assert state["answer"] in choices
    meta = state.get_meta_info("answer")
    prefix = meta_prefix = FIVE_SHOT + "Question: Which one is a planet? (A) Mars (B) chair (C) shoe\nAnswer:"
    n = client.generate(meta_prefix, prefix_only=True).prompt_tokens
    for choice, got in zip(choices, meta["token_logprobs"]):
        alone = client.generate(prefix + choice, prefix_only=True, logprob_start_len=n)
        expected = [e[0] for e in alone.prompt_logprobs]
        assert got == pytest.approx(expected, abs=1e-3)
    assert state.scores("answer") == pytest.approx([sum(x) / len(x) for x in meta["token_logprobs"]])
    best = max(range(3), key=lambda i: state.scores("answer")[i])
    assert state["answer"] == choices[best]
    for method in ("greedy_token_selection", "unconditional_likelihood_normalized"):
        other = mc.run(question="Which one is a planet? (A) Mars (B) chair (C) shoe", method=method)
        meta = other.get_meta_info("answer")
        assert meta["method"] == method and other["answer"] in choices
        for got, want in zip(meta["token_logprobs"], state.get_meta_info("answer")["token_logprobs"]):
            assert got == pytest.approx(want, abs=1e-3)
    assert other.get_meta_info("answer")["unconditional_token_logprobs"] is not None


def test_gen_dtype_int(backend, client):
    @sgl.function
    def arith(s):
        s += "3 + 4 = 7\n10 + 5 = 15\n2 + 2 = " + sgl.gen("n", dtype=int, max_tokens=6, stop="\n")

    state = arith.run()
    assert state["n"] == "4"  # a typed gen's value is its text, as in SGLang


STATEMENT = "Determine whether the statement is True or False.\nStatement: Ice is cold.\nAnswer:"


def test_select_scores_every_choice_in_one_extend_pass_over_the_cached_prefix(backend, client):
    choices = [" True", " False", " Unknown", " Maybe"]

    @sgl.function
    def pick(s):
        s += STATEMENT + sgl.select("answer", choices=choices)

    before = client.stats()["extend_passes"]
    state = pick.run()
    assert state["answer"] in choices
    # one pass caches the prefix, one pass scores the four choices together (on a busy CPU the engine
    # may step between the choices' arrivals: one more pass, never one per choice)
    assert client.stats()["extend_passes"] - before in (2, 3)
    prefix_tokens = client.generate(STATEMENT, prefix_only=True).prompt_tokens
    for usage in state.usage("answer"):
        # the prefix's last token's logprob (for token healing) comes from the pass over the token before it
        assert usage.cached_tokens >= prefix_tokens - 2


TIP_PROMPT = "Give one short tip for writing a good blog post, on a single line.\n"


def test_fork_branches_share_the_cached_prefix(backend, client):
    @sgl.function
    def tips(s):
        s += TIP_PROMPT
        forks = s.fork(4)
        forks += lambda i: f"Tip {i + 1}:"
        forks += sgl.gen("tip", max_tokens=4, stop="\n")
        forks.join()

    before = client.stats()["computed_tokens"]
    state = tips.run()
    computed = client.stats()["computed_tokens"] - before
    branches = state.get_meta_info("tip")["branches"]
    prefix_tokens = client.generate(TIP_PROMPT, prefix_only=True).prompt_tokens
    assert len(state["tip"]) == 4 and all(m["prompt"].startswith(TIP_PROMPT) for m in branches)
    assert all(m["cached_tokens"] >= prefix_tokens for m in branches)
    # the shared prefix is computed once, not once per branch
    branch_work = sum(m["prompt_tokens"] - m["cached_tokens"] + m["completion_tokens"] for m in branches)
    assert computed <= prefix_tokens + branch_work


def test_streaming_text_iter_equals_the_blocking_run(backend, client):
    @sgl.function
    def story(s):
        s += sgl.user("Tell me a very short story.")
        s += sgl.assistant(sgl.gen("story", max_tokens=20))

    streamed = story.run(stream=True)
    pieces = list(streamed.text_iter())
    assert len(pieces) > 3
    blocking = story.run()
    assert "".join(pieces) == streamed.text() == blocking.text()
    assert list(story.run(stream=True).text_iter("story")) and streamed["story"] == blocking["story"]


def test_run_batch_of_twenty_computes_the_constant_prefix_once(backend, client):
    @sgl.function
    def classify(s, word):
        s += "Classify each word as animal, plant or object.\nrose: plant\nchair: object\nhorse: animal\n"
        s += word + ":" + sgl.gen("label", max_tokens=3, stop="\n")

    words = ["cat", "tree", "table", "dog", "grass", "lamp", "fish", "oak", "cup", "bird",
             "moss", "pen", "cow", "fern", "book", "lion", "tulip", "phone", "owl", "ivy"]
    before = client.stats()["computed_tokens"]
    states = classify.run_batch([{"word": w} for w in words], num_threads=20)
    after = client.stats()["computed_tokens"]
    prefix_tokens = classify.prefix_usage.prompt_tokens
    assert classify.batch_prefix.endswith("horse: animal\n") and prefix_tokens > 20
    for st in states:
        assert st.usage("label").cached_tokens >= prefix_tokens
    # the 20 suffixes plus their outputs plus the prefix once; never the prefix twenty times
    suffix_work = sum(st.usage("label").prompt_tokens - st.usage("label").cached_tokens
                      + st.usage("label").completion_tokens for st in states)
    assert after - before <= prefix_tokens + suffix_work + 20
    for w, st in zip(words, states):
        assert st["label"] == classify.run(word=w)["label"]


def test_streamed_logprobs_equal_the_blocking_gens(backend, client):
    @sgl.function
    def qa(s):
        s += sgl.user("Name a fruit.")
        s += sgl.assistant(sgl.gen("answer", max_tokens=8, return_logprob=True, top_logprobs_num=2))

    async def collect(state):
        return [meta async for _, meta in state.text_async_iter("answer", return_meta_data=True)]

    metas = asyncio.run(collect(qa.run(stream=True)))
    streamed = [e for m in metas for e in m["output_token_logprobs"]]
    blocking = qa.run().get_meta_info("answer")
    assert metas and metas[-1]["completion_tokens"] == len(streamed)
    assert [e[1] for e in streamed] == [e[1] for e in blocking["output_token_logprobs"]][: len(streamed)]
    assert [e[0] for e in streamed] == pytest.approx([e[0] for e in blocking["output_token_logprobs"]][: len(streamed)],
                                                     abs=1e-3)
    assert all(len(t) == 2 for m in metas for t in m["output_top_logprobs"])
