"""Does the llama.cpp runtime answer as the transformers one does? The 40 dev questions of
`spoken_questions.jsonl`, typed (their transcripts), through a registered text model under both
runtimes, greedy: how many answers are identical, and answer match (an accepted answer in the reply)
under each, with 95% bootstrap intervals.

    python -m evaluations.benchmarks.agreement [--model micro-text] [--max-new-tokens 64] [--out F.json]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from blsp_demo.analysis.metrics import answer_match, bootstrap_interval
from blsp_demo.conversation import single_turn
from blsp_demo.options import GenerationOptions
from blsp_demo.train.corpus import load_questions
from blsp_demo.weights.devices import set_threads

RUNTIMES = ("torch", "llama.cpp")


def dev_questions() -> list[dict]:
    return [q for q in load_questions() if q.get("split") == "dev"]


def answers_of(model: str, runtime: str, questions: list[dict], opts: GenerationOptions) -> list[str]:
    from blsp_demo.engine.loading import load_engine

    engine = load_engine(model, runtime=runtime)
    convs = [single_turn(text=q["question"]) for q in questions]
    return [r.text for r in engine.respond_batch(convs, opts, batch_size=8)]


def summary(model: str, questions: list[dict], answers: dict[str, list[str]]) -> dict:
    out = {"model": model, "n": len(questions), "identical": sum(a == b for a, b in zip(*answers.values()))}
    for runtime, texts in answers.items():
        stats = [answer_match(t, q["answers"]) for t, q in zip(texts, questions)]
        hits = [s[0] for s in stats]
        lo, hi = bootstrap_interval("answer_match", stats)
        out[runtime] = {"answer_match": 100 * sum(hits) / len(hits), "interval": [lo, hi], "right": int(sum(hits))}
    out["answers"] = [{"question": q["question"], **{k: v[i] for k, v in answers.items()}}
                      for i, q in enumerate(questions)]
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m evaluations.benchmarks.agreement", description=__doc__)
    p.add_argument("--model", default="micro-text")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    set_threads(args.threads)
    questions = dev_questions()
    opts = GenerationOptions(max_new_tokens=args.max_new_tokens, temperature=0.0)
    answers = {rt: answers_of(args.model, rt, questions, opts) for rt in RUNTIMES}
    result = summary(args.model, questions, answers)
    line = (f"{args.model}: {result['identical']}/{result['n']} identical greedy answers; answer match "
            + ", ".join(f"{rt} {result[rt]['right']}/{result['n']} ({result[rt]['interval'][0]:.0f}-"
                        f"{result[rt]['interval'][1]:.0f}%)" for rt in RUNTIMES))
    print(line)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
