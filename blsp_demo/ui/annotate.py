"""The Annotate tab: who is labelling, the labelling queue (keyboard shortcuts, progress,
guidelines), and the table of every logged answer with one row per annotator and the consensus.

Public API endpoints (gradio_client; each Client is its own session):
    /annotator(name, passcode="")       -> status    this session labels as `name`
    /label(turn_id, verdict, reason)    -> status    label any logged answer (accept | reject | unset)
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import replace
from functools import partial
from pathlib import Path

import gradio as gr

from blsp_demo.app.annotation import (ALL, EXPORT_FORMATS, LABEL_STATES, MODALITY_CHOICES, TABLE_COLUMNS, Filters,
                                      context_messages, export_answers, filter_answers, table_view)
from blsp_demo.app.identity import Roles, who
from blsp_demo.app.labelling import (QueueState, after_label, after_skip, agreement, guidelines_text, latest_labels,
                                     queue_view, team_frame, undo_target)
from blsp_demo.app.services import Services
from blsp_demo.app.session import ChatState

SHORTCUTS_LINE = ("Keys: **A** accept · **R** reject · **S** skip · **P** play the question · **U** undo "
                  "(when the cursor is not in a text box)")
# Keyboard shortcuts of the queue, for `launch(head=...)`: only while the queue is on screen and
# the cursor is not in a text field; each key clicks the button it names.
KEYS_JS = """<script>
document.addEventListener('keydown', (e) => {
  if (e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
  const t = e.target, tag = ((t && t.tagName) || '').toLowerCase();
  if (tag === 'input' || tag === 'textarea' || tag === 'select' || (t && t.isContentEditable)) return;
  const queue = document.getElementById('queue');
  if (!queue || queue.offsetParent === null) return;
  const k = (e.key || '').toLowerCase();
  if (k === 'p') {
    const root = document.getElementById('queue_audio');
    const play = root && root.querySelector('button.play-pause-button, button[aria-label="Play"]');
    const media = root && root.querySelector('audio');
    if (play) play.click(); else if (media) media.play();
    e.preventDefault();
    return;
  }
  const id = {a: 'q_accept', r: 'q_reject', s: 'q_skip', u: 'q_undo'}[k];
  const button = id && document.getElementById(id);
  if (button && !button.disabled) { button.click(); e.preventDefault(); }
});
</script>"""


def _filters(model, modality, label, date_from, date_to) -> Filters:
    return Filters(model or ALL, modality or ALL, label or ALL, date_from or "", date_to or "")


def me(state: ChatState) -> str:
    return who({"annotator": state.annotator, "session": state.session})


class AnnotateHandlers:
    def __init__(self, services: Services, roles: Roles | None = None):
        self.services = services
        self.store = services.store
        self.roles = roles or Roles.from_env()
        self.overlap = int(os.environ.get("BLSP_OVERLAP", "0") or 0)

    # -- who is labelling
    def sign_in(self, name: str, passcode: str, state: ChatState | None, oauth: bool = False):
        state = state or ChatState()
        try:
            name = self.roles.sign_in(name, passcode, oauth=oauth)
        except ValueError as err:  # NotAllowed too
            raise gr.Error(str(err), print_exception=False) from None
        state = replace(state, annotator=name)
        return f"Labelling as **{name}**: every label and vote of this session carries this name.", state

    def sign_in_oauth(self, state: ChatState | None, profile: gr.OAuthProfile | None = None):
        """The logged-in Hugging Face user (a Space with OAuth) becomes the annotator."""
        if profile is None:
            return gr.skip(), gr.skip()
        return self.sign_in(getattr(profile, "username", "") or getattr(profile, "name", ""), "", state, oauth=True)

    def check(self, state: ChatState | None) -> ChatState:
        state = state or ChatState()
        if not self.roles.admits(state.annotator):
            raise gr.Error("This labelling team is private: sign in with your name"
                           f"{' and the passcode' if self.roles.passcode else ''} at the top of the Annotate tab.",
                           print_exception=False)
        return state

    # -- the table
    def _team(self, filters: Filters):
        try:
            return filter_answers(team_frame(self.store.read().records), filters)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def refresh(self, model, modality, label, date_from, date_to, state=None):
        """Table rows, their turn ids, the model choices, a summary line."""
        self.check(state)
        frame = self._team(_filters(model, modality, label, date_from, date_to))
        everything = team_frame(self.store.read().records)
        answers = everything.drop_duplicates("turn_id")
        models = [ALL, *sorted(m for m in answers["model"].dropna().unique())]
        people = sorted(a for a in everything["annotator"].unique() if a)
        summary = (f"{frame['turn_id'].nunique()} of {len(answers)} answers shown · "
                   f"{int((answers['n_labels'] > 0).sum())} labelled · {len(people)} annotators · "
                   f"as of {time.strftime('%H:%M:%S')} (Refresh table for newer labels)")
        return table_view(frame), list(frame["turn_id"]), gr.update(choices=models), summary

    def select(self, rows: list[str], evt: gr.SelectData, state=None):
        """A clicked row: its turn id, audio, conversation, a summary, its label's reason."""
        self.check(state)
        row = evt.index[0] if isinstance(evt.index, (list, tuple)) else evt.index
        if not rows or row is None or row >= len(rows):
            return "", None, [], "", ""
        turn_id = rows[row]
        records, state = self.store.read().records, state or ChatState()
        mine = latest_labels(records).get((turn_id, me(state)), {})
        return (turn_id, *self._answer(records, turn_id, state), mine.get("reason") or "")

    def _answer(self, records: list[dict], turn_id: str, state: ChatState):
        """(audio path, context messages, info line) of a logged answer."""
        turn = next(r for r in records if r.get("id") == turn_id)
        audio = self.store.data_dir / turn["audio_path"] if turn.get("audio_path") else None
        team = team_frame(records)
        rows = team[team["turn_id"] == turn_id]
        mine = rows[rows["annotator"] == me(state)]
        others = ", ".join(f"{a}: {v}" for a, v in zip(rows["annotator"], rows["label"]) if a and a != me(state))
        info = (f"**{turn.get('model')}** ({turn.get('engine')}, {turn.get('modality')}) · "
                f"{str(turn.get('ts', ''))[:19]} · your label: **{mine['label'].iloc[0] if len(mine) else 'none'}**"
                f"{f' · others: {others}' if others else ''}")
        return (str(audio) if audio is not None and audio.is_file() else None,
                context_messages(records, turn_id, self.store.data_dir), info)

    def label(self, verdict: str, turn_id: str, reason: str, state: ChatState | None, *filters):
        if not turn_id:
            raise gr.Error("Select an answer in the table first.", print_exception=False)
        state = self.check(state)
        self.store.label(state.session, turn_id, verdict, reason or "", annotator=state.annotator, source="annotate")
        return (f"Saved **{verdict}** for turn {turn_id[:8]}.", state, *self.refresh(*filters, state))

    def api_label(self, turn_id: str, verdict: str, reason: str, state: ChatState | None):
        """/label: any logged answer, as this session's annotator."""
        state = self.check(state)
        verdict = (verdict or "").strip().lower()
        turn_id = (turn_id or "").strip()
        turns = {r["id"] for r in self.store.read().records if r.get("kind") == "turn" and not r.get("error")}
        if turn_id not in turns:
            raise gr.Error(f"No logged answer has the id {turn_id!r}.", print_exception=False)
        try:
            record = self.store.label(state.session, turn_id, verdict, reason or "", annotator=state.annotator,
                                      source="api")
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        return f"Saved {verdict} for turn {turn_id} as {me(state)} (label {record['id'][:8]}).", state

    def export(self, fmt: str, model, modality, label, date_from, date_to, state=None) -> list[str]:
        """The labels (one row per answer and annotator, with the consensus) and the agreement."""
        self.check(state)
        frame = self._team(_filters(model, modality, label, date_from, date_to))
        out = Path(tempfile.mkdtemp(prefix="blsp-export-"))
        return [str(export_answers(frame, fmt, out)), str(export_answers(agreement(frame), fmt, out, "agreement"))]

    # -- the queue
    def _queue(self, state: ChatState, q: QueueState, overlap, filters: Filters, note: str = ""):
        records = self.store.read().records
        team = filter_answers(team_frame(records), replace(filters, label=ALL))
        view = queue_view(team, me(state), q, int(overlap or 0))
        progress = f"**{view.progress}** labelled by you ({me(state)})" + (
            f" · {view.skipped} skipped" if view.skipped else "")
        if view.turn_id is None:
            done = "Nothing left to label under these filters." + (" Refresh to see the skipped ones again."
                                                                   if view.skipped else "")
            return replace(q, current=""), progress, done, None, [], "", note
        audio, context, info = self._answer(records, view.turn_id, state)
        return replace(q, current=view.turn_id), progress, info, audio, context, "", note

    def queue_show(self, state, q, overlap, *filters):
        state = self.check(state)
        return self._queue(state, replace(q or QueueState(), skipped=()), overlap, _filters(*filters))

    def on_tab(self, fn, n_outputs: int, *args, state_at: int = 0):
        """`fn(*args)` when the tab is opened: nothing (no error) for a session that has not
        signed in to a private team (its state is `args[state_at]`)."""
        if not self.roles.admits((args[state_at] or ChatState()).annotator):
            return (gr.skip(),) * n_outputs
        return fn(*args)

    def queue_label(self, verdict: str, state, q, reason, overlap, *filters):
        state, q = self.check(state), q or QueueState()
        if not q.current:
            raise gr.Error("There is no answer to label: refresh the queue.", print_exception=False)
        self.store.label(state.session, q.current, verdict, reason or "", annotator=state.annotator, source="queue")
        note = f"Saved **{verdict}** for turn {q.current[:8]}."
        return self._queue(state, after_label(q, q.current), overlap, _filters(*filters), note)

    def queue_skip(self, state, q, overlap, *filters):
        state, q = self.check(state), q or QueueState()
        return self._queue(state, after_skip(q, q.current), overlap, _filters(*filters), "Skipped.")

    def queue_undo(self, state, q, overlap, *filters):
        state, q = self.check(state), q or QueueState()
        turn_id, q = undo_target(q)
        if turn_id is None:
            return self._queue(state, q, overlap, _filters(*filters), "Nothing to undo in this session.")
        self.store.label(state.session, turn_id, "unset", "", annotator=state.annotator, source="queue-undo")
        return self._queue(state, q, overlap, _filters(*filters), f"Took back your label on turn {turn_id[:8]}.")


def oauth_enabled() -> bool:
    """A Space with `hf_oauth: true` in its README sets OAUTH_CLIENT_ID."""
    return bool(os.environ.get("OAUTH_CLIENT_ID") and os.environ.get("SPACE_ID"))


def build_annotate_tab(services: Services, chat_state: gr.State, tab: gr.Tab) -> None:
    h = AnnotateHandlers(services)
    rows, selected, queue_state = gr.State([]), gr.State(""), gr.State(QueueState())
    private = dict(api_visibility="private")
    with gr.Row(equal_height=True):
        name = gr.Textbox(label="Your name (goes on every label you give)", elem_id="annotator_name", scale=3)
        passcode = gr.Textbox(label="Team passcode", type="password", elem_id="annotator_passcode",
                              visible=bool(h.roles.passcode), scale=2)
        sign_in = gr.Button("Start labelling", variant="primary", elem_id="sign_in", scale=1)
        if oauth_enabled():
            gr.LoginButton()
    who_line = gr.Markdown("Labelling anonymously: type your name so that your labels can be told apart."
                           if not h.roles.private else "Sign in to label: this labelling team is private.",
                           elem_id="who")
    with gr.Row():
        model = gr.Dropdown([ALL], value=ALL, label="Model", allow_custom_value=True)
        modality = gr.Dropdown(MODALITY_CHOICES, value=ALL, label="Modality")
        label = gr.Dropdown(LABEL_STATES, value=ALL, label="Label (table)")
        date_from = gr.Textbox(label="From (YYYY-MM-DD)", placeholder="any")
        date_to = gr.Textbox(label="To (YYYY-MM-DD)", placeholder="any")
        overlap = gr.Number(h.overlap, precision=0, minimum=0, label="Overlap K (0 = everyone labels all)")
    filters = [model, modality, label, date_from, date_to]
    with gr.Column(elem_id="queue"):
        with gr.Row():
            progress = gr.Markdown(elem_id="queue_progress")
            next_btn = gr.Button("Refresh queue", size="sm", elem_id="q_refresh")
        gr.Markdown(SHORTCUTS_LINE, elem_id="shortcuts")
        with gr.Row():
            with gr.Column(scale=3):
                q_info = gr.Markdown(elem_id="queue_info")
                q_audio = gr.Audio(label="The question", type="filepath", interactive=False, elem_id="queue_audio")
                q_context = gr.Chatbot(label="Conversation up to this answer", height=300, elem_id="queue_context")
            with gr.Column(scale=2):
                q_reason = gr.Textbox(label="Reason (optional)", lines=2, elem_id="queue_reason")
                with gr.Row():
                    q_accept = gr.Button("Accept (A)", variant="primary", elem_id="q_accept")
                    q_reject = gr.Button("Reject (R)", variant="stop", elem_id="q_reject")
                with gr.Row():
                    q_skip = gr.Button("Skip (S)", elem_id="q_skip")
                    q_undo = gr.Button("Undo (U)", elem_id="q_undo")
                q_status = gr.Markdown(elem_id="queue_status")
                with gr.Accordion("Guidelines", open=True):
                    gr.Markdown(guidelines_text(), elem_id="guidelines")
    with gr.Accordion("All answers: one row per answer and annotator", open=True):
        refresh = gr.Button("Refresh table", elem_id="table_refresh")
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
                    unset = gr.Button("Clear my label")
                status = gr.Markdown()
    with gr.Row():
        fmt = gr.Radio(list(EXPORT_FORMATS), value="csv", label="Export format")
        export = gr.Button("Export labels and agreement", elem_id="export")
    file = gr.File(label="Export", file_count="multiple", elem_id="export_files")
    # hidden inputs of the /label endpoint
    api_turn, api_verdict = gr.Textbox(visible=False, label="turn_id"), gr.Textbox(visible=False, label="verdict")
    api_reason, api_label = gr.Textbox(visible=False, label="reason"), gr.Button(visible=False)

    queue_out = [queue_state, progress, q_info, q_audio, q_context, q_reason, q_status]
    queue_in = [chat_state, queue_state, overlap, *filters]
    sign_in.click(h.sign_in, [name, passcode, chat_state], [who_line, chat_state], api_name="annotator").success(
        h.queue_show, queue_in, queue_out, **private)
    name.submit(h.sign_in, [name, passcode, chat_state], [who_line, chat_state], **private).success(
        h.queue_show, queue_in, queue_out, **private)
    if oauth_enabled():
        tab.select(h.sign_in_oauth, [chat_state], [who_line, chat_state], **private)
    tab.select(partial(h.on_tab, h.queue_show, len(queue_out)), queue_in, queue_out, **private)
    for trigger in (next_btn.click, modality.change, model.change, overlap.change):
        trigger(h.queue_show, queue_in, queue_out, **private)
    for button, verdict in ((q_accept, "accept"), (q_reject, "reject")):
        button.click(partial(h.queue_label, verdict), [chat_state, queue_state, q_reason, overlap, *filters],
                     queue_out, **private)
    q_skip.click(h.queue_skip, queue_in, queue_out, **private)
    q_undo.click(h.queue_undo, queue_in, queue_out, **private)

    listing = [table, rows, model, summary]
    tab.select(partial(h.on_tab, h.refresh, len(listing), state_at=-1), [*filters, chat_state], listing, **private)
    for trigger in (refresh.click, label.change, modality.change):
        trigger(h.refresh, [*filters, chat_state], listing, **private)
    table.select(h.select, [rows, chat_state], [selected, audio, context, info, reason], **private)
    for button, verdict in ((accept, "accept"), (reject, "reject"), (unset, "unset")):
        button.click(partial(h.label, verdict), [selected, reason, chat_state, *filters],
                     [status, chat_state, *listing], **private)
    export.click(h.export, [fmt, *filters, chat_state], file, **private)
    api_label.click(h.api_label, [api_turn, api_verdict, api_reason, chat_state], [status, chat_state],
                    api_name="label")
