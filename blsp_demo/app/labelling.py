"""Labels by a team: one row per (answer, annotator), a consensus per answer, and the labelling
queue ("the next answer I have not labelled"). No UI.

Each annotator's latest label on an answer counts (`unset` retracts it); labels written before
annotators existed count for their anonymous session (`identity.who`). The consensus of an answer
is the majority of its labels: `consensus_kind` says unanimous | majority | single | tie | none.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from blsp_demo.app.identity import who
from blsp_demo.app.store import answers_frame, live_records, verdict_of
from blsp_demo.vocab import ACCEPT, REJECT, VERDICTS

TIE = "tie"
TEAM_COLUMNS = ["annotator", "label", "label_reason", "label_ts", "consensus", "consensus_kind", "n_labels"]
SHORTCUTS = {"a": "accept", "r": "reject", "s": "skip", "p": "play", "u": "undo"}
DEFAULT_GUIDELINES = Path(__file__).with_name("guidelines.md")


def latest_labels(records: list[dict]) -> dict[tuple[str, str], dict]:
    """(turn_id, annotator) -> that annotator's standing label on the answer."""
    latest: dict[tuple[str, str], dict] = {}
    for r in sorted((r for r in live_records(records) if r.get("kind") == "label"), key=lambda r: str(r.get("ts"))):
        latest[(r.get("turn_id"), who(r))] = r
    return {k: r for k, r in latest.items() if verdict_of(r) in VERDICTS}


def consensus(verdicts: list[str]) -> tuple[str | None, str]:
    """(the majority verdict, or "tie", or None; its kind)."""
    if not verdicts:
        return None, "none"
    accepts, rejects = verdicts.count(ACCEPT), verdicts.count(REJECT)
    if len(verdicts) == 1:
        return verdicts[0], "single"
    if accepts == rejects:
        return TIE, TIE
    return (ACCEPT if accepts > rejects else REJECT), ("unanimous" if not accepts or not rejects else "majority")


def team_frame(records: list[dict]):
    """One row per (answer, annotator) with a standing label, and one row (annotator "") for each
    answer nobody labelled; every row carries its answer's consensus."""
    import pandas as pd

    answers = answers_frame(records).drop(columns=["label", "label_reason", "label_ts"])
    by_turn: dict[str, list[dict]] = {}
    for (turn_id, name), r in latest_labels(records).items():
        by_turn.setdefault(turn_id, []).append({"annotator": name, "label": verdict_of(r),
                                                "label_reason": r.get("reason") or "", "label_ts": r.get("ts")})
    rows = []
    for answer in answers.to_dict("records"):
        labels = sorted(by_turn.get(answer["turn_id"], []), key=lambda x: str(x["label_ts"]))
        agreed, kind = consensus([x["label"] for x in labels])
        extra = {"consensus": agreed, "consensus_kind": kind, "n_labels": len(labels)}
        for lab in labels or [{"annotator": "", "label": None, "label_reason": "", "label_ts": None}]:
            rows.append({**answer, **lab, **extra})
    return pd.DataFrame(rows, columns=[*answers.columns, *TEAM_COLUMNS])


def per_answer(team):
    """One row per answer: its consensus (`label` = the consensus when it is accept or reject)."""
    first = team.drop_duplicates("turn_id").copy()
    first["label"] = first["consensus"].where(first["consensus"].isin(VERDICTS))
    return first.reset_index(drop=True)


# ---- the queue -------------------------------------------------------------------------------
@dataclass(frozen=True)
class QueueState:
    """One annotator's pass through the queue in this session."""

    current: str = ""  # the turn id shown
    skipped: tuple[str, ...] = ()
    labelled: tuple[str, ...] = ()  # turn ids labelled through the queue, newest last (undo)


@dataclass(frozen=True)
class QueueView:
    turn_id: str | None  # None: nothing left for me
    done: int  # answers under the filters I have labelled
    total: int  # answers under the filters open to me (mine, or under the overlap)
    skipped: int

    @property
    def progress(self) -> str:
        return f"{self.done} of {self.total}"


def queue_view(team, me: str, q: QueueState, overlap: int = 0) -> QueueView:
    """Oldest first (so a team labels the same answers in the same order): the first answer under
    the filters that I have neither labelled nor skipped and that fewer than `overlap` others have
    labelled (0: no limit). `team` is the filtered `team_frame`."""
    ordered = team.sort_values("ts", kind="stable")
    mine, others = set(), {}
    for turn_id, name in zip(ordered["turn_id"], ordered["annotator"]):
        others.setdefault(turn_id, set())
        if name == me:
            mine.add(turn_id)
        elif name:
            others[turn_id].add(name)
    open_ = [t for t in others if t in mine or not overlap or len(others[t]) < overlap]
    todo = [t for t in open_ if t not in mine and t not in q.skipped]
    return QueueView(todo[0] if todo else None, len(mine & set(open_)), len(open_),
                     sum(t in q.skipped and t not in mine for t in open_))


def after_label(q: QueueState, turn_id: str) -> QueueState:
    return replace(q, labelled=(*[t for t in q.labelled if t != turn_id], turn_id),
                   skipped=tuple(t for t in q.skipped if t != turn_id))


def after_skip(q: QueueState, turn_id: str) -> QueueState:
    return replace(q, skipped=(*q.skipped, turn_id)) if turn_id and turn_id not in q.skipped else q


def undo_target(q: QueueState) -> tuple[str | None, QueueState]:
    """The answer to take back (the last one labelled in this session) and the state without it."""
    if not q.labelled:
        return None, q
    return q.labelled[-1], replace(q, labelled=q.labelled[:-1], current=q.labelled[-1])


def guidelines_text(path: str | Path | None = None) -> str:
    """The labelling guidelines: the host's markdown file (BLSP_GUIDELINES), else the shipped ones."""
    import os

    chosen = Path(path or os.environ.get("BLSP_GUIDELINES") or DEFAULT_GUIDELINES).expanduser()
    try:
        return chosen.read_text(encoding="utf-8")
    except OSError as err:
        return (f"*Could not read the guidelines file {chosen} ({err.strerror}); showing the default.*\n\n"
                + DEFAULT_GUIDELINES.read_text(encoding="utf-8"))


def agreement(team, n_resamples: int | None = None):
    """The agreement table (analysis.agreement) of a `team_frame`: human-human and human-judge,
    overall, per model and per modality, with bootstrap intervals."""
    from blsp_demo.analysis.agreement import N_BOOTSTRAP, agreement_table

    labelled = team[team["label"].isin(VERDICTS)]
    return agreement_table(labelled, per_answer(team), n_resamples or N_BOOTSTRAP)
