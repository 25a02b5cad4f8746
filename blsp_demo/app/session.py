"""A chat session without the UI: per-session state, answering a turn, labels, reset, deletion.

The Gradio handlers in `chat.py` are thin wrappers around `Chat`; tests drive `Chat` and the
handlers with a fake engine. State objects are immutable: every step returns a new one, which the
handler hands back to `gr.State`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Iterator

from blsp_demo.app.records import TurnRecord, new_id
from blsp_demo.app.store import Deletion
from blsp_demo.audio import AudioError, load_audio, probe
from blsp_demo.conversation import Conversation, SpeechClip
from blsp_demo.files import content_sha256
from blsp_demo.options import GenerationOptions, Response
from blsp_demo.app.limits import RateLimited, release_before_last
from blsp_demo.app.persona import for_engine
from blsp_demo.app.services import Services, gpu
from blsp_demo.app.text import MAX_TEXT_CHARS, user_text, valid_text  # noqa: F401 - the one text validator (re-exported)

log = logging.getLogger(__name__)

AUDIO_NOT_KEPT = "(spoken question: audio not kept)"


@dataclass(frozen=True)
class ChatSettings:
    """What a session chose in the side panel."""

    model: str
    options: GenerationOptions = GenerationOptions()
    keep_audio: bool = True


@dataclass(frozen=True)
class ChatState:
    """One browser tab (or API client): its id in the records, its conversation, what it shows."""

    session: str = field(default_factory=new_id)
    conversation: Conversation = field(default_factory=Conversation)
    history: tuple[dict, ...] = ()  # the chatbot's messages: {"role", "content"}
    answers: tuple[tuple[int, str], ...] = ()  # (message index of an answer, its turn record id)
    verdicts: tuple[tuple[int, str], ...] = ()  # (message index, accept | reject): the thumbs to show
    annotator: str = ""  # who labels in this session (app/identity.py); "" = anonymous

    def turn_id_at(self, index: int) -> str | None:
        return dict(self.answers).get(index)

    def with_verdict(self, index: int, verdict: str) -> "ChatState":
        kept = tuple((i, v) for i, v in self.verdicts if i != index)
        return replace(self, verdicts=kept + (((index, verdict),) if verdict in ("accept", "reject") else ()))

    def thumbs(self) -> list[str | None]:
        """Chatbot.feedback_value: per assistant message, "Like", "Dislike" or None."""
        shown, verdicts = {"accept": "Like", "reject": "Dislike"}, dict(self.verdicts)
        return [shown.get(verdicts.get(i)) for i, m in enumerate(self.history) if m["role"] == "assistant"]

    @property
    def user_turns(self) -> int:
        return sum(t.role == "user" for t in self.conversation.turns)


@dataclass(frozen=True)
class UserInput:
    """A user turn as it arrives: typed text, or audio with an optional instruction before it."""

    text: str = ""
    audio: str | None = None
    instruction: str = ""
    transcript: str | None = None  # known transcript of the audio (examples); the text engine needs it
    clip: SpeechClip | None = None  # the audio, once hashed and probed where it entered (`Chat._take_audio`)

    def __post_init__(self):
        object.__setattr__(self, "text", valid_text(self.text or ""))
        object.__setattr__(self, "instruction", valid_text(self.instruction or ""))

    @property
    def modality(self) -> str:
        return "speech" if self.audio is not None else "text"

    def check(self) -> "UserInput":
        if self.audio is None and not self.text.strip():
            raise ValueError("The message is empty: type a question, or record or upload one.")
        if self.audio is not None and not str(self.audio).strip():
            raise AudioError("empty", "No audio arrived: record again or choose a file.")
        for what, text in (("message", self.text), ("instruction", self.instruction)):
            user_text(text, what)  # ValueError over the limit
        return self

    def add_to(self, conv: Conversation) -> Conversation:
        if self.audio is not None:
            return conv.add_speech(self.clip or self.audio, self.instruction.strip(), self.transcript)
        return conv.add_text(self.text.strip())

    def messages(self, shown_audio: str | None = None, kept: bool = True) -> list[dict]:
        """The chatbot messages for this turn: the instruction, then the audio as a player (as
        words when the audio is not kept: a player would keep a copy on the server)."""
        if self.audio is None:
            return [{"role": "user", "content": self.text.strip()}]
        head = [{"role": "user", "content": self.instruction.strip()}] if self.instruction.strip() else []
        if not kept and self.transcript is None:
            return head + [{"role": "user", "content": AUDIO_NOT_KEPT}]
        return head + [{"role": "user", "content": {"path": shown_audio or self.audio}}]


@dataclass(frozen=True)
class Progress:
    """One step of an answer: what to show now, and the state to keep."""

    history: list[dict]
    state: ChatState
    status: str
    details: dict | None = None  # set when the turn is done
    done: bool = False
    record: dict | None = None  # the turn record as written, once it is logged


class TurnFailed(Exception):
    """A turn could not be answered; the message is for the user, the attempt was logged."""


class TurnAudioError(Exception):
    """Audio refused where it entered, with the turn record that describes it (hash, name)."""

    def __init__(self, turn: TurnRecord, error: Exception):
        super().__init__(str(error))
        self.turn, self.error = turn, error


class TurnSuperseded(TurnFailed):
    """The conversation was reset or the session deleted while this turn ran: nothing of it is shown."""


class Superseded(RuntimeError):
    """What a turn's record says when a reset or a deletion stopped it."""

    code = "superseded"


class Cancelled(RuntimeError):
    """What a turn's record says when its answer was abandoned half-way."""

    code = "cancelled"


@gpu
def generate(engine, conv: Conversation, options: GenerationOptions):
    """The only step that needs the accelerator (a ZeroGPU Space allocates it per call)."""
    yield from engine.stream(conv, options)


def verdict_from_liked(liked) -> str:
    """gr.LikeData.liked: True (thumbs up), False (down), "" (the same thumb again: retract)."""
    if liked is True or liked in ("Like", "like"):
        return "accept"
    if liked is False or liked in ("Dislike", "dislike"):
        return "reject"
    return "unset"


class Chat:
    """Answers turns and records them; one instance serves every session."""

    def __init__(self, services: Services):
        self.services = services
        self.store = services.store
        self.pool = services.pool
        self.gate = services.gate
        self.retired = services.retired
        self.uploads = services.uploads

    # -- answering
    def answer(self, state: ChatState, settings: ChatSettings, inp: UserInput,
               extra: dict | None = None, client: str | None = None, listener=None) -> Iterator[Progress]:
        """Stream the answer to `inp`; log the turn (with the `extra` fields). Raises TurnFailed
        (after logging the attempt) with the state untouched when the turn cannot be answered.
        `client` (the browser tab's or API client's session) is admitted by the rate limit first.
        `listener` (e.g. `speech_out.SpokenReply`) gets the answer so far at each step (`on_text`) and
        the final text before the turn is recorded (`on_done`, which returns record fields)."""
        t0 = time.perf_counter()
        turn = self._turn_record(state, settings, inp, extra or {})
        try:
            admitted = self.gate.enter(client) if client is not None else None
        except RateLimited as err:
            raise TurnFailed(self._log_failure(turn, err)) from err
        # a client that leaves mid-answer closes `_answer`, which logs the turn as cancelled
        yield from release_before_last(self._answer(state, settings, inp, turn, t0, listener),
                                       lambda: admitted is not None and self.gate.leave(admitted))

    def _answer(self, state: ChatState, settings: ChatSettings, inp: UserInput, turn: TurnRecord,
                t0: float, listener=None) -> Iterator[Progress]:
        try:
            inp.check()
            if inp.audio is not None:
                turn, inp, shown = self._take_audio(inp, settings.keep_audio, state.session, turn)
            else:
                shown = None
            conv = inp.add_to(state.conversation)
            history = [*state.history, *inp.messages(shown, kept=settings.keep_audio)]
            loading = not self.pool.is_loaded(settings.model)
            yield Progress(history, state, f"Loading {settings.model} (first use)…" if loading else "Thinking…")
            engine = self.pool.get(settings.model)
            asked = for_engine(conv, engine)  # without the persona where the template has no system slot
            turn = replace(turn, model_id=engine.model_id, revision=getattr(engine, "revision", ""), engine=engine.name,
                           system_prompt=asked.system)
            response, app_ttft = None, None
            for chunk in generate(engine, asked, settings.options):
                app_ttft = app_ttft if app_ttft is not None else time.perf_counter() - t0
                response = chunk.response or response
                self._check_current(state)
                listener is not None and listener.on_text(chunk.text)
                yield Progress([*history, {"role": "assistant", "content": chunk.text}], state, "Answering…")
            self._check_current(state)
            turn = replace(turn, **(listener.on_done(response.text) if listener is not None else {}))
            done = self._finish(state, history, conv, turn, response, app_ttft)
        except GeneratorExit:  # the client left mid-answer (or a Compare round stopped this side)
            self._log_failure(turn, Cancelled("The answer was cancelled before it was complete."))
            raise
        except TurnAudioError as err:  # not audio at all: its upload is not served back either
            self.forget_upload(inp)
            raise TurnFailed(self._log_failure(err.turn, err.error)) from err.error
        except Superseded as err:  # the generator above is dropped here, which stops the engine
            self.pool.forget(state.conversation.id)
            raise TurnSuperseded(self._log_failure(turn, err)) from None
        except Exception as err:  # noqa: BLE001 - every failure is logged and shown; the state stays
            if isinstance(err, AudioError) and inp.audio is not None:  # refused after all: not kept
                if turn.audio_path:
                    self.store.discard_audio(turn.audio_sha256, state.session)
                    turn = replace(turn, audio_path=None, audio_kept=False)
                self.forget_upload(inp)
            raise TurnFailed(self._log_failure(turn, err)) from err
        finally:  # "Keep my audio" off: no copy of it stays on the server once it was heard
            if inp.audio is not None and not settings.keep_audio:
                self.forget_upload(inp)
        yield done

    def forget_upload(self, inp: UserInput) -> list:
        """Remove the upload of `inp` and every cached copy of it (not the spoken examples)."""
        path = Path(inp.audio)
        digest = inp.clip.sha256 if inp.clip is not None else (content_sha256(path) if path.is_file() else None)
        return self.uploads.purge(digest, also=path)

    def is_current(self, state: ChatState) -> bool:
        """False once the conversation was reset or the session deleted."""
        return not self.retired.any(state.conversation.id, state.session)

    def _check_current(self, state: ChatState) -> None:
        if not self.is_current(state):
            raise Superseded("A new conversation was started (or the session's data deleted) during this answer.")

    def _finish(self, state, history, conv, turn: TurnRecord, response: Response, app_ttft) -> Progress:
        record = self.store.write(replace(turn, **response_fields(response), app_ttft_s=app_ttft))
        history = [*history, {"role": "assistant", "content": response.text}]
        index = len(history) - 1
        new = replace(state, conversation=conv.add_reply(response.text), history=tuple(history),
                      answers=state.answers + ((index, record["id"]),))
        details = {"turn_id": record["id"], "message_index": index, "model": turn.model,
                   "engine": turn.engine, "response": response.text,
                   "transcript_heard": response.transcript, "ttft_s": round(response.ttft_s, 3),
                   "app_ttft_s": round(app_ttft or 0.0, 3), "total_s": round(response.total_s, 3),
                   "tokens_per_s": round(response.tokens_per_s, 2), "new_tokens": response.new_tokens,
                   "notices": list(response.notices)}
        return Progress(history, new, status_line(turn.model, response), details, done=True, record=record)

    def _turn_record(self, state: ChatState, settings: ChatSettings, inp: UserInput, extra: dict) -> TurnRecord:
        return TurnRecord(session=state.session, conversation=state.conversation.id, turn_index=state.user_turns,
                          modality=inp.modality, instruction=inp.instruction.strip() if inp.audio else "",
                          text=inp.text.strip() if inp.audio is None else "", transcript=inp.transcript,
                          system_prompt=state.conversation.system, model=settings.model,
                          options=settings.options.to_dict(), extra=extra)

    def _take_audio(self, inp: UserInput, keep: bool, session: str,
                    turn: TurnRecord) -> tuple[TurnRecord, UserInput, str | None]:
        """Where audio enters: hash and probe it once (its `SpeechClip` travels in the turn from
        here on), describe it in the turn record, store it when the person agreed. Returns the
        record, the input with its clip, and the path to show. A failure is logged with the hash;
        only files that hold audio are stored (the probe refuses anything else)."""
        path = inp.audio
        if not Path(path).is_file():
            raise AudioError("not_found", "The audio did not arrive on the server; record or upload it again.")
        digest = inp.clip.sha256 if inp.clip is not None else content_sha256(path)
        turn = replace(turn, audio_sha256=digest, audio_name=Path(path).name, audio_kept=keep)
        try:
            info = probe(path)  # AudioError when it is not audio at all
        except AudioError as err:
            raise TurnAudioError(turn, err) from None
        turn = replace(turn, audio_duration_s=info.duration_s, audio_sample_rate=info.source_sample_rate,
                       audio_channels=info.source_channels, audio_codec=info.codec)
        try:
            if self.services.speech is not None:  # noise, music, hum: refused before any model hears it
                self.services.speech.check(load_audio(path))
        except AudioError as err:
            raise TurnAudioError(turn, err) from None
        clip = SpeechClip(str(path), digest, info.duration_s, info.source_sample_rate)
        stored = self.store.save_audio(path, session, digest) if keep else None
        turn = replace(turn, audio_path=stored.path if stored else None)
        return turn, replace(inp, clip=clip), str(self.store.data_dir / stored.path) if stored else None

    def _log_failure(self, turn: TurnRecord, err: Exception) -> str:
        user_error = isinstance(err, (ValueError, RuntimeError))  # AudioError, bad input, WeightsError
        message = str(err) if user_error else f"Something went wrong ({type(err).__name__}: {err})."
        if not user_error:
            log.exception("turn failed", exc_info=err)
        try:
            self.store.write(replace(turn, error=message, error_code=getattr(err, "code", type(err).__name__)))
        except (OSError, ValueError):  # disk full (NotSaved), or a session deleted meanwhile
            log.warning("could not log a failed turn", exc_info=True)
        return message

    # -- labels, reset, deletion
    def label(self, state: ChatState, index: int, verdict: str, reason: str = "",
              source: str = "chat") -> tuple[dict, ChatState]:
        """A label record on the answer shown at chatbot message `index` (negative: from the end);
        returns it with the state showing the new thumb."""
        index = int(index)
        if index < 0:
            index += len(state.history)
        turn_id = state.turn_id_at(index)
        if turn_id is None and index >= len(state.history):
            raise ValueError(f"Answer {index} is not finished yet (or not in this conversation); "
                             "rate it once it is complete.")
        if turn_id is None:
            raise ValueError(f"Message {index} is not an answer of this conversation; "
                             f"answers are at {[i for i, _ in state.answers] or 'no index yet'}.")
        record = self.store.label(state.session, turn_id, verdict, reason, annotator=state.annotator,
                                  source=source, message_index=index)
        return record, state.with_verdict(index, verdict)

    def reset(self, state: ChatState) -> ChatState:
        """A new conversation in the same session; the old one's KV cache is dropped (and an
        answer still running in it stops and writes nothing back)."""
        self.retired.retire(state.conversation.id)
        self.pool.forget(state.conversation.id)
        return ChatState(session=state.session, annotator=state.annotator,  # the persona stays
                         conversation=Conversation(system=state.conversation.system))

    def delete_session(self, state: ChatState) -> tuple[ChatState, Deletion]:
        """Delete everything this session logged (an answer still running stops); carry on as a new session."""
        self.retired.retire(state.conversation.id, state.session)
        self.pool.forget(state.conversation.id)
        deletion = self.store.delete_session(state.session)
        copies = [str(p) for h in deletion.audio_hashes for p in self.uploads.purge(h)]  # the web cache's too
        return ChatState(annotator=state.annotator), replace(deletion, copies_removed=tuple(copies))


def response_fields(response: Response) -> dict:
    """The turn record's fields that come from the engine's response."""
    return {"response": response.text, "transcript_heard": response.transcript, "ttft_s": response.ttft_s,
            "total_s": response.total_s, "new_tokens": response.new_tokens, "tokens_per_s": response.tokens_per_s,
            "prefill_tokens": response.prefill_tokens, "cached_tokens": response.cached_tokens,
            "finish_reason": response.finish_reason, "notices": list(response.notices)}


def status_line(model: str, response: Response) -> str:
    parts = [f"**{model}**"]
    if response.transcript is not None:
        parts.append(f"heard \u201c{response.transcript}\u201d")
    parts.append(f"first token {response.ttft_s:.2f} s")
    if response.tokens_per_s:
        parts.append(f"{response.tokens_per_s:.1f} tokens/s")
    return " · ".join(parts) + "".join(f"  \n{n}" for n in response.notices)
