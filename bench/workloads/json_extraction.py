"""JSON extraction (the SGLang paper's "JSON decoding"): fill a 5-field JSON schema from a
paragraph about a person, decoding under the schema; `bench/json_extraction.py` uses the same data."""

from __future__ import annotations

import random

import radixlm as sgl

from . import Outputs, Workload, state_outputs, threads

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 32},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "occupation": {"type": "string", "maxLength": 24},
        "city": {"type": "string", "maxLength": 24},
        "year_joined": {"type": "integer", "minimum": 1950, "maximum": 2030},
    },
    "required": ["name", "age", "occupation", "city", "year_joined"],
    "additionalProperties": False,
}
FIRST = ["Alice", "Bruno", "Chen", "Dana", "Emeka", "Farah", "Goran", "Hana", "Ivan", "Jia"]
LAST = ["Smith", "Rossi", "Okafor", "Novak", "Tanaka", "Garcia", "Dubois", "Khan", "Berg", "Silva"]
JOBS = ["engineer", "teacher", "nurse", "pilot", "chef", "architect", "farmer", "librarian"]
CITIES = ["Lyon", "Osaka", "Lagos", "Porto", "Denver", "Krakow", "Pune", "Bergen"]
INSTRUCTION = "Extract the person's details as JSON with the fields name, age, occupation, city, year_joined."


def paragraphs(n: int) -> list[str]:
    """n short paragraphs, each about one person (fixed seed)."""
    rng = random.Random(0)
    out = []
    for _ in range(n):
        name = f"{rng.choice(FIRST)} {rng.choice(LAST)}"
        out.append(f"{name} is a {rng.randrange(22, 70)}-year-old {rng.choice(JOBS)} who lives in {rng.choice(CITIES)}. "
                   f"{name.split()[0]} joined the company in {rng.randrange(1980, 2024)} and enjoys hiking at weekends.")
    return out


@sgl.function
def extract(s, paragraph):
    s += sgl.system(INSTRUCTION)
    s += sgl.user(paragraph)
    s += sgl.assistant_begin()
    s += sgl.gen("json", max_tokens=128, json_schema=SCHEMA)
    s += sgl.assistant_end()


def run(system, n: int) -> Outputs:
    return state_outputs(extract.run_batch([{"paragraph": p} for p in paragraphs(n)], backend=system.backend,
                                           num_threads=threads(system, n)))


WORKLOAD = Workload("json", "JSON extraction: 5-field schema filled from a paragraph, constrained decoding",
                    32, 8, run)
