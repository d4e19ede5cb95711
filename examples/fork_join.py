"""Fork/join with the SGLang frontend language on radixlm: an SGLang program runs by changing only its
import line (`import sglang as sgl` -> `import radixlm as sgl`).

    python examples/fork_join.py [endpoint]
"""

import sys

import radixlm as sgl


@sgl.function
def tips(s, topic):
    s += sgl.system("You are a concise assistant.")
    s += sgl.user(f"Give one tip about {topic}.")
    s += sgl.assistant_begin()
    forks = s.fork(3)  # the shared prefix is cached once, then the branches decode together
    forks += [f"Tip {i + 1}:" for i in range(3)]
    forks += sgl.gen("tip", max_tokens=24, stop="\n")
    forks.join()  # s["tip"] is now the list of the three branches' tips
    s += "Summary:" + sgl.gen("summary", max_tokens=24)
    s += sgl.assistant_end()


def main() -> None:
    client = sgl.connect(sys.argv[1] if len(sys.argv) > 1 else None, model="smollm2")
    sgl.set_default_backend(sgl.EngineBackend(client))
    state = tips.run(topic="saving energy at home")
    for i, tip in enumerate(state["tip"]):
        print(f"branch {i}: {tip.strip()}")
    print("summary:", state["summary"].strip())
    for r in state.requests:
        print(f"  {r.kind:6} prompt={r.prompt_tokens:4} cached={r.cached_tokens:4} completion={r.completion_tokens}")


if __name__ == "__main__":
    main()
