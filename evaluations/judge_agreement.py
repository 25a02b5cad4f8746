"""How good are the offline judges? Each judge's verdicts on shipped QA answers against answer
match (does an accepted short answer occur in the reply), as Cohen's kappa with a bootstrap interval.

    python -m evaluations.judge_agreement --out runs/judges --limit 90 \\
        --judges llama-server:smollm2,llama-server:qwen0.5b,local:qwen0.5b,llama-server:GGUF_PATH

A judge is `llama-server:<llm>` (llama.cpp's OpenAI-compatible server on loopback, generation, the
judge prompt of blsp_demo.judge) or `local:<llm>` (transformers, option scoring: the likelier of
"Verdict: acceptable" / "Verdict: unacceptable"); <llm> is a bundled LLM (smollm2, qwen0.5b) or a
GGUF path. The rows are the first `--limit` of the shipped QA predictions, balanced over systems.
Writes OUT/judge_agreement.md and .json; verdicts are cached (a rerun costs nothing).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from blsp_demo.analysis.metrics import answer_match, cohen_kappa
from blsp_demo.files import read_jsonl

ROOT = Path(__file__).resolve().parents[1]
PREDICTIONS = ROOT / "evaluations" / "results" / "qa" / "predictions.jsonl"
QA = ROOT / "evaluations" / "data" / "qa.jsonl"
BUNDLED = {"smollm2": "smollm2-135m-instruct", "qwen0.5b": "qwen2.5-coder-0.5b-instruct"}


def rows(limit: int) -> list[dict]:
    """QA predictions with their question, accepted answers and answer match, balanced over systems."""
    qa = {r["id"]: r for r in read_jsonl(QA)}
    by_system: dict[str, list[dict]] = {}
    for p in read_jsonl(PREDICTIONS):
        q = qa.get(p["id"])
        if q is None or p.get("error"):
            continue
        match = answer_match(p["prediction"], q["answers"])[0] == 1.0
        by_system.setdefault(p["system"], []).append({**p, "question": q["transcript"], "answers": q["answers"],
                                                      "match": "accept" if match else "reject"})
    per = max(1, limit // max(1, len(by_system)))
    return [r for rs in by_system.values() for r in rs[:per]]


def gguf_of(llm: str) -> tuple[Path, str]:
    from blsp_demo.weights.llms import get_llm

    if llm in BUNDLED:
        folder, name = get_llm(BUNDLED[llm]).gguf()
        return folder / name, llm
    return Path(llm), Path(llm).stem


def make_judge(spec: str, cache: Path):
    from blsp_demo.judge import Judge, LlamaServerBackend, LocalBackend, ReplyCache
    from blsp_demo.judge.llama_server import ServerOptions

    kind, llm = spec.split(":", 1)
    if kind == "llama-server":
        path, name = gguf_of(llm)
        backend = LlamaServerBackend(ServerOptions(gguf=path, alias=f"llama.cpp:{name}", n_ctx=4096))
    elif kind == "local":
        from blsp_demo.weights.checkpoints import bundled_llm

        model, tok = bundled_llm(name=BUNDLED[llm])
        backend = LocalBackend(model.eval(), tok, name=f"local:{llm}")
    else:
        raise SystemExit(f"unknown judge kind {kind!r} (llama-server or local)")
    return Judge(backend, ReplyCache(cache), concurrency=1)


def kappa_interval(a: list[str], b: list[str], n: int = 1000, seed: int = 0) -> tuple[float, float]:
    rng = np.random.default_rng(seed)
    idx = np.arange(len(a))
    values = [cohen_kappa([a[i] for i in s], [b[i] for i in s]) for s in (rng.choice(idx, len(idx)) for _ in range(n))]
    values = [v for v in values if v == v]
    return (float(np.percentile(values, 2.5)), float(np.percentile(values, 97.5))) if values else (np.nan, np.nan)


def score(spec: str, items: list[dict], verdicts: list) -> dict:
    judged = [(i["match"], v.verdict) for i, v in zip(items, verdicts) if v.verdict in ("accept", "reject")]
    truth, said = [t for t, _ in judged], [s for _, s in judged]
    lo, hi = kappa_interval(truth, said)
    return {"judge": spec, "model": verdicts[0].judge_model if verdicts else "", "rows": len(items),
            "judged": len(judged), "accept_rate": float(np.mean([s == "accept" for s in said])) if said else np.nan,
            "match_rate": float(np.mean([t == "accept" for t in truth])) if truth else np.nan,
            "agreement": float(np.mean([t == s for t, s in judged])) if judged else np.nan,
            "kappa": cohen_kappa(truth, said), "kappa_low": lo, "kappa_high": hi}


def table(results: list[dict]) -> str:
    lines = ["| judge | rows judged | accepts | answer match accepts | agreement | kappa [95% CI] |",
             "|---|---|---|---|---|---|"]
    for r in results:
        lines.append(f"| {r['judge']} | {r['judged']}/{r['rows']} | {r['accept_rate']:.0%} | {r['match_rate']:.0%} | "
                     f"{r['agreement']:.0%} | {r['kappa']:.2f} [{r['kappa_low']:.2f}, {r['kappa_high']:.2f}] |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.judge_agreement", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--judges", default="llama-server:smollm2,llama-server:qwen0.5b,local:qwen0.5b")
    p.add_argument("--limit", type=int, default=90)
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    items = rows(a.limit)
    results = []
    for spec in [s.strip() for s in a.judges.split(",") if s.strip()]:
        judge = make_judge(spec, a.out / "cache")
        try:
            verdicts = judge.judge_many([(i["question"], i["prediction"], i["answers"]) for i in items])
        finally:
            getattr(judge.backend, "close", lambda: None)()
        results.append(score(spec, items, verdicts))
        print(table(results[-1:]).splitlines()[-1], flush=True)
    (a.out / "judge_agreement.json").write_text(json.dumps(results, indent=1))
    (a.out / "judge_agreement.md").write_text(table(results) + "\n")
    print(table(results))


if __name__ == "__main__":
    main()
