"""Annotation without the UI: filtering logged answers, the table's view of them (one row per
answer and annotator, with the consensus), a turn's conversation context, and exports (CSV, JSONL,
Parquet) of the labels and of the agreement between annotators."""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

from blsp_demo.app.store import live_records
from blsp_demo.vocab import MODALITIES, VERDICTS

ALL = "all"
LABEL_STATES = [ALL, "unlabelled", *VERDICTS]
MODALITY_CHOICES = [ALL, *MODALITIES]
EXPORT_FORMATS = ("csv", "jsonl", "parquet")
TABLE_COLUMNS = ["time", "model", "modality", "question", "response", "annotator", "label", "reason", "consensus",
                 "judge"]
_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_SHORT = 90  # characters of question/answer shown in the table


@dataclass(frozen=True)
class Filters:
    model: str = ALL
    modality: str = ALL
    label: str = ALL  # all | unlabelled | accept | reject
    date_from: str = ""  # YYYY-MM-DD, inclusive (UTC)
    date_to: str = ""

    def check(self) -> "Filters":
        for d in (self.date_from, self.date_to):
            if d and not _DATE.match(d.strip()):
                raise ValueError(f"Dates are written YYYY-MM-DD; got {d!r}.")
        return self


def filter_answers(frame, f: Filters):
    """The rows of `answers_frame` that pass the filters, newest first."""
    f.check()
    keep = frame.index == frame.index
    if f.model not in ("", ALL, None):
        keep &= frame["model"] == f.model
    if f.modality not in ("", ALL, None):
        keep &= frame["modality"] == f.modality
    if f.label == "unlabelled":
        keep &= frame["label"].isna()
    elif f.label not in ("", ALL, None):
        keep &= frame["label"] == f.label
    day = frame["ts"].astype(str).str[:10]
    if f.date_from.strip():
        keep &= day >= f.date_from.strip()
    if f.date_to.strip():
        keep &= day <= f.date_to.strip()
    return frame[keep].sort_values("ts", ascending=False).reset_index(drop=True)


def _short(text) -> str:
    text = "" if text is None else str(text).replace("\n", " ")
    return text if len(text) <= _SHORT else text[: _SHORT - 1] + "…"


def _consensus_text(frame):
    if "consensus" not in frame:
        return frame["label"].fillna("")
    return [f"{c} ({k}, {n})" if isinstance(c, str) else "" for c, k, n in
            zip(frame["consensus"], frame["consensus_kind"], frame["n_labels"])]


def table_view(frame):
    import pandas as pd

    return pd.DataFrame({
        "time": frame["ts"].astype(str).str[:19].str.replace("T", " "),
        "model": frame["model"], "modality": frame["modality"],
        "question": frame["question"].map(_short), "response": frame["response"].map(_short),
        "annotator": frame["annotator"].fillna("") if "annotator" in frame else "",
        "label": frame["label"].fillna(""), "reason": frame["label_reason"].fillna(""),
        "consensus": _consensus_text(frame), "judge": frame["judge"].fillna(""),
    }, columns=TABLE_COLUMNS)


def context_messages(records: list[dict], turn_id: str, data_dir: Path) -> list[dict]:
    """The conversation up to and including the turn, as chatbot messages."""
    turns = [r for r in live_records(records) if r.get("kind") == "turn" and not r.get("error")]
    this = next((t for t in turns if t["id"] == turn_id), None)
    if this is None:
        return []
    earlier = sorted((t for t in turns if t.get("conversation") == this.get("conversation")
                      and (t.get("turn_index") or 0) <= (this.get("turn_index") or 0)),
                     key=lambda t: (t.get("turn_index") or 0, str(t.get("ts"))))
    messages = []
    for t in earlier:
        messages += _user_messages(t, data_dir)
        messages.append({"role": "assistant", "content": t.get("response") or ""})
    return messages


def _user_messages(turn: dict, data_dir: Path) -> list[dict]:
    if turn.get("modality") == "text":
        return [{"role": "user", "content": turn.get("text") or ""}]
    out = [{"role": "user", "content": turn["instruction"]}] if turn.get("instruction") else []
    audio = data_dir / turn["audio_path"] if turn.get("audio_path") else None
    if audio is not None and audio.is_file():
        out.append({"role": "user", "content": {"path": str(audio)}})
    heard = turn.get("transcript") or turn.get("transcript_heard")
    out.append({"role": "user", "content": f"(speech{', audio not kept' if audio is None else ''}) "
                                          f"{heard or ''}".strip()})
    return out


def export_answers(frame, fmt: str, out_dir: Path, name: str = "labels") -> Path:
    """A table (the answers with their labels: one row per answer and annotator, with the
    consensus; or the agreement table) as CSV, JSONL or Parquet (pandas)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}; got {fmt!r}")
    path = Path(out_dir) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path
