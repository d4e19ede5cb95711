"""HellaSwag-style 20-shot: twenty context/ending pairs (shared by every program), then a context
whose ending is a `select` among four candidate endings."""

from __future__ import annotations

import random

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

PEOPLE = ["A woman", "A man", "A boy", "A girl", "An old man", "A chef", "A runner", "A painter"]
PLACES = ["in a kitchen", "on a beach", "in a gym", "at a park", "in a garage", "on a stage", "in a garden"]
ACTIONS = [("picks up a knife", "slices the onion into thin rings"),
           ("ties a pair of shoes", "starts jogging along the path"),
           ("opens a can of paint", "dips a brush and paints the fence"),
           ("fills a bucket with water", "washes the car with a sponge"),
           ("lifts a heavy barbell", "lowers it slowly back to the floor"),
           ("tunes a guitar", "plays a soft song for the crowd"),
           ("kneels by the flower bed", "pulls the weeds out one by one"),
           ("cracks two eggs into a bowl", "whisks them with a fork")]


def _item(rng: random.Random) -> tuple[str, list[str], int]:
    who, where = rng.choice(PEOPLE), rng.choice(PLACES)
    i = rng.randrange(len(ACTIONS))
    wrong = rng.sample([a[1] for j, a in enumerate(ACTIONS) if j != i], 3)
    right = rng.randrange(4)
    endings = wrong[:right] + [ACTIONS[i][1]] + wrong[right:]
    return f"{who} {where} {ACTIONS[i][0]}. Then the person", endings, right


def few_shot() -> str:
    rng = random.Random("hellaswag-shots")
    text = "Pick the most sensible ending for each description.\n\n"
    for _ in range(20):
        ctx, endings, right = _item(rng)
        text += f"{ctx} {endings[right]}.\n\n"
    return text


def items(n: int) -> list[dict]:
    rng = random.Random("hellaswag-items")
    shots = few_shot()
    out = []
    for _ in range(n):
        ctx, endings, _ = _item(rng)
        out.append({"examples": shots, "context": ctx, "endings": [" " + e for e in endings]})
    return out


@sgl.function
def ending(s, examples, context, endings):
    s += examples + context
    s += sgl.select("ending", choices=endings)


def run(system, n: int) -> Outputs:
    return state_outputs(ending.run_batch(items(n), backend=system.backend, num_threads=threads(system, n)))


WORKLOAD = Workload("hellaswag", "HellaSwag-style 20-shot sentence completion, four endings by select",
                    32, 8, run)
