"""The Compare tab: one question, two anonymous systems side by side, a vote, then the reveal.

Public API endpoints (gradio_client; each Client is its own session):
    /compare(audio_or_text)  -> (answer_a, answer_b, status)
        audio_or_text: the question as text, or an audio file as `handle_file(path)`; the two
        systems are drawn at random (seeded per session), shown only as A and B.
    /vote(choice, reason)    -> (reveal, revealed)
        choice: A | B | tie | both_bad; `revealed` names the systems: {"A": {"model", ...},
        "B": {...}, "choice", "winner", "vote_id", "round", "drawn"}.
The round logic is `blsp_demo.app.arena.Arena`; these handlers unpack components and pack outputs.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from pathlib import Path

import gradio as gr
from gradio.utils import get_upload_folder

from blsp_demo.app.arena import CHOICE_WORDS, RANDOM, Arena, CompareState, RoundFailed, RoundProgress, reveal_markdown, revealed
from blsp_demo.ui.chat import ChatTab, client_key
from blsp_demo.app.services import Services
from blsp_demo.app.session import ChatSettings, ChatState, UserInput

HOW = ("Ask one question, spoken or typed: two systems answer side by side as **A** and **B**. "
       "Vote for the better answer (or a tie, or both bad); then you see which systems they were. "
       "Votes feed the win rates and the Bradley-Terry ranking on the Dashboard.")
PICK_HELP = ("Leave a system on *random* to draw it (seeded per session). Whichever you pick, the order of "
             "A and B is random, and the names stay hidden until you vote. A system that cannot answer "
             "the question (not loadable, or text-only for a recording without transcript) is left out.")
VOTE_BUTTONS = (("A", "← A is better"), ("B", "B is better →"), ("tie", "Tie"), ("both_bad", "Both are bad"))


def api_question(audio_or_text) -> UserInput:
    """/compare's argument: a string is the typed question; an uploaded file (gradio_client's
    `handle_file`) is a spoken one. Only files in Gradio's upload folder are read."""
    if isinstance(audio_or_text, str):
        return UserInput(text=audio_or_text)
    if isinstance(audio_or_text, dict) and audio_or_text.get("path"):
        path = Path(audio_or_text["path"]).resolve()
        if not path.is_relative_to(Path(get_upload_folder()).resolve()):
            raise ValueError("Send audio as an uploaded file: client.predict(handle_file(path), api_name='/compare').")
        return UserInput(audio=str(path))
    raise ValueError("audio_or_text is the question as text, or an audio file sent with handle_file(path).")


def question_line(inp: UserInput) -> str:
    if inp.audio is None:
        return f"**Question:** {inp.text.strip()}"
    said = f" \u201c{inp.transcript}\u201d" if inp.transcript else ""
    head = f"{inp.instruction.strip()} " if inp.instruction.strip() else ""
    return f"**Question:** {head}(spoken){said}"


@dataclass
class CompareUI:
    """The tab's components that handlers write to."""

    question: gr.Markdown
    heads: tuple[gr.Markdown, gr.Markdown]
    answers: tuple[gr.Markdown, gr.Markdown]
    status: gr.Markdown
    buttons: tuple[gr.Button, ...]
    reason: gr.Textbox
    reveal: gr.Markdown
    details: gr.JSON
    text: gr.Textbox
    mic: gr.Audio
    state: gr.State  # CompareState
    chat_state: gr.State  # ChatState: one session id for the Chat and Compare tabs ("Delete my data")


class CompareHandlers:
    def __init__(self, services: Services, ui: CompareUI):
        self.services = services
        self.arena = Arena(services)
        self.ui = ui

    # -- asking: browser events show everything; /compare returns the answers and the status
    def ask_text(self, text: str, chat_state, settings, state, picks, request: gr.Request = None):
        yield from self._round(UserInput(text=text or ""), chat_state, settings, state, picks, clear=self.ui.text,
                               request=request)

    def ask_audio(self, audio: str | None, chat_state, settings, state, picks, request: gr.Request = None):
        yield from self._round(UserInput(audio=audio or ""), chat_state, settings, state, picks, clear=self.ui.mic,
                               request=request)

    def ask_example(self, index: int, chat_state, settings, state, picks, request: gr.Request = None):
        ex = self.services.examples[int(index)]
        inp = UserInput(audio=str(ex.audio), instruction=ex.instruction, transcript=ex.text)
        yield from self._round(inp, chat_state, settings, state, picks, request=request)

    def compare(self, audio_or_text, chat_state, settings, state, request: gr.Request = None):
        try:
            inp = api_question(audio_or_text)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        yield from self._round(inp, chat_state, settings, state, (RANDOM, RANDOM), source="api", request=request)

    def _round(self, inp: UserInput, chat_state, settings, state, picks, clear=None, source="browser", request=None):
        # the Chat tab may be answering at the same time: write its state back only when new here
        ui, session = self.ui, ({} if chat_state is not None else {self.ui.chat_state: ChatState()})
        chat_state = chat_state or session[ui.chat_state]
        settings = settings or ChatSettings(model=self.services.settings.model)
        client = client_key(request, chat_state)
        try:
            for p in self.arena.ask(state, chat_state.session, settings, inp, picks, source, client=client):
                out = {**self._progress(p, full=source != "api", question=question_line(inp)), **session}
                if p.done and clear is not None:
                    out[clear] = None if clear is ui.mic else ""
                yield out
        except RoundFailed as err:
            failed = CompareState(rounds=(state.rounds if state else 0) + 1)  # nothing left to vote on
            yield {ui.status: f"**Error:** {err}", ui.state: failed, **session,
                   **({b: gr.update(interactive=False) for b in ui.buttons} if source != "api" else {})}
            raise gr.Error(str(err), print_exception=False) from None

    def _progress(self, p: RoundProgress, full: bool, question: str) -> dict:
        ui = self.ui
        out = {ui.answers[0]: p.answers[0], ui.answers[1]: p.answers[1], ui.status: p.status, ui.state: p.state}
        if full:
            out.update({ui.question: question, ui.heads[0]: "### Model A", ui.heads[1]: "### Model B",
                        ui.reveal: "", ui.details: None, **{b: gr.update(interactive=p.done) for b in ui.buttons}})
        return out

    # -- voting: the buttons also reveal the names in the column heads; /vote returns the reveal
    def vote_button(self, choice: str, reason: str, chat_state, state):
        record, state = self._vote(choice, reason, chat_state, state, "browser")
        ui = self.ui
        return {ui.reveal: reveal_markdown(record), ui.details: revealed(record), ui.state: state, ui.reason: "",
                ui.heads[0]: f"### A: {record['model_a']}", ui.heads[1]: f"### B: {record['model_b']}",
                ui.status: f"Saved: {CHOICE_WORDS[record['choice']]}. Ask another question for a new round.",
                **{b: gr.update(interactive=False) for b in ui.buttons}}

    def vote(self, choice: str, reason: str, chat_state, state):
        record, state = self._vote(choice, reason, chat_state, state, "api")
        return {self.ui.reveal: reveal_markdown(record), self.ui.details: revealed(record), self.ui.state: state}

    def _vote(self, choice, reason, chat_state, state, source):
        who = chat_state or ChatState()
        try:
            return self.arena.vote(state, who.session, choice, reason or "", source=source, annotator=who.annotator)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None


def build_compare_tab(services: Services, chat: ChatTab, concurrency: int) -> CompareUI:
    systems = list(dict.fromkeys(services.model_choices))
    state = gr.State(CompareState())
    picks = gr.State((RANDOM, RANDOM))
    gr.Markdown(HOW)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            question = gr.Markdown(elem_id="cmp_question")
            heads, answers = [], []
            with gr.Row(equal_height=True):
                for side in ("a", "b"):
                    with gr.Column(variant="panel"):
                        heads.append(gr.Markdown(f"### Model {side.upper()}", elem_id=f"cmp_head_{side}"))
                        answers.append(gr.Markdown("", elem_id=f"cmp_answer_{side}", min_height=140))
            status = gr.Markdown(elem_id="cmp_status")
            with gr.Row():
                buttons = [gr.Button(label, interactive=False, elem_id=f"vote_{choice.lower()}")
                           for choice, label in VOTE_BUTTONS]
            reason = gr.Textbox(label="Reason (optional, saved with your vote)", elem_id="cmp_reason", lines=1)
            reveal = gr.Markdown(elem_id="cmp_reveal")
            with gr.Row():
                text = gr.Textbox(show_label=False, placeholder="Type a question for both and press Enter",
                                  elem_id="cmp_text", scale=5, lines=1, max_lines=6)
                send = gr.Button("Ask both", variant="primary", scale=1, min_width=80)
            mic = gr.Audio(sources=["microphone", "upload"], type="filepath", elem_id="cmp_mic",
                           label="Spoken question for both: record (stop to send) or upload")
            examples = gr.Dataset(components=[gr.Textbox(visible=False)], type="index", label="Spoken examples",
                                  samples=[[ex.label] for ex in services.examples], samples_per_page=8,
                                  visible=bool(services.examples), elem_id="cmp_examples")
        with gr.Column(scale=1, min_width=260):
            pick_1 = gr.Dropdown([RANDOM, *systems], value=RANDOM, label="First system", elem_id="cmp_pick_1")
            pick_2 = gr.Dropdown([RANDOM, *systems], value=RANDOM, label="Second system", elem_id="cmp_pick_2")
            gr.Markdown(PICK_HELP)
            with gr.Accordion("Round details (after the vote)", open=False):
                details = gr.JSON(label="Revealed", elem_id="cmp_details")
    # hidden inputs of the API endpoints
    api_question_in = gr.JSON(visible=False, label="audio_or_text")
    api_choice = gr.Textbox(visible=False, label="choice")
    api_ask, api_vote = gr.Button(visible=False), gr.Button(visible=False)

    ui = CompareUI(question, tuple(heads), tuple(answers), status, tuple(buttons), reason, reveal, details,
                   text, mic, state, chat.state)
    h = CompareHandlers(services, ui)
    shown = [question, *heads, *answers, status, *buttons, reveal, details, state, chat.state]
    turn = dict(concurrency_id="generate", concurrency_limit=concurrency, api_visibility="private")
    round_inputs = [chat.state, chat.settings, state, picks]
    text.submit(h.ask_text, [text, *round_inputs], [*shown, text], **turn)
    send.click(h.ask_text, [text, *round_inputs], [*shown, text], **turn)
    mic.stop_recording(h.ask_audio, [mic, *round_inputs], [*shown, mic], **turn)
    mic.upload(h.ask_audio, [mic, *round_inputs], [*shown, mic], **turn)
    examples.click(h.ask_example, [examples, *round_inputs], shown, **turn)
    api_ask.click(h.compare, [api_question_in, chat.state, chat.settings, state],
                  [*answers, status, state, chat.state], api_name="compare",
                  concurrency_id="generate", concurrency_limit=concurrency)

    voted = [reveal, details, state, reason, *heads, status, *buttons]
    for button, (choice, _) in zip(buttons, VOTE_BUTTONS):
        button.click(partial(h.vote_button, choice), [reason, chat.state, state], voted, api_visibility="private")
    api_vote.click(h.vote, [api_choice, reason, chat.state, state], [reveal, details, state], api_name="vote")
    for pick in (pick_1, pick_2):
        pick.change(lambda a, b: (a, b), [pick_1, pick_2], picks, api_visibility="private", queue=False)
    return ui
