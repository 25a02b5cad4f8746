"""Held-out measurements of a micro-blsp adapter against its baselines (the numbers of its model card).

    python -m evaluations.micro --model blsp_demo/weights/micro-blsp --work runs/micro --out runs/micro/eval

- repetition WER ("Please repeat the following words.") on the corpus's TTS test split and on the
  real recordings of `evaluations/data/real.jsonl`, for BLSP, CTC+LLM (its CTC head's transcript),
  Whisper+LLM and Text+LLM;
- spoken questions answered: the dev split of `blsp_demo/train/data/spoken_questions.jsonl`
  (spoken in `evaluations/data/qa.jsonl`), answer match;
- speech-vs-transcript alignment of the last prompt token under four instructions
  (`evaluations.representation`): centered cosine and retrieval accuracy among 50.

Baseline rows (`micro-cascade`, `micro-text`) do not depend on the adapter: they are made once
under `OUT/baselines` and reused. Every run is resumable (see `evaluations.run`). Writes
`OUT/results.md` and `OUT/results.json` with the targets of the training issue checked.
"""

from __future__ import annotations

import argparse
import csv
import json
from dataclasses import asdict, dataclass
from pathlib import Path

from . import representation
from . import run as evalrun

DATA = Path(__file__).resolve().parent / "data"
QUESTIONS = Path(__file__).resolve().parents[1] / "blsp_demo" / "train" / "data" / "spoken_questions.jsonl"


@dataclass(frozen=True)
class Targets:
    wer_tts_vs_cascade: float = 1.5
    wer_real_vs_cascade: float = 2.0
    retrieval: float = 0.90
    centered_cosine: float = 0.5


def qa_dev_manifest(out: Path, qa: Path = DATA / "qa.jsonl", questions: Path = QUESTIONS) -> Path:
    """The spoken dev questions (rows of qa.jsonl whose text is a dev question), audio paths absolute."""
    dev = {json.loads(l)["question"] for l in questions.read_text().splitlines()
           if l.strip() and json.loads(l).get("split") == "dev"}
    rows = [json.loads(l) for l in qa.read_text().splitlines() if l.strip()]
    keep = [dict(r, audio=str((qa.parent / r["audio"]).resolve())) for r in rows if r.get("transcript") in dev]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("".join(json.dumps(r) + "\n" for r in keep))
    return out


def read_scores(folder: Path) -> dict[tuple[str, str], dict]:
    """(system, "dataset:metric") -> the results.csv row of an `evaluations.run` output folder."""
    path = folder / "results.csv"
    if not path.is_file():
        return {}
    with path.open() as f:
        return {(r["system"], f"{r['dataset']}:{r['metric']}"): r for r in csv.DictReader(f)}


def pooled_wer(folders: list[Path], manifest: Path) -> dict[str, float]:
    """WER per system over every item of a set (all its datasets together), from the predictions."""
    from blsp_demo.analysis.metrics import item_stats, score_from_stats

    refs = {str(json.loads(l).get("id", n)): json.loads(l)["reference"]
            for n, l in enumerate(manifest.read_text().splitlines()) if l.strip()}
    preds: dict[str, list[tuple[str, str]]] = {}
    for folder in folders:
        for row in evalrun.read_jsonl(folder / evalrun.PREDICTIONS):
            if row["id"] in refs:
                preds.setdefault(row["system"], []).append((row["scored"], refs[row["id"]]))
    return {system: score_from_stats("wer", item_stats("wer", [p for p, _ in pairs], [r for _, r in pairs]))
            for system, pairs in preds.items()}


def run_sets(model: str | None, work: Path, out: Path, test_limit: int, batch_size: int,
             systems: str = "blsp,ctc") -> dict[str, Path]:
    """The three sets for the baselines, then (unless `model` is None) for the model."""
    sets = {"tts-test": (work / "corpus" / "test.jsonl", "asr", test_limit),
            "real": (DATA / "real.jsonl", "asr", None),
            "questions-dev": (qa_dev_manifest(out / "qa-dev.jsonl"), "qa", None)}
    folders = {}
    for name, (manifest, task, limit) in sets.items():
        lim = ["--limit", str(limit)] if limit else []
        common = ["--manifest", str(manifest), "--task", task, "--batch-size", str(batch_size), "--judge", "none", *lim]
        evalrun.main([*common, "--systems", "cascade,text", "--model", "micro-blsp",
                      "--out", str(out / "baselines" / name)])
        if model is not None:
            evalrun.main([*common, "--systems", systems, "--model", model, "--out", str(out / "model" / name)])
        folders[name] = out
    return folders


def summarize(out: Path, targets: Targets = Targets(), real_manifest: Path = DATA / "real.jsonl") -> dict:
    table: dict[str, dict[str, dict]] = {}
    for name in ("tts-test", "real", "questions-dev"):
        scores = {**read_scores(out / "baselines" / name), **read_scores(out / "model" / name)}
        table[name] = {f"{s}:{m}": {"score": float(r["score"]), "low": float(r["ci_low"]), "high": float(r["ci_high"]),
                                    "n": int(r["n"])} for (s, m), r in scores.items()}
    real = pooled_wer([out / "baselines" / "real", out / "model" / "real"], real_manifest)
    rep_path = out / "representation" / "representation.json"
    rep = json.loads(rep_path.read_text()) if rep_path.is_file() else None
    checks = {}

    def ratio(a, b):
        return a / b if a is not None and b else None

    tts = {s: table["tts-test"].get(f"{s}:asr:wer", {}).get("score") for s in ("blsp", "cascade")}
    for name, r, limit in (("wer_tts_test_vs_cascade", ratio(tts["blsp"], tts["cascade"]), targets.wer_tts_vs_cascade),
                           ("wer_real_pooled_vs_cascade", ratio(real.get("blsp"), real.get("cascade")),
                            targets.wer_real_vs_cascade)):
        checks[name] = {"value": r, "target": f"<= {limit}", "met": bool(r is not None and r <= limit)}
    q = table.get("questions-dev", {})
    b, c = q.get("blsp:questions-tts:answer_match"), q.get("cascade:questions-tts:answer_match")
    if b and c:
        checks["questions_right"] = {"value": [round(b["score"] * b["n"] / 100), round(c["score"] * c["n"] / 100)],
                                     "target": "blsp >= cascade", "met": bool(b["score"] >= c["score"])}
    if rep:
        accs = {k: v["retrieval_accuracy"] for k, v in rep["instructions"].items()}
        cos = {k: v["centered_cosine"] for k, v in rep["instructions"].items()}
        checks["retrieval"] = {"value": accs, "target": f">= {targets.retrieval}",
                               "met": bool(min(accs.values()) >= targets.retrieval)}
        checks["centered_cosine"] = {"value": cos, "target": f">= {targets.centered_cosine}",
                                     "met": bool(min(cos.values()) >= targets.centered_cosine)}
    return {"table": table, "real_pooled_wer": real, "checks": checks, "targets": asdict(targets)}


def markdown(summary: dict, model: str) -> str:
    names = {"text": "Text+LLM", "cascade": "Whisper+LLM", "ctc": "CTC+LLM", "blsp": "BLSP"}
    cols = (("tts-test", "asr:wer", "TTS test WER (%)"), ("real", "real-commands:wer", "real commands WER (%)"),
            ("real", "real-librivox:wer", "real LibriVox WER (%)"),
            ("questions-dev", "questions-tts:answer_match", "spoken dev questions right (%)"))
    lines = [f"# Held-out results: {model}", "",
             "| system | " + " | ".join(c[2] for c in cols) + " | real, all 11 pooled WER (%) |",
             "|---|" + "---|" * (len(cols) + 1)]
    t = summary["table"]
    for s in ("text", "cascade", "ctc", "blsp"):
        cells = []
        for name, key, _ in cols:
            c = t.get(name, {}).get(f"{s}:{key}")
            cells.append(f"{c['score']:.1f} [{c['low']:.1f}, {c['high']:.1f}] (n={c['n']})" if c else "not measured")
        pooled = summary["real_pooled_wer"].get(s)
        cells.append(f"{pooled:.1f}" if pooled is not None else "not measured")
        lines.append(f"| {names[s]} | " + " | ".join(cells) + " |")
    lines += ["", "95% bootstrap intervals over items. WER after Whisper's English normalizer; a spoken question "
              "counts as right when an accepted short answer appears in the reply.", "", "| check | value | target | met |",
              "|---|---|---|---|"]
    for k, c in summary["checks"].items():
        v = c["value"]
        v = ", ".join(f"{a}: {b:.3f}" for a, b in v.items()) if isinstance(v, dict) else (
            f"{v:.2f}" if isinstance(v, float) else str(v))
        lines.append(f"| {k} | {v} | {c['target']} | {'yes' if c['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    from blsp_demo.weights.devices import set_threads

    p = argparse.ArgumentParser(prog="python -m evaluations.micro", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", help="a micro-layout folder (or micro-blsp); leave out to make only the baselines")
    p.add_argument("--work", type=Path, default=Path("runs/micro"), help="the training run (its corpus test split)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--test-limit", type=int, default=300, help="TTS test clips")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--skip-representation", action="store_true")
    p.add_argument("--systems", default="blsp,ctc",
                   help="the model's systems (a whisper-decoder model has no CTC head: blsp)")
    a = p.parse_args(argv)
    set_threads()
    run_sets(a.model, a.work, a.out, a.test_limit, a.batch_size, a.systems)
    if a.model is None:
        return
    if not a.skip_representation:
        representation.main(["--manifest", str(a.work / "corpus" / "test.jsonl"), "--model", a.model,
                             "--n", "50", "--out", str(a.out / "representation")])
    summary = summarize(a.out)
    (a.out / "results.json").write_text(json.dumps(summary, indent=1))
    (a.out / "results.md").write_text(markdown(summary, a.model))
    print(markdown(summary, a.model))


if __name__ == "__main__":
    main()
