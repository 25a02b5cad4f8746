"""The records of the data dir, one dataclass per kind, each with `to_json` / `from_json`.

On disk a record is one flat JSON object a line (`kind`, `id`, `ts`, `session`, then its fields),
as `pandas.read_json(lines=True)` reads it. Fields a reader does not know (written by a newer or
an older version, or per-feature extras such as a Compare round's `compare_side`) travel in
`extra`, so nothing on disk is lost by reading it.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import uuid
from dataclasses import dataclass, field
from typing import ClassVar


def new_id() -> str:
    return uuid.uuid4().hex


def now_iso() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat(timespec="microseconds")


@dataclass(frozen=True)
class Record:
    kind: ClassVar[str] = ""
    session: str = ""
    id: str = field(default_factory=new_id)
    ts: str = field(default_factory=now_iso)
    extra: dict = field(default_factory=dict)  # fields this version does not name

    def to_json(self) -> dict:
        d = {"kind": self.kind, "id": self.id, "ts": self.ts, "session": self.session}
        d.update({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                  if f.name not in ("id", "ts", "session", "extra")})
        return {**d, **self.extra}

    @classmethod
    def from_json(cls, d: dict) -> "Record":
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        return cls(**{k: v for k, v in d.items() if k in known},
                   extra={k: v for k, v in d.items() if k not in known and k != "kind"})


@dataclass(frozen=True)
class TurnRecord(Record):
    """One answered (or failed) user turn: what was asked, by which system, and what came back."""

    kind: ClassVar[str] = "turn"
    conversation: str | None = None
    turn_index: int | None = None
    modality: str | None = None  # vocab.MODALITIES
    instruction: str = ""
    text: str = ""
    transcript: str | None = None  # known transcript of the audio
    system_prompt: str | None = None  # the persona the turn was answered under (None: the model's own)
    audio_sha256: str | None = None
    audio_name: str | None = None
    audio_path: str | None = None  # audio/<sha256>.<ext> when kept
    audio_kept: bool | None = None
    audio_duration_s: float | None = None
    audio_sample_rate: int | None = None
    audio_channels: int | None = None
    audio_codec: str | None = None
    model: str | None = None
    model_id: str | None = None
    revision: str | None = None
    engine: str | None = None  # the system: blsp | llasm | cascade | ctc | text
    options: dict = field(default_factory=dict)
    response: str | None = None
    transcript_heard: str | None = None
    ttft_s: float | None = None
    total_s: float | None = None
    new_tokens: int | None = None
    tokens_per_s: float | None = None
    prefill_tokens: int | None = None
    cached_tokens: int | None = None
    finish_reason: str | None = None  # vocab.FINISH_REASONS
    notices: list = field(default_factory=list)
    app_ttft_s: float | None = None
    # spoken replies and hands-free turns (app/speech_out.py): from the end of the question (the end of
    # speech in hands-free mode) to the first answer token, and to the first spoken reply audio
    question_end_ttft_s: float | None = None
    first_audio_s: float | None = None
    reply_audio_path: str | None = None  # audio/<sha256>.wav of the spoken answer, when the audio is kept
    error: str | None = None  # the message shown, when the turn failed
    error_code: str | None = None  # vocab.ERROR_CODES (or an exception's class name)


@dataclass(frozen=True)
class LabelRecord(Record):
    kind: ClassVar[str] = "label"
    turn_id: str = ""
    verdict: str = ""  # vocab.LABEL_VERDICTS
    reason: str = ""
    annotator: str = ""  # "" = an anonymous session


@dataclass(frozen=True)
class JudgementRecord(Record):
    kind: ClassVar[str] = "judgement"
    turn_id: str = ""
    verdict: str | None = None  # vocab.JUDGE_VERDICTS (older judgements may say `acceptable: bool`)
    reason: str = ""
    judge_model: str = ""
    prompt_version: str = ""
    raw: str | None = None


@dataclass(frozen=True)
class VoteRecord(Record):
    kind: ClassVar[str] = "vote"
    choice: str = ""  # vocab.VOTE_CHOICES
    reason: str = ""
    annotator: str = ""


@dataclass(frozen=True)
class DeletionRecord(Record):
    kind: ClassVar[str] = "deletion"
    deleted_session: str = ""
    records_deleted: int = 0
    audio_removed: list = field(default_factory=list)


@dataclass(frozen=True)
class RejectedRecord(Record):
    """A request refused before any session saw it (an oversize upload); `session` is empty."""

    kind: ClassVar[str] = "rejected"
    what: str = ""
    status: int = 0
    reason: str = ""


RECORD_TYPES: dict[str, type[Record]] = {
    cls.kind: cls for cls in (TurnRecord, LabelRecord, JudgementRecord, VoteRecord, DeletionRecord, RejectedRecord)}


def record_from_json(d: dict) -> Record:
    """The dataclass of a record read from disk (by its `kind`)."""
    kind = d.get("kind")
    if kind not in RECORD_TYPES:
        raise ValueError(f"unknown record kind {kind!r}; expected one of {tuple(RECORD_TYPES)}")
    return RECORD_TYPES[kind].from_json(d)
