"""Multi-turn chat: a system prompt and four user turns, each answered by the model, with short
(8 tokens) and long (64 tokens) answers; every turn's prompt extends the previous turn's."""

from __future__ import annotations

import random

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

SYSTEM = ("You are a friendly travel assistant. Answer in plain words, one idea at a time, and keep "
          "every answer practical: mention times, costs and places when they matter.")
TOPICS = ["a weekend in Lisbon", "hiking in the Alps", "a train trip across Japan", "camping by a lake",
          "a food tour of Mexico City", "visiting museums in Paris", "a cycling holiday in the Netherlands"]
FOLLOW_UPS = ["What should I pack?", "How much money should I bring?", "What is the best time of year to go?",
              "Which mistake do first-time visitors make?", "How do I get around?", "Where should I stay?"]


def conversations(n: int) -> list[dict]:
    """n conversations of four user turns (fixed seed)."""
    rng = random.Random("chat")
    out = []
    for i in range(n):
        turns = [f"I am planning {rng.choice(TOPICS)} (trip {i}). Where do I start?", *rng.sample(FOLLOW_UPS, 3)]
        out.append({"turns": turns})
    return out


@sgl.function
def chat(s, turns, max_tokens=8):
    s += sgl.system(SYSTEM)
    for i, turn in enumerate(turns):
        s += sgl.user(turn)
        s += sgl.assistant_begin()
        s += sgl.gen(f"answer{i}", max_tokens=max_tokens)
        s += sgl.assistant_end()


def _runner(max_tokens: int):
    def run(system, n: int) -> Outputs:
        args = [{**c, "max_tokens": max_tokens} for c in conversations(n)]
        return state_outputs(chat.run_batch(args, backend=system.backend, num_threads=threads(system, n)))

    return run


SHORT = Workload("chat-short", "4-turn chat, answers up to 8 tokens", 16, 8, _runner(8))
LONG = Workload("chat-long", "4-turn chat, answers up to 64 tokens", 16, 4, _runner(64))
