"""The Annotate tab: browse logged answers, hear the audio, read the context, label, export."""

from __future__ import annotations

import tempfile
from functools import partial
from pathlib import Path

import gradio as gr

from blsp_demo.app.annotation import (ALL, EXPORT_FORMATS, LABEL_STATES, MODALITY_CHOICES, TABLE_COLUMNS, Filters,
                                      context_messages, export_answers, filter_answers, table_view)
from blsp_demo.app.services import Services
from blsp_demo.app.store import answers_frame
from blsp_demo.app.session import ChatState


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
        modality = gr.Dropdown(MODALITY_CHOICES, value=ALL, label="Modality")
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
