"""Batch evaluation of a model and its baselines on a manifest: the paper's Table 2 / Table 3.

    python -m evaluations.run --manifest F --task asr|st|slu|qa --systems blsp,cascade,text \
        --model SPEC --out DIR [--batch-size 32] [--limit N] [--judge auto|openai|local|none]

For each system the engine is `load_engine(SPEC, system)`; a registered micro name maps to its
sibling (`--model micro-blsp`: micro-blsp, micro-cascade, micro-text, micro-ctc). Rows go through
`respond_batch` in fixed batches (greedy decoding); each finished batch is appended to
`DIR/predictions.jsonl` at once, so an interrupted run resumes where it stopped and a rerun skips
rows already there (`--retry-errors` redoes failed ones). A row that fails (missing file, bad
audio) is recorded with its error and scored as an empty answer; the run goes on. A system that
cannot load at all is listed in `DIR/errors.json` and shown as such in the tables.

Outputs (all recomputed from predictions.jsonl, so a resumed run writes the same files):
`results.csv` (system, task, dataset, metric, score, 95% bootstrap interval, n) and `results.md`
(systems as rows, datasets x metrics as columns, like the paper's tables). QA answers are judged
for acceptability when a judge is configured (`judgements.jsonl`, cached).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

from tqdm import tqdm

from blsp_demo.options import GenerationOptions
from blsp_demo.conversation import single_turn
from blsp_demo.files import read_jsonl
from blsp_demo.judge import BACKENDS
from blsp_demo.analysis.metrics import METRICS, bootstrap_interval, item_stats, score_from_stats

from .tasks import GROUPS, TASKS, Task, task_of

SYSTEMS = ("text", "cascade", "ctc", "blsp")  # table order: upper bound, the cascade baselines, the model
SYSTEM_NAMES = {"text": "Text+LLM", "cascade": "Whisper+LLM", "ctc": "CTC+LLM", "blsp": "BLSP"}
MICRO = {"micro-blsp", "micro-cascade", "micro-text", "micro-ctc"}
PREDICTIONS, JUDGEMENTS, ERRORS = "predictions.jsonl", "judgements.jsonl", "errors.json"


# ---- manifest -----------------------------------------------------------------------------------
def read_manifest(path: Path, group: str, limit: int | None = None) -> list[dict]:
    """Rows of the group's tasks, with `id`, absolute `audio` and `task` filled in."""
    if group not in GROUPS:
        raise ValueError(f"unknown task {group!r}; choose from {sorted(GROUPS)}")
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines()):
        if not line.strip():
            continue
        row = json.loads(line)
        if row.get("task") not in (None, group, *GROUPS[group]):
            continue
        row = dict(row, id=str(row.get("id", n)), task=task_of(row, group).name)
        if row.get("audio"):
            row["audio"] = str((Path(path).parent / row["audio"]).resolve())
        rows.append(row)
    ids = [r["id"] for r in rows]
    if len(set(ids)) != len(ids):
        raise ValueError(f"{path}: row ids are not unique")
    return rows[:limit] if limit else rows


def spec_for(model: str, system: str) -> str:
    return f"micro-{system}" if model in MICRO else model


# ---- predictions file -----------------------------------------------------------------------------
def append_jsonl(path: Path, records: Iterable[dict]) -> None:
    records = list(records)
    if not records:
        return
    with open(path, "ab") as f:
        if f.tell() and (path.read_bytes()[-1:] != b"\n"):  # after a torn line: start a fresh one
            f.write(b"\n")
        f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8"))
        f.flush()
        os.fsync(f.fileno())


def latest_by_key(records: list[dict], *fields: str) -> dict[tuple, dict]:
    return {tuple(r.get(k) for k in fields): r for r in records}  # later lines win


# ---- generation -----------------------------------------------------------------------------------
def conversation_for(row: dict, task: Task):
    return single_turn(audio=row.get("audio"), instruction=task.instruction(row), transcript=row.get("transcript"))


def prediction_record(system: str, spec: str, engine, row: dict, task: Task, response=None,
                      error: Exception | None = None) -> dict:
    text = response.text if response is not None else ""
    return {"system": system, "spec": spec, "model_id": getattr(engine, "model_id", spec),
            "revision": getattr(engine, "revision", ""), "id": row["id"], "task": task.name,
            "dataset": row.get("dataset") or task.name, "instruction": task.instruction(row),
            "prediction": text, "scored": task.extract(text, row) if response is not None else "",
            "transcript_heard": getattr(response, "transcript", None) if system == "cascade" else None,
            "new_tokens": getattr(response, "new_tokens", 0), "finish_reason": getattr(response, "finish_reason", None),
            "seconds": round(response.total_s, 3) if response is not None else None,
            "error": None if error is None else str(error) or type(error).__name__,
            "error_code": None if error is None else getattr(error, "code", type(error).__name__)}


def run_batch(engine, rows: list[dict], system: str, spec: str, batch_size: int) -> list[dict]:
    """One batch through respond_batch; per-row failures become error records. If the batch as a
    whole fails, its rows are tried one by one so that one bad row cannot sink the others."""
    errors: dict[int, Exception] = {}
    tasks = [TASKS[r["task"]] for r in rows]
    options = GenerationOptions(max_new_tokens=max(t.max_new_tokens for t in tasks), temperature=0.0)
    convs = [conversation_for(r, t) for r, t in zip(rows, tasks)]
    try:
        responses = engine.respond_batch(convs, options, batch_size=batch_size, on_error=errors.__setitem__)
    except Exception:  # noqa: BLE001 - isolate the failing row below
        if len(rows) == 1:
            raise
        return [rec for row in rows for rec in run_batch_safe(engine, [row], system, spec)]
    return [prediction_record(system, spec, engine, row, task, resp, errors.get(i))
            for i, (row, task, resp) in enumerate(zip(rows, tasks, responses))]


def run_batch_safe(engine, rows, system, spec) -> list[dict]:
    try:
        return run_batch(engine, rows, system, spec, 1)
    except Exception as err:  # noqa: BLE001 - recorded on the row
        return [prediction_record(system, spec, engine, rows[0], TASKS[rows[0]["task"]], None, err)]


def batches(rows: list[dict], size: int) -> list[list[dict]]:
    """Fixed batches over all rows (shortest texts together), whatever is already done: a resumed
    run puts every row in the batch it would have had (left padding can nudge greedy decoding)."""
    ordered = sorted(rows, key=lambda r: (len(r.get("transcript") or r.get("reference") or ""), r["id"]))
    return [ordered[i:i + size] for i in range(0, len(ordered), size)]


def generate(engine, rows: list[dict], system: str, spec: str, out: Path, batch_size: int, done: set) -> None:
    todo = sum(r["id"] not in done for r in rows)
    with tqdm(total=len(rows), initial=len(rows) - todo, desc=SYSTEM_NAMES.get(system, system), unit="row") as bar:
        for batch in batches(rows, batch_size):
            batch = [r for r in batch if r["id"] not in done]
            if not batch:
                continue
            records = run_batch(engine, batch, system, spec, batch_size)
            append_jsonl(out / PREDICTIONS, records)
            bar.update(len(batch))


# ---- judging --------------------------------------------------------------------------------------
def judge_answers(judge, rows: list[dict], predictions: dict, out: Path, systems: list[str]) -> None:
    """Acceptability verdicts for QA answers that have none from this judge and prompt yet."""
    from blsp_demo.judge import PROMPT_VERSION

    have = latest_by_key(read_jsonl(out / JUDGEMENTS), "system", "id", "judge_model", "prompt_version")
    todo = [(s, r) for s in systems for r in rows if r["task"] == "qa" and (s, r["id"]) in predictions
            and (s, r["id"], judge.model, PROMPT_VERSION) not in have]
    if not todo:
        return
    questions = [(r.get("transcript") or r.get("question") or "", predictions[(s, r["id"])]["prediction"],
                  TASKS["qa"].reference(r)) for s, r in todo]
    with tqdm(total=len(todo), desc=f"judge {judge.model}", unit="row") as bar:
        for start in range(0, len(todo), 32):  # appended as it goes: an interrupted judging resumes too
            part = judge.judge_many(questions[start:start + 32], progress=bar)
            append_jsonl(out / JUDGEMENTS, [{"system": s, "id": r["id"], **j.record_fields()}
                                            for (s, r), j in zip(todo[start:start + 32], part)])


def make_judge(kind: str, cache_dir: Path | None):
    from blsp_demo.judge import Judge, JudgeError

    if kind == "none" or (kind == "auto" and not any(os.environ.get(k) for k in ("JUDGE_MODEL", "OPENAI_BASE_URL", "OPENAI_API_KEY"))):
        return None
    try:
        return Judge.from_env(None if kind == "auto" else kind, **({"cache_dir": cache_dir} if cache_dir else {}))
    except JudgeError as err:
        print(f"warning: no judge ({err}); accept rates are left empty", file=sys.stderr)
        return None


# ---- results --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Score:
    system: str
    task: str
    dataset: str
    metric: str
    score: float
    ci_low: float
    ci_high: float
    n: int  # items scored
    n_errors: int  # items whose generation failed (scored as empty answers)
    n_unjudged: int = 0


def score_rows(metric: str, task: Task, rows: list[dict], preds: list[dict], verdicts: list[str] | None):
    if metric == "accept_rate":
        return item_stats(metric, verdicts, [None] * len(verdicts))
    return item_stats(metric, [p["scored"] for p in preds], [task.reference(r) for r in rows])


def compute_scores(rows: list[dict], predictions: dict, judgements: dict, systems: list[str],
                   judge_model: str | None) -> list[Score]:
    from blsp_demo.judge import PROMPT_VERSION

    scores = []
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["task"], r.get("dataset") or r["task"]), []).append(r)
    for system in systems:
        for (task_name, dataset), group in groups.items():
            task = TASKS[task_name]
            have = [r for r in group if (system, r["id"]) in predictions]
            if not have:
                continue
            preds = [predictions[(system, r["id"])] for r in have]
            n_err = sum(p.get("error") is not None for p in preds)
            for metric in task.metrics:
                verdicts = None
                if metric == "accept_rate":
                    if judge_model is None:
                        continue
                    verdicts = [judgements.get((system, r["id"], judge_model, PROMPT_VERSION), {}).get("verdict", "unjudged")
                                for r in have]
                stats = score_rows(metric, task, have, preds, verdicts)
                lo, hi = bootstrap_interval(metric, stats, seed=0)
                scores.append(Score(system, task_name, dataset, metric, score_from_stats(metric, stats), lo, hi,
                                    len(have), n_err, sum(v == "unjudged" for v in verdicts or [])))
    return scores


def fmt(x: float, digits: int = 1) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def write_csv(path: Path, scores: list[Score]) -> None:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["system", "system_name", "task", "dataset", "metric", "score", "ci_low", "ci_high", "n",
                    "n_errors", "n_unjudged"])
        for s in scores:
            w.writerow([s.system, SYSTEM_NAMES.get(s.system, s.system), s.task, s.dataset, s.metric,
                        fmt(s.score, 2), fmt(s.ci_low, 2), fmt(s.ci_high, 2), s.n, s.n_errors, s.n_unjudged])


def markdown_table(scores: list[Score], systems: list[str], system_errors: dict[str, str]) -> list[str]:
    columns = list(dict.fromkeys((s.dataset, s.metric) for s in scores))
    by = {(s.system, s.dataset, s.metric): s for s in scores}
    head = ["System"] + [f"{d} {METRICS[m].title}" for d, m in columns]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for system in systems:
        cells = [SYSTEM_NAMES.get(system, system)]
        for d, m in columns:
            s = by.get((system, d, m))
            cells.append("–" if s is None else f"{fmt(s.score)} [{fmt(s.ci_low)}, {fmt(s.ci_high)}]")
        if system in system_errors and all(c == "–" for c in cells[1:]):
            cells[1:] = ["not available"] * len(columns)
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def write_markdown(path: Path, scores: list[Score], systems: list[str], system_errors: dict[str, str],
                   header: dict) -> None:
    lines = [f"# {header['title']}", "", f"Manifest `{header['manifest']}`, model `{header['model']}`, "
             f"{header['n_rows']} items; greedy decoding. Cells: score [95% bootstrap interval, "
             f"1000 resamples, seed 0].", ""]
    lines += markdown_table(scores, systems, system_errors) if scores else ["(no predictions yet)"]
    lines += ["", "Items per cell, failed generations (scored as empty answers) and unjudged answers:", ""]
    for s in scores:
        extra = f", {s.n_unjudged} unjudged" if s.metric == "accept_rate" else ""
        lines.append(f"- {SYSTEM_NAMES.get(s.system, s.system)} / {s.dataset} / {s.metric}: n={s.n}, "
                     f"{s.n_errors} failed{extra}")
    for system, err in sorted(system_errors.items()):
        lines.append(f"- {SYSTEM_NAMES.get(system, system)} could not be loaded: {err}")
    used = sorted({s.metric for s in scores})
    sigs = [f"- {m}: `{METRICS[m].signature()}`" for m in used if METRICS[m].signature]
    if header.get("judge_model"):
        sigs.append(f"- accept_rate: judge `{header['judge_model']}`, prompt `{header['prompt_version']}`")
    if sigs:
        lines += ["", "Metric signatures:", "", *sigs]
    if header.get("judge_check"):
        lines += ["", "Sanity check of the judge (answer match as a rough reference):", "", *header["judge_check"]]
    lines += ["", "Made with:", "", "```", header["command"], "```", ""]
    path.write_text("\n".join(lines), encoding="utf-8")


TITLES = {"asr": "ASR by repetition (paper Table 2 style: WER, lower is better)",
          "st": "Speech translation (paper Table 2 style: BLEU / chrF)",
          "slu": "Spoken language understanding (paper Table 3 style: accuracy)",
          "qa": "Spoken question answering (accept rate by an LLM judge; answer match)"}


def write_results(out: Path, rows: list[dict], systems: list[str], group: str, model: str, manifest: Path,
                  command: str, judge_model: str | None) -> list[Score]:
    from blsp_demo.judge import PROMPT_VERSION

    preds = latest_by_key(read_jsonl(out / PREDICTIONS), "system", "id")
    preds = {k: v for k, v in preds.items() if v.get("spec") == spec_for(model, k[0])}
    judgements = latest_by_key(read_jsonl(out / JUDGEMENTS), "system", "id", "judge_model", "prompt_version")
    system_errors = json.loads((out / ERRORS).read_text()) if (out / ERRORS).is_file() else {}
    order = [s for s in SYSTEMS if s in systems] + [s for s in systems if s not in SYSTEMS]
    scores = compute_scores(rows, preds, judgements, order, judge_model)
    write_csv(out / "results.csv", scores)
    write_markdown(out / "results.md", scores, order, system_errors, {
        "title": TITLES[group], "manifest": manifest.name, "model": model, "n_rows": len(rows),
        "command": command, "judge_model": judge_model, "prompt_version": PROMPT_VERSION,
        "judge_check": judge_check(rows, preds, judgements, order, judge_model) if judge_model else []})
    return scores


def judge_check(rows: list[dict], predictions: dict, judgements: dict, systems: list[str], judge_model: str) -> list[str]:
    """How often the judge's verdicts agree with answer match (a cheap sanity check of the judge:
    a judge that accepts everything shows up as kappa ~0)."""
    from blsp_demo.judge import PROMPT_VERSION
    from blsp_demo.analysis.metrics import answer_match, cohen_kappa

    lines = []
    for system in systems:
        pairs = []
        for r in rows:
            j = judgements.get((system, r["id"], judge_model, PROMPT_VERSION), {}).get("verdict")
            if r["task"] == "qa" and (system, r["id"]) in predictions and j in ("accept", "reject"):
                hit = answer_match(predictions[(system, r["id"])]["scored"], TASKS["qa"].reference(r))[0]
                pairs.append(("accept" if hit else "reject", j))
        if pairs:
            kappa = cohen_kappa([a for a, _ in pairs], [b for _, b in pairs], ("accept", "reject"))
            agree = 100 * sum(a == b for a, b in pairs) / len(pairs)
            lines.append(f"- {SYSTEM_NAMES.get(system, system)}: judge vs answer match on {len(pairs)} answers: "
                         f"agreement {agree:.1f}%, Cohen's kappa {fmt(kappa, 2)}")
    return lines


# ---- the command ------------------------------------------------------------------------------------
def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m evaluations.run", description=__doc__.split("\n\n")[0])
    p.add_argument("--manifest", type=Path, required=True)
    p.add_argument("--task", choices=sorted(GROUPS), required=True)
    p.add_argument("--systems", default="blsp,cascade,text")
    p.add_argument("--model", default="micro-blsp", help="model spec (see blsp_demo.engine.loading)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--batch-size", type=int, default=32,
                   help="rows per batch (on a 2-core CPU, 32 translations took 34 s at batch 32, 58 s at batch 8, loading included)")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows (smoke runs)")
    p.add_argument("--retry-errors", action="store_true", help="generate again for rows that failed")
    p.add_argument("--judge", choices=("auto", *BACKENDS, "none"), default="auto",
                   help="QA acceptability judge (auto: openai when JUDGE_MODEL / OPENAI_* is set, else none; "
                        "llama-server: llama.cpp's server on loopback with the bundled GGUF; local: transformers)")
    p.add_argument("--judge-cache", type=Path, default=None, help="default: ~/.cache/blsp-demo/judge")
    return p


def command_line(a) -> str:
    parts = ["python -m evaluations.run", f"--manifest {a.manifest}", f"--task {a.task}", f"--systems {a.systems}",
             f"--model {a.model}", f"--out {a.out}"]
    if a.limit:
        parts.append(f"--limit {a.limit}")
    return " ".join(parts)


EngineFactory = Callable[[str, str], object]


def evaluate(a, engine_factory: EngineFactory | None = None) -> list[Score]:
    from blsp_demo.weights.devices import set_threads

    set_threads()
    systems = [s.strip() for s in a.systems.split(",") if s.strip()]
    rows = read_manifest(a.manifest, a.task, a.limit)
    a.out.mkdir(parents=True, exist_ok=True)
    factory = engine_factory or _load_engine
    system_errors = json.loads((a.out / ERRORS).read_text()) if (a.out / ERRORS).is_file() else {}
    for system in systems:
        spec = spec_for(a.model, system)
        have = latest_by_key(read_jsonl(a.out / PREDICTIONS), "system", "id")
        done = {i for (s, i), rec in have.items() if s == system and rec.get("spec") == spec
                and not (a.retry_errors and rec.get("error"))}
        if all(r["id"] in done for r in rows):
            continue
        try:
            engine = factory(spec, system)
        except Exception as err:  # noqa: BLE001 - one system that cannot load must not stop the others
            print(f"{SYSTEM_NAMES.get(system, system)} ({spec}) not evaluated: {err}", file=sys.stderr)
            system_errors[system] = str(err)
            (a.out / ERRORS).write_text(json.dumps(system_errors, indent=1))
            continue
        system_errors.pop(system, None)
        (a.out / ERRORS).write_text(json.dumps(system_errors, indent=1))
        generate(engine, rows, system, spec, a.out, a.batch_size, done)
        del engine
        gc.collect()
    judge = make_judge(a.judge, a.judge_cache) if a.task == "qa" else None
    if judge is not None:
        preds = latest_by_key(read_jsonl(a.out / PREDICTIONS), "system", "id")
        judge_answers(judge, rows, preds, a.out, systems)
    return write_results(a.out, rows, systems, a.task, a.model, a.manifest, command_line(a),
                         judge.model if judge is not None else None)


def _load_engine(spec: str, system: str):
    from blsp_demo.engine.loading import load_engine

    return load_engine(spec, system)


def main(argv: list[str] | None = None) -> None:
    a = parser().parse_args(argv)
    try:
        evaluate(a)
    except (ValueError, FileNotFoundError) as err:
        raise SystemExit(f"error: {err}") from None
    print((a.out / "results.md").read_text(encoding="utf-8"))


if __name__ == "__main__":
    main()
