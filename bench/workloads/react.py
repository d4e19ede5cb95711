"""ReAct trace replay: a few-shot ReAct prompt, then a question whose fixed multi-step trace is
replayed: at each step the model writes its thought and action (generation stops at
"Observation"), then the step's recorded observation is appended."""

from __future__ import annotations

import random

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

STEPS = 3
CITIES = ["Varnholt", "Quellin", "Marrowby", "Tessaly", "Ombrin", "Kestrel Bay", "Dunmere", "Calloway"]
RIVERS = ["Ashwater", "Silverrun", "Greyfen", "Lowbrook", "Tarn", "Whitecap"]
PROMPT = """Solve a question answering task with interleaving Thought, Action, Observation steps. Thought can \
reason about the current situation, and Action can be three types:
(1) Search[entity], which searches the exact entity on Wikipedia and returns the first paragraph if it exists.
(2) Lookup[keyword], which returns the next sentence containing keyword in the current passage.
(3) Finish[answer], which returns the answer and finishes the task.
Here are some examples.

Question: Which river flows through the town where the painter Ilse Varga was born?
Thought 1: I need to search Ilse Varga, find where she was born, then find the river of that town.
Action 1: Search[Ilse Varga]
Observation 1: Ilse Varga (1881-1950) was a painter born in the town of Brenholm, known for her harbor scenes.
Thought 2: Ilse Varga was born in Brenholm. I need to search Brenholm to find its river.
Action 2: Search[Brenholm]
Observation 2: Brenholm is a market town on the banks of the river Elde, founded in the twelfth century.
Thought 3: Brenholm lies on the river Elde. So the answer is Elde.
Action 3: Finish[Elde]

Question: How many years after the founding of Oldcastle was its bridge built?
Thought 1: I need to search Oldcastle to find when it was founded and when its bridge was built.
Action 1: Search[Oldcastle]
Observation 1: Oldcastle was founded in 1204. Its stone bridge over the Rill was completed in 1290.
Thought 2: The bridge was built in 1290 and the town was founded in 1204, so 1290 - 1204 = 86 years.
Action 2: Finish[86]

"""


def traces(n: int) -> list[dict]:
    """n questions, each with STEPS recorded observations."""
    rng = random.Random("react-traces")
    out = []
    for i in range(n):
        city, river, other = rng.choice(CITIES), rng.choice(RIVERS), rng.choice(CITIES)
        year = rng.randrange(1100, 1900)
        person = f"{rng.choice(['Aldo', 'Berit', 'Cosmo', 'Dagny'])} {rng.choice(['Holm', 'Ruiz', 'Sato', 'Weir'])}"
        out.append({"question": f"Which river flows past the birthplace of the architect {person} (case {i})?",
                    "observations": [
                        f"{person} ({year}-{year + 61}) was an architect born in {city}, who later worked in {other}.",
                        f"{city} is a town on the river {river}, first recorded in {year - rng.randrange(100, 400)}.",
                        f"The {river} is a river of {rng.randrange(40, 300)} km that joins the sea near {other}.",
                    ][:STEPS]})
    return out


@sgl.function
def react(s, question, observations):
    s += PROMPT + f"Question: {question}\n"
    for i, observation in enumerate(observations, 1):
        s += f"Thought {i}:" + sgl.gen(f"step{i}", max_tokens=48, stop="Observation")
        s += f"Observation {i}: {observation}\n"


def run(system, n: int) -> Outputs:
    return state_outputs(react.run_batch(traces(n), backend=system.backend, num_threads=threads(system, n)))


WORKLOAD = Workload("react", f"ReAct agent trace replay, {STEPS}-step fixed traces, stop at Observation",
                    16, 4, run)
