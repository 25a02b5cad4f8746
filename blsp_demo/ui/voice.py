"""The voice assistant panel of the Chat tab: a persona (system prompt), spoken answers, and a
hands-free microphone (VAD ends the question, speaking interrupts the answer). Thin handlers
over `app.persona`, `app.speech_out`, `app.handsfree` and `app.voice_turn`.

Public API (gradio_client; each Client is its own session):
    /system(system_prompt) -> note     (empty: the model's own default; kept across "New conversation")
"""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Callable

import gradio as gr

from blsp_demo.app.handsfree import HandsFree
from blsp_demo.app.persona import PRESET_LABELS, PRESETS, describe, persona_text, with_persona
from blsp_demo.app.services import Services
from blsp_demo.app.session import Chat, ChatSettings, ChatState, TurnFailed, TurnSuperseded, UserInput
from blsp_demo.app.speech_out import Espeak
from blsp_demo.app.voice_turn import joined, latency_line, new_reply, spoken_turn

log = logging.getLogger(__name__)

PHASE_TEXT = {"off": "Hands-free is off: start the microphone below", "listening": "Listening",
              "hearing": "Hearing you", "thinking": "Thinking", "speaking": "Speaking (talk to interrupt)"}
PHASE_ICON = {"off": "\u25cb", "listening": "\U0001f7e2", "hearing": "\U0001f3a4", "thinking": "\u23f3",
              "speaking": "\U0001f50a"}
# Stop the spoken answer in the browser at once (barge-in); the server cancels the answer itself.
PAUSE_JS = "(...args) => { document.querySelectorAll('#reply_audio audio').forEach(a => a.pause()); return args; }"


def phase_html(phase: str) -> str:
    return (f'<div id="voice_phase" data-phase="{phase}" style="font-size:1.1em">'
            f'{PHASE_ICON[phase]} <b>{PHASE_TEXT[phase]}</b></div>')


class VoiceHandlers:
    def __init__(self, services: Services, chat: Chat, client_key: Callable, tts: Espeak | None = None):
        self.services, self.chat = services, chat
        self.client_key = client_key  # whom the rate limit counts (ui.chat.client_key)
        self.tts = tts or Espeak()

    # -- persona
    def set_persona(self, system_prompt: str, state: ChatState | None, settings: ChatSettings | None):
        state = state or ChatState()
        try:
            system = persona_text(system_prompt)
        except ValueError as err:
            raise gr.Error(str(err), print_exception=False) from None
        state = replace(state, conversation=with_persona(state.conversation, system))
        return self.persona_note(system, settings), state

    def persona_note(self, system: str | None, settings: ChatSettings | None) -> str:
        model = settings.model if settings else self.services.settings.model
        pool = self.services.pool
        template = getattr(pool.get(model), "template", None) if pool.is_loaded(model) else None
        shown = f"\u201c{system}\u201d" if system else "the model's own default"
        where = describe(template, system) if pool.is_loaded(model) else \
            "Where it goes is checked when the model has loaded."
        return f"Persona: {shown}. {where}"

    @staticmethod
    def preset_text(name: str) -> str:
        return PRESETS.get(name) or ""

    # -- hands-free microphone
    def on_stream(self, chunk, hf: HandsFree | None):
        """A microphone chunk: outputs the session's HandsFree, a question to answer, a barge-in,
        the indicator (skips where nothing changed)."""
        hf = hf or HandsFree(Path(tempfile.mkdtemp(prefix="blsp-handsfree-")))
        now = time.perf_counter()
        question, barge = gr.skip(), gr.skip()
        if chunk is not None:
            sample_rate, samples = chunk
            for action in hf.on_audio(int(sample_rate), samples, now):
                log.info("hands-free: %s %s (%.2f s of speech)", action.kind, action.path or "", action.duration_s)
                if action.kind == "barge":
                    barge = f"barge-in {hf.barge_ins}"
                else:
                    question = json.dumps({"path": action.path, "speech_end": action.speech_end})
        return hf, question, barge, phase_html(hf.phase(now))

    @staticmethod
    def on_barge(hf: HandsFree | None):
        return phase_html(hf.phase(time.perf_counter()) if hf else "off")

    @staticmethod
    def on_stop(hf: HandsFree | None):
        return phase_html("off")

    def answer_question(self, question: str, hf: HandsFree | None, speak: bool, state: ChatState | None,
                        settings: ChatSettings, request: gr.Request = None):
        """The question the VAD cut: answered (and spoken, when asked) with no click."""
        if not question or hf is None:
            return
        item = json.loads(question)
        hf.answering()
        try:
            yield from self._turn(UserInput(audio=item["path"]), item["speech_end"], hf, speak, state, settings,
                                  request)
        finally:
            hf.answered()
            Path(item["path"]).unlink(missing_ok=True)  # the store has its copy when the audio is kept

    def _turn(self, inp: UserInput, question_end: float, hf: HandsFree, speak: bool, state, settings, request):
        state = state or ChatState()
        reply = new_reply(self.chat, state, settings, question_end, self.tts if speak else None)
        opened = False
        asked_at = hf.barge_ins
        steps = spoken_turn(self.chat, state, settings, inp, reply, self.client_key(request, state),
                            extra={"hands_free": True})
        try:
            for step in steps:
                if hf.barge_ins != asked_at:  # spoken over: closing the turn records it as cancelled
                    steps.close()
                    yield gr.skip(), gr.skip(), "Interrupted: listening to you.", gr.skip(), \
                        phase_html(hf.phase(time.perf_counter())), gr.skip()
                    return
                wav, seconds = joined(step.audio)
                if wav is not None:
                    hf.spoken(seconds, time.perf_counter())
                opened = opened or wav is not None
                wav = wav if opened else gr.skip()  # the player's stream opens with the first sentence
                p = step.progress
                if not p.done:
                    yield p.history, gr.skip(), p.status, wav, phase_html(hf.phase(time.perf_counter())), gr.skip()
                    continue
                yield self._done(p, reply, wav, hf)
        except TurnSuperseded:  # reset or deleted during the answer: what they showed stays
            return
        except TurnFailed as err:
            yield list(state.history), gr.skip(), f"**Error:** {err}", gr.skip(), phase_html("listening"), state

    def _done(self, p, reply, wav, hf: HandsFree):
        timings = reply.timings()
        line = latency_line(timings, spoken_question=True)
        details = {**p.details, **{k: None if v is None else round(v, 3) for k, v in timings.items()}}
        history, state = p.history, p.state
        kept = (p.record or {}).get("reply_audio_path")
        if kept:  # the spoken answer as a player in the chat (kept under the session's consent)
            history = [*history, {"role": "assistant", "content": {"path": str(self.chat.store.data_dir / kept)}}]
            state = replace(state, history=tuple(history))
        status = p.status + (f"  \n{line}" if line else "")
        return history, details, status, wav, phase_html(hf.phase(time.perf_counter())), state


def build_voice_panel(services: Services, chat: Chat, client_key: Callable, state: gr.State, settings: gr.State,
                      chatbot: gr.Chatbot, status, details, concurrency: int) -> None:
    h = VoiceHandlers(services, chat, client_key)
    with gr.Accordion("Voice assistant: persona, spoken answers, hands-free", open=True, elem_id="voice"):
        with gr.Row(equal_height=False):
            with gr.Column(scale=2):
                preset = gr.Dropdown([(PRESET_LABELS[k], k) for k in PRESETS], value="default", label="Persona",
                                     elem_id="persona_preset")
                persona = gr.Textbox(label="System prompt", info="Empty: the model's own default.", lines=2,
                                     elem_id="persona", placeholder="e.g. You are a concise voice assistant.")
                apply = gr.Button("Use this persona", size="sm", elem_id="persona_apply")
                note = gr.Markdown("Persona: the model's own default.", elem_id="persona_note")
            with gr.Column(scale=3):
                speak = gr.Checkbox(False, label="Speak the answers", elem_id="speak")
                indicator = gr.HTML(phase_html("off"), elem_id="voice_indicator")
                mic = gr.Audio(sources=["microphone"], streaming=True, type="numpy", elem_id="handsfree",
                               label="Hands-free: start once; a pause sends your question, talking interrupts the answer")
                reply_audio = gr.Audio(streaming=True, autoplay=True, interactive=False, elem_id="reply_audio",
                                       label="Spoken answer")
    # the session's open microphone; its folder of not-yet-answered questions goes with the session
    hf = gr.State(None, delete_callback=lambda v: v is not None and shutil.rmtree(v.folder, ignore_errors=True))
    question = gr.Textbox(visible="hidden", elem_id="handsfree_question")
    barge = gr.Textbox(visible="hidden", elem_id="handsfree_barge")

    apply.click(h.set_persona, [persona, state, settings], [note, state], api_name="system")
    preset.change(h.preset_text, preset, persona, api_visibility="private", queue=False).then(
        h.set_persona, [persona, state, settings], [note, state], api_visibility="private")
    mic.stream(h.on_stream, [mic, hf], [hf, question, barge, indicator], stream_every=0.25, time_limit=None,
               concurrency_limit=8, concurrency_id="vad", api_visibility="private", show_progress="hidden")
    mic.stop_recording(h.on_stop, hf, indicator, api_visibility="private", queue=False)
    question.change(h.answer_question, [question, hf, speak, state, settings],
                    [chatbot, details, status, reply_audio, indicator, state], concurrency_id="generate",
                    concurrency_limit=concurrency, api_visibility="private", show_progress="hidden",
                    trigger_mode="multiple")
    # the answer stops itself on a barge-in (HandsFree.barge_ins); this only silences the player
    barge.change(h.on_barge, hf, indicator, js=PAUSE_JS, api_visibility="private", queue=False,
                 trigger_mode="multiple")
