"""Compile a small DSPy program with an optimizer on the local radixlm engine: `BootstrapFewShot`
teaches a sentiment classifier from generated reviews, then `dspy.Evaluate` scores it before and
after on held-out reviews. An optimizer makes many calls that share one signature prompt and, once
demos are chosen, the same demos: the radix cache serves that shared prefix. Prints, per phase, the
LM calls, the share of prompt tokens served from the cache, the wall time and the score.

`--system hf` (or `llama-cpp`) runs the same compile on a bench peer instead (HF transformers, one call
at a time with no KV kept between calls, decoding under the same grammar), for the comparison.

    python examples/dspy_optimize.py [--train 16] [--dev 16] [--endpoint ipc://...] [--save program.json]
    python examples/dspy_optimize.py --system hf [--threads 2]
"""

from __future__ import annotations

import argparse
import random
import time
from typing import Literal

import dspy

from radixlm.adapters.dspy import LM

THINGS = ["pizza", "hotel", "movie", "phone", "concert", "book", "coffee", "bike", "game", "museum", "song", "car"]
GOOD = ["I loved the {}, it was wonderful.", "The {} was excellent and I would recommend it.",
        "What a great {}, absolutely fantastic!", "The {} made me very happy."]
BAD = ["I hated the {}, it was awful.", "The {} was terrible and I want my money back.",
       "What a disappointing {}, truly horrible.", "The {} made me very angry."]


class Review(dspy.Signature):
    """Classify the sentiment of the review."""

    review: str = dspy.InputField()
    sentiment: Literal["positive", "negative"] = dspy.OutputField()


def reviews(n: int, seed: int) -> list[dspy.Example]:
    """`n` generated reviews, half positive, half negative (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        label = "positive" if i % 2 == 0 else "negative"
        text = rng.choice(GOOD if label == "positive" else BAD).format(rng.choice(THINGS))
        out.append(dspy.Example(review=text, sentiment=label).with_inputs("review"))
    return out


def exact(example: dspy.Example, pred: dspy.Prediction, trace: object = None) -> bool:
    return example.sentiment == pred.sentiment


def _phase(name: str, lm: dspy.LM, start_calls: int, seconds: float, extra: str = "") -> None:
    calls = lm.history[start_calls:]
    prompt = sum(c["usage"]["prompt_tokens"] for c in calls)
    cached = sum((c["usage"].get("prompt_tokens_details") or {}).get("cached_tokens", 0) for c in calls)
    print(f"{name:<10} {len(calls):>4} LM calls, {cached}/{prompt} prompt tokens from the cache "
          f"({cached / max(prompt, 1):.0%}), {seconds:6.1f} s{extra}")


PEERS = {"hf": "HF transformers", "llama-cpp": "llama-cpp-python"}
MAX_TOKENS = 16  # a label and ChatAdapter's markup fit; every system gets the same budget


def make_lm(system: str, endpoint: str | None, threads: int) -> dspy.LM:
    """radixlm's LM, or a bench peer's (radixlm.bench.systems) on the same model."""
    if system == "radixlm":
        return LM("smollm2", endpoint, cache=False, max_tokens=MAX_TOKENS, num_retries=0)
    from radixlm.bench.systems import open_system

    return open_system(PEERS[system], "smollm2", threads).dspy_lm(MAX_TOKENS)


def main(train: int, dev: int, endpoint: str | None, save: str | None, system: str = "radixlm",
         threads: int = 2) -> None:
    lm = make_lm(system, endpoint, threads)
    print(f"system: {system}")
    dspy.configure(lm=lm)
    trainset, devset = reviews(train, seed=0), reviews(dev, seed=1)
    evaluate = dspy.Evaluate(devset=devset, metric=exact, num_threads=8, display_progress=False)
    program = dspy.Predict(Review)

    mark, start = len(lm.history), time.perf_counter()
    began = start
    before = evaluate(program).score
    _phase("baseline", lm, mark, time.perf_counter() - start, f", score {before:.0f}%")

    mark, start = len(lm.history), time.perf_counter()
    optimizer = dspy.BootstrapFewShot(metric=exact, max_bootstrapped_demos=4, max_labeled_demos=4)
    compiled = optimizer.compile(program, trainset=trainset)
    _phase("compile", lm, mark, time.perf_counter() - start, f", {len(compiled.demos)} demos chosen")

    mark, start = len(lm.history), time.perf_counter()
    after = evaluate(compiled).score
    _phase("compiled", lm, mark, time.perf_counter() - start, f", score {after:.0f}%")
    _phase("total", lm, 0, time.perf_counter() - began)
    if save:
        compiled.save(save)
        print(f"saved the compiled program to {save}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", type=int, default=16)
    parser.add_argument("--dev", type=int, default=16)
    parser.add_argument("--endpoint", default=None, help="engine address (default: attach or spawn)")
    parser.add_argument("--save", default=None, help="save the compiled program (JSON) here")
    parser.add_argument("--system", default="radixlm", choices=["radixlm", *PEERS],
                        help="the LM: radixlm's engine, or a bench peer on the same model")
    parser.add_argument("--threads", type=int, default=2, help="a peer's thread count")
    args = parser.parse_args()
    main(args.train, args.dev, args.endpoint, args.save, args.system, args.threads)
