"""MMLU-style 5-shot multiple choice: per subject a header and five worked questions (the shared
prefix of every question of that subject), then the question; the answer letter is a `select`."""

from __future__ import annotations

import random

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

LETTERS = ["A", "B", "C", "D"]
SUBJECTS = ["elementary arithmetic", "multiplication", "number comparison", "word knowledge"]
WORDS = ["apple", "banana", "cherry", "dolphin", "eagle", "falcon", "giraffe", "harbor", "island", "jungle",
         "kettle", "lantern", "meadow", "needle", "orchard", "pepper", "quartz", "river", "saddle", "tulip"]


def _question(subject: str, rng: random.Random) -> tuple[str, list[str], int]:
    """(question, four options, index of the right one)."""
    if subject == "elementary arithmetic":
        a, b = rng.randrange(10, 90), rng.randrange(10, 90)
        q, right = f"What is {a} + {b}?", a + b
    elif subject == "multiplication":
        a, b = rng.randrange(3, 13), rng.randrange(3, 13)
        q, right = f"What is {a} times {b}?", a * b
    elif subject == "number comparison":
        nums = rng.sample(range(100, 1000), 4)
        return "Which number is the largest?", [str(n) for n in nums], nums.index(max(nums))
    else:
        words = rng.sample(WORDS, 4)
        target = rng.randrange(4)
        return f"Which word starts with the letter '{words[target][0]}'?", words, target
    options = {right}
    while len(options) < 4:
        options.add(right + rng.choice([-10, -2, -1, 1, 2, 10, 11]))
    options = sorted(options)
    return q, [str(o) for o in options], options.index(right)


def _format(q: str, options: list[str]) -> str:
    return q + "\n" + "".join(f"{letter}. {o}\n" for letter, o in zip(LETTERS, options)) + "Answer:"


def few_shot(subject: str) -> str:
    """The subject's header and five answered questions (fixed per subject)."""
    rng = random.Random(f"mmlu-shots-{subject}")
    text = f"The following are multiple choice questions (with answers) about {subject}.\n\n"
    for _ in range(5):
        q, options, right = _question(subject, rng)
        text += _format(q, options) + f" {LETTERS[right]}\n\n"
    return text


def questions(n: int) -> list[dict]:
    """n program arguments, subjects in turn."""
    rng = random.Random("mmlu-questions")
    out = []
    for i in range(n):
        subject = SUBJECTS[i % len(SUBJECTS)]
        q, options, _ = _question(subject, rng)
        out.append({"examples": few_shot(subject), "question": _format(q, options)})
    return out


@sgl.function
def multiple_choice(s, examples, question):
    s += examples + question
    s += sgl.select("answer", choices=[" A", " B", " C", " D"])


def run(system, n: int) -> Outputs:
    return state_outputs(multiple_choice.run_batch(questions(n), backend=system.backend,
                                                   num_threads=threads(system, n)))


WORKLOAD = Workload("mmlu", "MMLU-style 5-shot multiple choice, answer letter by select", 64, 16, run)
