"""The Chat tab: speak, upload or type; streamed answers; thumbs up/down; settings; your data.

Public API endpoints (gradio_client; each Client is its own session):
    /chat_text(text)                -> (history, details, status, "")
    /chat_audio(audio, instruction) -> (history, details, status, None)
    /feedback(message_index, verdict, reason) -> status   (verdict: accept | reject | unset)
    /reset()                        -> (history, details, status)
`details` describes the last answer: turn_id, message_index (what /feedback takes), timings.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from blsp_demo.options import GenerationOptions
from blsp_demo.prompts import INSTRUCTIONS, instruction_text
from blsp_demo.app.limits import ClientKey, session_ttl_s
from blsp_demo.app.services import Services, audio_turn_seconds, gpu, text_turn_seconds
from blsp_demo.ui.voice import build_voice_panel
from blsp_demo.app.session import (Chat, ChatSettings, ChatState, TurnFailed, TurnSuperseded, UserInput,
                                   verdict_from_liked)

CONSENT = (
    "**Your data.** Questions you type or speak, and the answers, are logged to evaluate the model "
    "(with the audio, unless you untick *Keep my audio*){hub}. Your thumbs up/down labels are logged too. "
    "*Delete my data* removes this session's audio and marks its records deleted, so they are left out "
    "of every view and export. Don't say anything you would not want stored."
)
PRESET_NAMES = {"none": "None (free question)", "qa": "Answer the question", "repeat": "Repeat (ASR)",
                "translate": "Translate", "intent": "Intent", "sentiment": "Sentiment", "continue": "Continue"}
TARGET_LANGUAGES = ["German", "French", "Spanish", "Chinese", "Japanese", "Italian"]
DEFAULT_INTENT_LABELS = "greeting, question, request, complaint, other"


class ChatHandlers:
    """Gradio-facing handlers: unpack components, call `Chat`, pack the outputs."""

    def __init__(self, services: Services):
        self.services = services
        self.chat = Chat(services)

    # outputs of a turn: chatbot, details, status, the input (cleared, or given back on failure), state
    def chat_text(self, text: str, state: ChatState | None, settings: ChatSettings, request: gr.Request = None):
        yield from self._turn(state, settings, UserInput(text=text or ""), cleared="", sent=text, request=request)

    def chat_audio(self, audio: str | None, instruction: str, state: ChatState | None, settings: ChatSettings,
                   request: gr.Request = None):
        inp = UserInput(audio=audio or "", instruction=instruction or "")
        yield from self._turn(state, settings, inp, cleared=None, sent=audio, request=request)

    def chat_example(self, index: int, instruction: str, state: ChatState | None, settings: ChatSettings,
                     request: gr.Request = None):
        ex = self.services.examples[int(index)]
        inp = UserInput(audio=str(ex.audio), instruction=ex.instruction or instruction or "", transcript=ex.text)
        yield from self._turn(state, settings, inp, cleared=gr.skip(), sent=gr.skip(), request=request)

    def _turn(self, state, settings, inp: UserInput, cleared, sent, request=None):
        state = state or ChatState()
        try:  # the state is written only when the turn is done: a reset meanwhile is never undone
            for step in self.chat.answer(state, settings, inp, client=client_key(request, state)):
                yield (step.history, step.details if step.done else gr.skip(), step.status, cleared,
                       step.state if step.done else gr.skip())
        except TurnSuperseded:  # reset or deleted during the answer: what they showed stays
            return
        except TurnFailed as err:
            # give the input back so the person can fix it; the conversation is as it was
            kept = state if self.chat.is_current(state) else gr.skip()  # a reset meanwhile stays
            if cleared is None and not (sent and Path(sent).is_file()):
                sent = None  # refused audio is removed from the server: nothing to give back
            yield list(state.history), gr.skip(), f"**Error:** {err}", sent, kept
            raise gr.Error(str(err), print_exception=False) from None

    @staticmethod
    def thumbs(state: ChatState | None):
        """A new chatbot value clears the thumbs the browser shows; this sets them again."""
        return gr.update(feedback_value=state.thumbs() if state else [])

    # outputs of a thumb: status, the reason box (cleared), state; of /feedback: status, state
    def on_like(self, state: ChatState | None, reason: str, evt: gr.LikeData):
        verdict = verdict_from_liked(evt.liked)
        return self._label(state, evt.index, verdict, reason, "chat")

    def feedback(self, message_index, verdict: str, reason: str, state: ChatState | None):
        verdict = (verdict or "").strip().lower()
        try:
            status, _, state = self._label(state, message_index, verdict, reason, "api", quiet=False)
            return status, state
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None

    def _label(self, state, index, verdict, reason, source, quiet=True):
        if isinstance(index, (list, tuple)):  # some Gradio versions send [index, ...]
            index = index[0]
        state = state or ChatState()
        try:
            record, state = self.chat.label(state, int(index), verdict, reason or "", source=source)
        except ValueError as err:
            if not quiet:
                raise
            gr.Warning(str(err))
            return f"**Error:** {err}", gr.skip(), state
        shown = {"accept": "accept (thumbs up)", "reject": "reject (thumbs down)", "unset": "label removed"}[verdict]
        status = f"Saved {shown} for answer at message {record['message_index']} (label {record['id'][:8]})."
        return status, "", state

    def reset(self, state: ChatState | None):
        new = self.chat.reset(state or ChatState())
        return [], None, "New conversation.", new

    def delete_my_data(self, state: ChatState | None):
        new, deletion = self.chat.delete_session(state or ChatState())
        msg = (f"Deleted this session's data: {deletion.records_deleted} records marked deleted, "
               f"{len(deletion.audio_removed)} audio files removed (and {len(deletion.copies_removed)} copies "
               "in the upload cache). You are now in a new session.")
        return [], None, msg, new

    def settings(self, model, temperature, top_p, max_new_tokens, beams, keep_audio) -> ChatSettings:
        options = GenerationOptions(max_new_tokens=int(max_new_tokens), temperature=float(temperature),
                                    top_p=float(top_p), num_beams=int(beams))
        return ChatSettings(model=model, options=options.validate(), keep_audio=bool(keep_audio))

    @staticmethod
    def preset(task: str, target: str, labels: str) -> str:
        fields = {"translate": {"target": target}, "intent": {"labels": labels}}.get(task, {})
        return instruction_text(task, **fields)


def client_key(request, state: ChatState | None) -> ClientKey | None:
    """Whom the rate limit counts (`app.limits.ClientKey`): the browser tab's or API client's Gradio
    session (else the app's session id: handlers called without a request), and what the client
    cannot choose: the connection's address, X-Forwarded-For (used only when the host trusts it),
    the logged-in user."""
    session_hash = getattr(request, "session_hash", None)
    session = f"gradio:{session_hash}" if session_hash else (state.session if state else None)
    if session is None:
        return None
    headers = getattr(request, "headers", None) or {}
    return ClientKey(session=session, host=getattr(getattr(request, "client", None), "host", None),
                     forwarded_for=headers.get("x-forwarded-for", "") if hasattr(headers, "get") else "",
                     user=getattr(request, "username", None))


@dataclass
class ChatTab:
    state: gr.State
    chatbot: gr.Chatbot
    settings: gr.State  # ChatSettings: generation options and "keep my audio" (Compare uses them too)


def build_chat_tab(services: Services, concurrency: int) -> ChatTab:
    h = ChatHandlers(services)
    default = ChatSettings(model=services.settings.model,
                           options=GenerationOptions(max_new_tokens=services.settings.max_new_tokens))
    state = gr.State(None, time_to_live=session_ttl_s(),  # idle sessions give their memory back
                     delete_callback=lambda s: s and services.pool.forget(s.conversation.id))
    settings = gr.State(default)
    with gr.Row(equal_height=False):
        with gr.Column(scale=3):
            chatbot = gr.Chatbot(elem_id="chat", height=440, label="Conversation", buttons=["copy", "copy_all"],
                                 placeholder="Ask by voice (record or upload) or type below.")
            status = gr.Markdown("", elem_id="status", label="Status")
            with gr.Row():
                text_in = gr.Textbox(label="Message", show_label=False, placeholder="Type a message and press Enter",
                                     elem_id="text_in", scale=5, lines=1, max_lines=6)
                send = gr.Button("Send", variant="primary", scale=1, min_width=80)
            reason = gr.Textbox(label="Reason for your thumbs up/down (optional, saved with the next click)",
                                elem_id="reason", lines=1)
            with gr.Row():
                mic = gr.Audio(sources=["microphone", "upload"], type="filepath", elem_id="mic",
                               label="Spoken question: record (stop to send) or upload", scale=3)
                with gr.Column(scale=2):
                    preset = gr.Dropdown([(v, k) for k, v in PRESET_NAMES.items() if k in INSTRUCTIONS],
                                         value="none", label="Instruction before the speech")
                    target = gr.Dropdown(TARGET_LANGUAGES, value="German", label="Translate into", visible=False)
                    labels = gr.Textbox(DEFAULT_INTENT_LABELS, label="Intent labels", visible=False)
                    instruction = gr.Textbox(label="Instruction", elem_id="instruction", lines=2,
                                             placeholder="Optional text placed before your speech")
            examples = gr.Dataset(components=[gr.Textbox(visible=False)], type="index", label="Spoken examples",
                                  samples=[[ex.label] for ex in services.examples], samples_per_page=8,
                                  visible=bool(services.examples), elem_id="examples")
        with gr.Column(scale=1, min_width=260):
            model = gr.Dropdown(services.model_choices, value=default.model, label="Model", elem_id="model")
            with gr.Accordion("Generation settings", open=False):
                temperature = gr.Slider(0, 1.5, value=default.options.temperature, step=0.05,
                                        label="Temperature (0 = greedy)")
                top_p = gr.Slider(0.05, 1, value=default.options.top_p, step=0.05, label="Top-p")
                max_new = gr.Slider(8, 512, value=default.options.max_new_tokens, step=8, label="Max new tokens")
                beams = gr.Slider(1, 4, value=default.options.num_beams, step=1,
                                  label="Beams (> 1: no streaming)")
            reset = gr.Button("New conversation", elem_id="reset")
            with gr.Accordion("Your data", open=True):
                hub = f" and pushed to the dataset `{services.settings.hf_dataset_repo}`" \
                    if services.settings.hf_dataset_repo else ""
                gr.Markdown(CONSENT.format(hub=hub))
                keep_audio = gr.Checkbox(value=default.keep_audio, label="Keep my audio", elem_id="keep_audio")
                delete = gr.Button("Delete my data", variant="stop", size="sm", elem_id="delete")
            with gr.Accordion("Last answer", open=False):
                details = gr.JSON(label="Details", elem_id="details")
    # hidden inputs of the /feedback endpoint (gradio_client cannot send LikeData)
    fb_index = gr.Number(visible=False, precision=0, label="message_index")
    fb_verdict = gr.Textbox(visible=False, label="verdict")
    fb_button = gr.Button(visible=False)

    turn = dict(concurrency_id="generate", concurrency_limit=concurrency)
    # on ZeroGPU each turn holds the GPU for a duration sized from its own request (services.gpu)
    text_turn = dict(fn=gpu(h.chat_text, duration=text_turn_seconds), inputs=[text_in, state, settings],
                     outputs=[chatbot, details, status, text_in, state], **turn)
    audio_turn = dict(fn=gpu(h.chat_audio, duration=audio_turn_seconds), inputs=[mic, instruction, state, settings],
                      outputs=[chatbot, details, status, mic, state], **turn)
    turn_events = [
        text_in.submit(api_name="chat_text", **text_turn),
        send.click(api_visibility="private", **text_turn),
        mic.stop_recording(api_name="chat_audio", **audio_turn),
        mic.upload(api_visibility="private", **audio_turn),
        examples.click(h.chat_example, [examples, instruction, state, settings],
                       [chatbot, details, status, mic, state], api_visibility="private", **turn),
    ]
    for event in turn_events:  # in the browser only: API calls do not run .then() steps
        event.then(h.thumbs, state, chatbot, api_visibility="private", queue=False)

    chatbot.like(h.on_like, [state, reason], [status, reason, state], api_visibility="private")
    fb_button.click(h.feedback, [fb_index, fb_verdict, reason, state], [status, state], api_name="feedback")
    reset.click(h.reset, [state], [chatbot, details, status, state], api_name="reset")
    chatbot.clear(h.reset, [state], [chatbot, details, status, state], api_visibility="private")
    delete.click(h.delete_my_data, [state], [chatbot, details, status, state], api_visibility="private")

    knobs = [model, temperature, top_p, max_new, beams, keep_audio]
    for knob in knobs:
        knob.change(h.settings, knobs, settings, api_visibility="private", queue=False)
    preset.change(lambda t: (gr.update(visible=t == "translate"), gr.update(visible=t == "intent")),
                  preset, [target, labels], api_visibility="private", queue=False)
    for src in (preset, target, labels):
        src.change(h.preset, [preset, target, labels], instruction, api_visibility="private", queue=False)
    build_voice_panel(services, h.chat, client_key, state, settings, chatbot, status, details, concurrency)  # ui/voice.py
    return ChatTab(state, chatbot, settings)
