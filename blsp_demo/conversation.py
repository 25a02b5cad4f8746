"""Turns and conversations: plain, serializable data (no tensors).

A user turn is text, or speech (an audio file, an optional known transcript, and an optional
instruction placed before the speech). Turns come in any order and any number. Engines keep
their caches outside these objects (see `engine.ChatCache`), so a conversation can be saved,
copied and reloaded freely.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict, dataclass, field, replace
from typing import Literal

Role = Literal["user", "assistant"]


@dataclass(frozen=True)
class Turn:
    role: Role
    text: str = ""  # user text, the instruction before speech, or the assistant's reply
    audio: str | None = None  # path of the audio of a speech turn
    transcript: str | None = None  # known transcript of `audio` (used by the Text engine)

    @property
    def modality(self) -> Literal["speech", "text"]:
        return "speech" if self.audio is not None else "text"


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

    def add_speech(self, audio: str, instruction: str = "", transcript: str | None = None) -> "Conversation":
        return self.add(Turn("user", text=instruction, audio=str(audio), transcript=transcript))

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
        return cls(turns=tuple(Turn(**t) for t in d.get("turns", [])), system=d.get("system"),
                   id=d.get("id") or uuid.uuid4().hex)


def single_turn(text: str = "", audio: str | None = None, instruction: str = "",
                transcript: str | None = None) -> Conversation:
    """The common case: one user turn, text or speech."""
    conv = Conversation()
    if audio is not None:
        return conv.add_speech(audio, instruction=instruction, transcript=transcript)
    return conv.add_text(f"{instruction}\n{text}".strip() if instruction else text)
