"""Turns and conversations: plain, serializable data (no tensors).

A user turn is text, or speech (a `SpeechClip`, an optional known transcript, and an optional
instruction placed before the speech). Turns come in any order and any number. Engines keep
their caches outside these objects (see `engine.cache.ChatCache`), so a conversation can be saved,
copied and reloaded freely.

A `SpeechClip` is made once, where audio enters (the app, the CLI, `Conversation.add_speech`, the
evaluation reader): its content hash keys every cache, so no later layer reads the file to know
what it is.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Literal

from blsp_demo.files import content_sha256

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class SpeechClip:
    """An audio file as it entered: where it is and what it holds (its sha256). `sha256` is None
    for a path that was not a readable file; the engine then says so (AudioError "not_found")."""

    path: str
    sha256: str | None
    duration_s: float | None = None  # from the container, when the entry point probed it
    sample_rate: int | None = None  # the file's own rate (engines resample to 16 kHz)

    @classmethod
    def of(cls, path, sha256: str | None = None, **info) -> "SpeechClip":
        """The clip of a file, hashed here unless the caller already knows its hash."""
        path = str(path)
        if sha256 is None and Path(path).is_file():
            sha256 = content_sha256(path)
        return cls(path, sha256, **info)


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str = ""  # user text, the instruction before speech, or the assistant's reply
    clip: SpeechClip | None = None  # the audio of a speech turn
    transcript: str | None = None  # known transcript of the clip (used by the Text system)

    @property
    def audio(self) -> str | None:
        """The path of the speech turn's audio (None for a text turn)."""
        return self.clip.path if self.clip is not None else None

    @property
    def modality(self) -> Literal["speech", "text"]:
        return "speech" if self.clip is not None else "text"


@dataclass(frozen=True)
class Conversation:
    """An immutable conversation; `add_*` return a new one with the same id."""

    turns: tuple[Turn, ...] = ()
    system: str | None = None  # None: the template's default system prompt
    id: str = field(default_factory=lambda: uuid.uuid4().hex)

    def add(self, turn: Turn) -> "Conversation":
        return replace(self, turns=self.turns + (turn,))

    def add_text(self, text: str) -> "Conversation":
        return self.add(Turn("user", text=text))

    def add_speech(self, audio: "str | Path | SpeechClip", instruction: str = "",
                   transcript: str | None = None) -> "Conversation":
        clip = audio if isinstance(audio, SpeechClip) else SpeechClip.of(audio)
        return self.add(Turn("user", text=instruction, clip=clip, transcript=transcript))

    def add_reply(self, text: str) -> "Conversation":
        return self.add(Turn("assistant", text=text))

    def without_last(self) -> "Conversation":
        return replace(self, turns=self.turns[:-1])

    @property
    def last_user(self) -> Turn | None:
        users = [t for t in self.turns if t.role == "user"]
        return users[-1] if users else None

    def to_dict(self) -> dict:
        return {"id": self.id, "system": self.system, "turns": [asdict(t) for t in self.turns]}

    @classmethod
    def from_dict(cls, d: dict) -> "Conversation":
        return cls(turns=tuple(turn_from_dict(t) for t in d.get("turns", [])), system=d.get("system"),
                   id=d.get("id") or uuid.uuid4().hex)


def turn_from_dict(d: dict) -> Turn:
    """A turn from `asdict` (or from the older form that held only the audio's path)."""
    d = dict(d)
    clip, path = d.pop("clip", None), d.pop("audio", None)
    if clip is not None:
        clip = SpeechClip(**clip)
    elif path is not None:
        clip = SpeechClip.of(path)
    return Turn(**d, clip=clip)


def single_turn(text: str = "", audio: "str | SpeechClip | None" = None, instruction: str = "",
                transcript: str | None = None) -> Conversation:
    """The common case: one user turn, text or speech."""
    conv = Conversation()
    if audio is not None:
        return conv.add_speech(audio, instruction=instruction, transcript=transcript)
    return conv.add_text(f"{instruction}\n{text}".strip() if instruction else text)
