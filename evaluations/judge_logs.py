"""Judge the app's logged answers, and measure how well the judge agrees with the human labels.

    python -m evaluations.judge_logs --data-dir DIR [--judge auto|openai|local] [--limit N]
        [--rejudge] [--no-judge] [--timeout S] [--retries N] [--deadline S]

Answered turns (not failed, not deleted) without an accept/reject judgement yet are judged with
`blsp_demo.judge` (the paper's acceptability prompt) and a `judgement` record is appended for each
through `blsp_demo.app.store.Store`: `turn_id`, `verdict` (accept | reject | unjudged), `reason`,
`judge_model`, `prompt_version`, `raw`, `flags`, in the turn's own session (so a deletion of the
session covers it). `--rejudge` also judges turns judged before by another judge model or prompt
version. Then it prints the agreement with the human labels: Cohen's kappa, the confusion matrix
(human x judge) and accept rates per model, by human and by judge; the dashboard reads the same
records.

The judge sees one turn: the question (typed text, or the known / heard transcript of a speech
turn) and the answer; a speech turn with neither transcript is `unjudged` (nothing to judge by).
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

from tqdm import tqdm

from blsp_demo.judge import BACKENDS
from blsp_demo.analysis.metrics import accept_rate, cohen_kappa, confusion_matrix
from blsp_demo.vocab import VERDICTS
from blsp_demo.app.store import Store, answers_frame, live_records, question_of, read_records

NO_QUESTION = "(speech)"  # what store.question_of says for a speech turn without any transcript


def turns_to_judge(records: list[dict], judge_model: str, prompt_version: str, rejudge: bool) -> list[dict]:
    records = live_records(records)
    judged: set[str] = set()
    for r in records:
        if r.get("kind") != "judgement" or r.get("verdict") not in VERDICTS:
            continue  # an 'unjudged' judgement is tried again next time
        if not rejudge or (r.get("judge_model") == judge_model and r.get("prompt_version") == prompt_version):
            judged.add(r.get("turn_id"))
    return [t for t in records if t.get("kind") == "turn" and not t.get("error") and t.get("response") is not None
            and t["id"] not in judged]


def judge_turns(store: Store, judge, turns: list[dict]) -> list[dict]:
    """Judge `turns` (concurrently, in chunks) and append one judgement record per turn."""
    written = []
    with tqdm(total=len(turns), desc=f"judge {judge.model}", unit="turn", disable=not turns) as bar:
        for start in range(0, len(turns), 32):
            chunk = turns[start:start + 32]
            rows = []
            for t in chunk:
                q = question_of(t)
                rows.append(("" if q == NO_QUESTION else q, t.get("response") or "", ()))
            for t, j in zip(chunk, judge.judge_many(rows, progress=bar)):
                written.append(store.append("judgement", t["session"], turn_id=t["id"], model=t.get("model"),
                                            **j.record_fields()))
    return written


def agreement_report(records: list[dict]) -> str:
    """Kappa, confusion matrix and accept rates per model, as text."""
    frame = answers_frame(records)
    lines = [f"{len(frame)} answers logged; {int(frame['label'].isin(VERDICTS).sum())} with a human label, "
             f"{int(frame['judge'].isin(VERDICTS).sum())} judged."]
    both = frame[frame["label"].isin(VERDICTS) & frame["judge"].isin(VERDICTS)]
    human, judged = list(both["label"]), list(both["judge"])
    kappa = cohen_kappa(human, judged, VERDICTS)
    lines.append(f"Agreement on {len(both)} answers with both: Cohen's kappa "
                 + ("undefined" if math.isnan(kappa) else f"{kappa:.3f}")
                 + (f", raw agreement {100 * sum(h == j for h, j in zip(human, judged)) / len(both):.1f}%" if len(both) else ""))
    m = confusion_matrix(human, judged, VERDICTS)
    lines += ["", "                judge accept  judge reject",
              f"human accept    {m[0][0]:>12}  {m[0][1]:>12}", f"human reject    {m[1][0]:>12}  {m[1][1]:>12}", "",
              f"{'model':<24}{'human accept %':>16}{'n':>6}{'judge accept %':>16}{'n':>6}"]
    for model, group in frame.groupby("model", sort=True):
        h_rate, h_n, _ = accept_rate([v for v in group["label"] if v in VERDICTS])
        j_rate, j_n, _ = accept_rate([v for v in group["judge"] if v in VERDICTS])
        lines.append(f"{str(model):<24}{_pct(h_rate):>16}{h_n:>6}{_pct(j_rate):>16}{j_n:>6}")
    return "\n".join(lines)


def _pct(x: float) -> str:
    return "–" if math.isnan(x) else f"{x:.1f}"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.judge_logs", description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", type=Path, required=True)
    p.add_argument("--judge", choices=("auto", *BACKENDS), default="auto",
                   help="auto: openai when JUDGE_MODEL / OPENAI_* is set, else the local model")
    p.add_argument("--judge-cache", type=Path, default=None)
    p.add_argument("--limit", type=int, default=None, help="judge at most N turns")
    p.add_argument("--rejudge", action="store_true", help="also turns judged by another judge model / prompt")
    p.add_argument("--no-judge", action="store_true", help="only print the agreement report")
    p.add_argument("--timeout", type=float, default=60.0, help="openai: seconds per request (default 60)")
    p.add_argument("--retries", type=int, default=4, help="openai: retries of a failed request (default 4)")
    p.add_argument("--deadline", type=float, default=180.0,
                   help="openai: seconds per answer in all, retries included; then it is left unjudged (default 180)")
    a = p.parse_args(argv)
    if not (a.data_dir / "records").is_dir():
        raise SystemExit(f"error: {a.data_dir} has no records/ folder (is it the app's --data-dir?)")
    store = Store(a.data_dir)
    if not a.no_judge:
        from blsp_demo.judge import PROMPT_VERSION, Judge, JudgeError, backend_kind

        kind = backend_kind(None if a.judge == "auto" else a.judge)
        limits = dict(timeout_s=a.timeout, max_retries=a.retries, deadline_s=a.deadline) if kind in ("openai", "llama-server") else {}
        try:
            judge = Judge.from_env(kind, **({"cache_dir": a.judge_cache} if a.judge_cache else {}), **limits)
        except JudgeError as err:
            raise SystemExit(f"error: {err}") from None
        todo = turns_to_judge(store.read().records, judge.model, PROMPT_VERSION, a.rejudge)[:a.limit]
        written = judge_turns(store, judge, todo)
        counts = {v: sum(r["verdict"] == v for r in written) for v in ("accept", "reject", "unjudged")}
        print(f"judged {len(written)} turns with {judge.model} ({PROMPT_VERSION}): {counts}", file=sys.stderr)
    store.close()
    print(agreement_report(read_records(a.data_dir).records))


if __name__ == "__main__":
    main()
