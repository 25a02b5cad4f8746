"""The Annotate tab: browse logged answers, hear the audio, read the context, label, export."""

from __future__ import annotations

import re
import tempfile
import time
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr

from ..store import answers_frame, live_records
from .services import Services
from .session import ChatState

ALL = "all"
LABEL_STATES = [ALL, "unlabelled", "accept", "reject"]
MODALITIES = [ALL, "speech", "text"]
EXPORT_FORMATS = ("csv", "jsonl", "parquet")
TABLE_COLUMNS = ["time", "model", "modality", "question", "response", "label", "reason", "judge"]
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


def table_view(frame):
    import pandas as pd

    return pd.DataFrame({
        "time": frame["ts"].astype(str).str[:19].str.replace("T", " "),
        "model": frame["model"], "modality": frame["modality"],
        "question": frame["question"].map(_short), "response": frame["response"].map(_short),
        "label": frame["label"].fillna(""), "reason": frame["label_reason"].fillna(""),
        "judge": frame["judge"].fillna(""),
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


def export_answers(frame, fmt: str, out_dir: Path) -> Path:
    """The answers with their labels as CSV, JSONL or Parquet (pandas)."""
    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"export format must be one of {EXPORT_FORMATS}; got {fmt!r}")
    path = Path(out_dir) / f"labels-{time.strftime('%Y%m%d-%H%M%S')}.{fmt}"
    if fmt == "csv":
        frame.to_csv(path, index=False)
    elif fmt == "jsonl":
        frame.to_json(path, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(path, index=False)
    return path


class AnnotateHandlers:
    def __init__(self, services: Services):
        self.services = services
        self.store = services.store

    def _frame(self, model, modality, label, date_from, date_to):
        filters = Filters(model or ALL, modality or ALL, label or ALL, date_from or "", date_to or "")
        try:
            return filter_answers(answers_frame(self.store.read().records), filters)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def refresh(self, model, modality, label, date_from, date_to):
        """Table rows, their turn ids, the model choices, a summary line."""
        frame = self._frame(model, modality, label, date_from, date_to)
        everything = answers_frame(self.store.read().records)
        models = [ALL, *sorted(m for m in everything["model"].dropna().unique())]
        summary = (f"{len(frame)} of {len(everything)} answers shown · "
                   f"{int(everything['label'].notna().sum())} labelled")
        return table_view(frame), list(frame["turn_id"]), gr.update(choices=models), summary

    def select(self, rows: list[str], evt: gr.SelectData):
        """A clicked row: its turn id, audio, conversation, a summary, its label's reason."""
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not rows or row is None or row >= len(rows):
            return "", None, [], "", ""
        turn_id = rows[row]
        records = self.store.read().records
        turn = next(r for r in records if r.get("id") == turn_id)
        audio = self.store.data_dir / turn["audio_path"] if turn.get("audio_path") else None
        frame = answers_frame(records)
        current = frame.loc[frame["turn_id"] == turn_id].iloc[0]
        info = (f"**{turn.get('model')}** ({turn.get('engine')}, {turn.get('modality')}) · "
                f"{str(turn.get('ts', ''))[:19]} · first token {turn.get('ttft_s') or 0:.2f} s · "
                f"label: **{current['label'] or 'none'}**")
        return (turn_id, str(audio) if audio is not None and audio.is_file() else None,
                context_messages(records, turn_id, self.store.data_dir), info, current["label_reason"] or "")

    def label(self, verdict: str, turn_id: str, reason: str, state: ChatState | None,
              model, modality, label, date_from, date_to):
        if not turn_id:
            raise gr.Error("Select an answer in the table first.", print_exception=False)
        state = state or ChatState()
        self.store.label(state.session, turn_id, verdict, reason or "", source="annotate")
        listing = self.refresh(model, modality, label, date_from, date_to)
        return (f"Saved **{verdict}** for turn {turn_id[:8]}.", state, *listing)

    def export(self, fmt: str, model, modality, label, date_from, date_to) -> str:
        frame = self._frame(model, modality, label, date_from, date_to)
        return str(export_answers(frame, fmt, Path(tempfile.mkdtemp(prefix="blsp-export-"))))


def build_annotate_tab(services: Services, chat_state: gr.State, tab: gr.Tab) -> None:
    h = AnnotateHandlers(services)
    rows = gr.State([])
    selected = gr.State("")
    with gr.Row():
        model = gr.Dropdown([ALL], value=ALL, label="Model", allow_custom_value=True)
        modality = gr.Dropdown(MODALITIES, value=ALL, label="Modality")
        label = gr.Dropdown(LABEL_STATES, value=ALL, label="Label")
        date_from = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="any")
        date_to = gr.Textbox(label="To (YYYY-MM-DD)", placeholder="any")
        refresh = gr.Button("Refresh", variant="primary")
    summary = gr.Markdown()
    table = gr.Dataframe(headers=TABLE_COLUMNS, interactive=False, wrap=True, elem_id="answers",
                         label="Logged answers (click a row)")
    with gr.Row():
        with gr.Column():
            info = gr.Markdown(elem_id="annotate_info")
            audio = gr.Audio(label="Audio of the turn", type="filepath", interactive=False)
            context = gr.Chatbot(label="Conversation up to this answer", height=320)
        with gr.Column():
            reason = gr.Textbox(label="Reason (optional)", lines=2)
            with gr.Row():
                accept = gr.Button("Accept", variant="primary")
                reject = gr.Button("Reject", variant="stop")
                unset = gr.Button("Clear label")
            status = gr.Markdown()
            with gr.Row():
                fmt = gr.Radio(list(EXPORT_FORMATS), value="csv", label="Export format")
                export = gr.Button("Export labels")
            file = gr.File(label="Export")
    filters = [model, modality, label, date_from, date_to]
    listing = [table, rows, model, summary]
    private = dict(api_visibility="private")
    for trigger in (tab.select, refresh.click, label.change, modality.change):
        trigger(h.refresh, filters, listing, **private)
    table.select(h.select, [rows], [selected, audio, context, info, reason], **private)
    for button, verdict in ((accept, "accept"), (reject, "reject"), (unset, "unset")):
        button.click(partial(h.label, verdict), [selected, reason, chat_state, *filters],
                     [status, chat_state, *listing], **private)
    export.click(h.export, [fmt, *filters], file, **private)
