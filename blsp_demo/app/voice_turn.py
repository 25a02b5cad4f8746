"""A turn of the voice assistant, without the UI: `Chat.answer` with the answer spoken sentence by
sentence (`speech_out.SpokenReply`), the spoken answer kept only under the session's consent, and
the latencies from the end of the question.

    for step in spoken_turn(chat, state, settings, inp, reply, client):
        step.progress   # what the chat shows (session.Progress)
        step.audio      # sentences synthesized since the last step (speech_out.SpokenChunk)
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

from blsp_demo.app.records import new_id
from blsp_demo.app.session import Chat, ChatSettings, ChatState, Progress, UserInput
from blsp_demo.app.speech_out import Espeak, SpokenChunk, SpokenReply, join_wavs
from blsp_demo.app.store import Store


@dataclass(frozen=True)
class VoiceStep:
    progress: Progress
    audio: list[SpokenChunk]


def keeper(store: Store, session: str) -> Callable[[bytes], str]:
    """Stores a spoken answer under `audio/<sha256>.wav` for `session` (deleted with its data)."""
    def keep(wav: bytes) -> str:
        with tempfile.TemporaryDirectory(prefix="blsp-reply-") as folder:
            path = Path(folder) / f"reply-{new_id()[:8]}.wav"
            path.write_bytes(wav)
            return store.save_audio(path, session).path
    return keep


def new_reply(chat: Chat, state: ChatState, settings: ChatSettings, question_end: float,
              tts: Espeak | None) -> SpokenReply:
    """A reply for this session (spoken by `tts`; None: only timed), its audio kept only when the
    person keeps their audio."""
    keep = keeper(chat.store, state.session) if settings.keep_audio and tts is not None else None
    return SpokenReply(tts, question_end, keep=keep)


def spoken_turn(chat: Chat, state: ChatState, settings: ChatSettings, inp: UserInput, reply: SpokenReply | None,
                client: str | None = None, extra: dict | None = None) -> Iterator[VoiceStep]:
    """`Chat.answer`, with the sentences spoken as they complete (none when `reply` is None).
    Raises what `Chat.answer` raises (TurnFailed); a closed generator (barge-in, the client left)
    stops the synthesizer, and `Chat.answer` records the turn as cancelled."""
    try:
        for step in chat.answer(state, settings, inp, extra=extra, client=client, listener=reply):
            yield VoiceStep(step, reply.ready() if reply is not None else [])
    finally:
        if reply is not None:
            reply.stop()


def latency_line(fields: dict, spoken_question: bool) -> str:
    """'end of speech -> first token 0.84 s · -> first audio 1.02 s' (what is known)."""
    start = "end of speech" if spoken_question else "question"
    parts = []
    if fields.get("question_end_ttft_s") is not None:
        parts.append(f"{start} \u2192 first token {fields['question_end_ttft_s']:.2f} s")
    if fields.get("first_audio_s") is not None:
        parts.append(f"\u2192 first audio {fields['first_audio_s']:.2f} s")
    return " \u00b7 ".join(parts)


def joined(chunks: list[SpokenChunk]) -> tuple[bytes | None, float]:
    """The sentences of one step as one WAV (what the streaming player gets), and its length."""
    if not chunks:
        return None, 0.0
    return join_wavs([c.wav for c in chunks]), sum(c.duration_s for c in chunks)
