"""Durable logs: append-only JSONL records, and audio files stored once by content hash.

A data dir holds
    records/<date>-<writer>.jsonl   one JSON object a line; each process appends to a file of its own
    audio/<sha256>.<ext>            every distinct audio file once, whoever sent it
    recovered/                      torn tails cut from the files of crashed writers (kept, not read)

Every record has `kind`, `id`, `ts` (ISO 8601, UTC) and `session`:
- `turn`: one answered (or failed) user turn, with its audio, settings, response and timings;
- `label`: a human verdict (`accept` | `reject` | `unset` to retract) on a turn, by `turn_id`;
- `judgement`: an LLM judge's verdict on a turn, by `turn_id` (written by the evaluation code);
- `vote`: a Compare round's verdict (`choice` A | B | tie | both_bad, `reason`) on two answers to
  the same question: both models (`model_a`, `model_b`), the `winner`, the round id, and both
  turns (`turn_ids`, and a copy of each turn record in `turns`);
- `deletion`: the person of `deleted_session` asked for their data to be deleted: readers treat
  every record of that session, and every label or judgement on its turns, as deleted;
- `rejected`: a request refused before any session saw it (`what`: upload, `status`, `reason`,
  `bytes`); its `session` is empty.

Writes are one line each, under a lock (the CommitScheduler's when pushing to the Hub, so a push
never sees half a line), flushed and fsynced before the call returns: a record whose write
returned survives a crash of the process or the machine. A crash mid-write leaves a torn last line;
readers skip and report it, and the next `Store` on the directory moves it to `recovered/`.
A write lands whole or not at all: on a full disk the partial line is cut back at once (and
again before the next append, should that fail too) and the caller gets `NotSaved`; writes are
unbuffered, so a record the caller was told failed is never written later.
`pandas.read_json(path, lines=True)` reads every records file.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import threading
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Iterable

from blsp_demo.app.records import (RECORD_TYPES, DeletionRecord, LabelRecord, Record, VoteRecord, new_id,
                                   now_iso)
from blsp_demo.app.reading import (RECORDS_DIR, BadLine, ReadResult, deleted_sessions,  # noqa: F401
                                   live_records, read_file, read_records, records_files)
from blsp_demo.app.text import user_text, valid_text
from blsp_demo.vocab import LABEL_VERDICTS, VERDICTS, VOTE_CHOICES

log = logging.getLogger(__name__)

AUDIO_DIR = "audio"
RECOVERED_DIR = "recovered"
# Stored audio is served back to the browser (inline, typed by its extension), so only media
# extensions are kept: an upload named page.html or x.svg is stored as .bin, never served as a page.
MEDIA_EXTS = frozenset({"wav", "wave", "flac", "mp3", "ogg", "oga", "opus", "webm", "weba", "m4a", "mp4",
                        "aac", "aif", "aiff", "caf", "w64", "wma", "amr", "mka", "mkv", "mov", "3gp"})

try:  # advisory locks tell a live writer's file from a crashed one's (POSIX only)
    import fcntl
except ImportError:  # Windows: torn tails are still skipped by readers, just not moved away
    fcntl = None


# ---- writing ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class StoredAudio:
    sha256: str
    path: str  # relative to the data dir: audio/<sha256>.<ext>


@dataclass(frozen=True)
class Deletion:
    record: dict
    records_deleted: int
    audio_removed: list[str]
    audio_hashes: tuple[str, ...] = ()  # every audio of the session no other session sent (kept or not)
    copies_removed: tuple[str, ...] = ()  # the web framework's cached copies (`uploads.UploadCache`)


def audio_ext(path: str | Path) -> str:
    ext = Path(path).suffix.lower().lstrip(".")
    return ext if ext in MEDIA_EXTS else "bin"


def json_line(record: dict) -> bytes:
    """One record as a UTF-8 JSON line. Text is validated where it enters (`app.text`); a lone
    surrogate that slipped past (no encoder takes it) becomes U+FFFD here, never an unreadable line."""
    return (valid_text(json.dumps(record, ensure_ascii=False, default=str)) + "\n").encode("utf-8")


class DataDirError(RuntimeError):
    """The data dir cannot be created or written; the message says what to do."""


class NotSaved(ValueError):
    """A record could not be written (disk full, read-only): nothing of it is on disk."""

    code = "not_saved"


class Store:
    """Appends records to this process's own file in `data_dir/records/` and keeps audio files.

    `lock` serializes writes with a reader of the directory (the Hub push's `scheduler.lock`).
    """

    def __init__(self, data_dir: Path | str, lock: threading.Lock | None = None):
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.records_dir = self.data_dir / RECORDS_DIR
        self.audio_dir = self.data_dir / AUDIO_DIR
        try:
            for folder in (self.records_dir, self.audio_dir):
                folder.mkdir(parents=True, exist_ok=True)
                if not os.access(folder, os.W_OK | os.X_OK):
                    raise PermissionError(13, "not writable", str(folder))
        except OSError as err:
            raise DataDirError(f"The data dir {self.data_dir} cannot be used: {err.strerror or err} "
                               f"({err.filename or folder}). Choose a writable folder with --data-dir or "
                               "BLSP_DATA_DIR.") from err
        self.lock = lock or threading.Lock()
        stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%S")
        self.path = self.records_dir / f"{stamp}-{new_id()[:8]}.jsonl"
        self._file = None  # opened on the first write, held (and flock-ed) while this process lives
        self._audio_users: dict[str, set[str]] = {}  # sha256 -> sessions that saved it in this process
        self._deleted: set[str] = set()  # sessions deleted in this process: later records are refused
        self._end = 0  # the size of this process's file after its last whole line
        self.recovered = recover_torn_tails(self.data_dir)

    # -- records
    def append(self, kind: str, session: str, **fields) -> dict:
        """Write a record of `kind` with these fields (see `records`); returns it as written."""
        if kind not in RECORD_TYPES:
            raise ValueError(f"unknown record kind {kind!r}; expected one of {tuple(RECORD_TYPES)}")
        return self.write(RECORD_TYPES[kind].from_json({**fields, "session": session}))

    def write(self, record: Record) -> dict:
        """Write one record (stamped now) and return its JSON object once it is on disk. A write
        lands whole or not at all: on failure (disk full) the partial line is cut back and
        NotSaved says so. A record of a session deleted in this process is refused (NotSaved)."""
        if record.session and record.kind != "deletion" and record.session in self._deleted:
            raise NotSaved("This session's data was deleted; nothing more is saved for it. "
                           "You are in a new session now: ask again.")
        record = replace(record, id=new_id(), ts=now_iso())
        record = record.to_json()
        line = json_line(record)
        with self.lock:
            try:
                f = self._open()
                self._append_whole(f, line)
            except OSError as err:
                log.error("%s: record not saved (%s)", self.path.name, err)
                raise NotSaved(f"Nothing was saved: the server could not write its log ({err.strerror or err}). "
                               "Try again later; the host has been told.") from err
        if record["kind"] == "deletion":
            self._deleted.add(record["deleted_session"])
        return record

    def _append_whole(self, f, line: bytes) -> None:
        """Append `line` to the unbuffered `f` (under the lock), first cutting back a tail a
        failed write left; on failure, cut back again (what is not cut now is cut next time)."""
        if os.fstat(f.fileno()).st_size != self._end:
            os.ftruncate(f.fileno(), self._end)
        try:
            view = memoryview(line)
            while view:
                view = view[f.write(view):]
            os.fsync(f.fileno())
        except OSError:
            with contextlib.suppress(OSError):
                os.ftruncate(f.fileno(), self._end)
                os.fsync(f.fileno())
            raise
        self._end += len(line)

    def _open(self):
        if self._file is None:
            self._file = open(self.path, "ab", buffering=0)  # unbuffered: nothing failed is written later
            if fcntl is not None:
                fcntl.flock(self._file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            self._end = os.fstat(self._file.fileno()).st_size
        return self._file

    def close(self) -> None:
        with self.lock:
            if self._file is not None:
                self._file.close()
                self._file = None

    def label(self, session: str, turn_id: str, verdict: str, reason: str = "", annotator: str = "",
              **extra) -> dict:
        if verdict not in LABEL_VERDICTS:
            raise ValueError(f"verdict must be one of {', '.join(LABEL_VERDICTS)}; got {verdict!r}")
        if not turn_id:
            raise ValueError("a label needs the id of the turn it is about")
        return self.write(LabelRecord(session=session, turn_id=turn_id, verdict=verdict,
                                      reason=user_text(reason, "reason"), annotator=user_text(annotator, "name"),
                                      extra=extra))

    def vote(self, session: str, choice: str, reason: str = "", annotator: str = "", **extra) -> dict:
        if choice not in VOTE_CHOICES:
            raise ValueError(f"a vote is one of {', '.join(VOTE_CHOICES)}; got {choice!r}")
        return self.write(VoteRecord(session=session, choice=choice, reason=user_text(reason, "reason"),
                                     annotator=user_text(annotator, "name"), extra=extra))

    def read(self) -> ReadResult:
        return read_records(self.data_dir)

    # -- audio
    def save_audio(self, source: str | Path, session: str, sha256: str | None = None) -> StoredAudio:
        """Keep a copy of `source` under its content hash (once, whoever sends it again)."""
        from blsp_demo.files import content_sha256

        digest = sha256 or content_sha256(source)
        rel = f"{AUDIO_DIR}/{digest}.{audio_ext(source)}"
        dest = self.data_dir / rel
        with self.lock:
            self._audio_users.setdefault(digest, set()).add(session)
            if dest.exists():
                return StoredAudio(digest, rel)
        tmp = dest.with_name(f".{digest}.{new_id()[:8]}.tmp")  # copied outside the lock, renamed inside
        shutil.copyfile(source, tmp)
        with self.lock:
            os.replace(tmp, dest)
        return StoredAudio(digest, rel)

    def discard_audio(self, sha256: str, session: str) -> bool:
        """Remove the audio `session` saved under `sha256` when it was refused after all (empty,
        too long), unless another session keeps the same file. True when it was removed."""
        others = {r.get("audio_sha256") for r in live_records(self.read().records)
                  if r.get("kind") == "turn" and r.get("session") != session and r.get("audio_path")}
        with self.lock:
            users = self._audio_users.get(sha256, set())
            users.discard(session)
            if users or sha256 in others:
                return False
            removed = False
            for path in self.audio_dir.glob(f"{sha256}.*"):
                path.unlink(missing_ok=True)
                removed = True
            return removed

    # -- deletion
    def delete_session(self, session: str) -> Deletion:
        """Remove the session's audio (unless another session uses the same file) and write a
        `deletion` record, after which readers treat the session's records as deleted."""
        records = live_records(self.read().records)
        mine = [r for r in records if r.get("session") == session and r.get("kind") != "deletion"]
        with self.lock:  # no save_audio of this process may slip between the check and the unlink
            shared = {h for h, users in self._audio_users.items() if users - {session}}
            shared |= {r.get("audio_sha256") for r in records
                       if r.get("kind") == "turn" and r.get("session") != session and r.get("audio_path")}
            shared |= {Path(r["reply_audio_path"]).stem for r in records  # spoken answers (app/speech_out.py)
                       if r.get("kind") == "turn" and r.get("session") != session and r.get("reply_audio_path")}
            paths = sorted({r["audio_path"] for r in mine if r.get("kind") == "turn" and r.get("audio_path")
                            and r.get("audio_sha256") not in shared}
                           | {r["reply_audio_path"] for r in mine if r.get("kind") == "turn" and r.get("reply_audio_path")
                              and Path(r["reply_audio_path"]).stem not in shared})
            hashes = tuple(sorted({r["audio_sha256"] for r in mine if r.get("kind") == "turn"
                                   and r.get("audio_sha256") and r["audio_sha256"] not in shared}))
            for users in self._audio_users.values():
                users.discard(session)
        record = self.write(DeletionRecord(session=session, deleted_session=session, records_deleted=len(mine),
                                           audio_removed=paths))
        with self.lock:
            for rel in paths:
                with contextlib.suppress(FileNotFoundError):
                    (self.data_dir / rel).unlink()
        return Deletion(record, len(mine), paths, hashes)


def recover_torn_tails(data_dir: Path) -> list[Path]:
    """Make the files of crashed writers whole JSONL again: a torn last line moves to
    `recovered/` (a complete one only gets its newline). Files held by a live writer (flock)
    are left alone. Returns the recovered fragments."""
    if fcntl is None:
        return []
    moved = []
    for path in records_files(data_dir):
        with open(path, "r+b") as f:
            size = f.seek(0, os.SEEK_END)
            if size == 0 or (f.seek(size - 1), f.read(1))[1] == b"\n":
                continue
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # a live writer is in the middle of a line
            moved += _repair_tail(f, path, Path(data_dir))
    return moved


def _repair_tail(f, path: Path, data_dir: Path) -> list[Path]:
    f.seek(0)
    data = f.read()
    cut = data.rfind(b"\n") + 1
    tail = data[cut:]
    with contextlib.suppress(ValueError):
        if isinstance(json.loads(tail), dict):  # whole record, only its newline missing
            f.write(b"\n")
            f.flush()
            os.fsync(f.fileno())
            return []
    keep = data_dir / RECOVERED_DIR / f"{path.stem}.{cut}.txt"
    keep.parent.mkdir(exist_ok=True)
    keep.write_bytes(tail)
    f.truncate(cut)
    f.flush()
    os.fsync(f.fileno())
    log.warning("%s: moved a torn last line (%d bytes) to %s", path.name, len(tail), keep)
    return [keep]


# ---- tables ----------------------------------------------------------------------------------
ANSWER_COLUMNS = ["turn_id", "ts", "session", "conversation", "turn_index", "model", "model_id", "engine",
                  "modality", "instruction", "question", "response", "transcript", "transcript_heard",
                  "audio_path", "ttft_s", "total_s", "tokens_per_s", "new_tokens", "label", "label_reason",
                  "label_ts", "judge", "judge_reason"]


def latest_verdicts(records: Iterable[dict], kind: str) -> dict[str, dict]:
    """turn_id -> the latest `kind` record about it whose verdict still stands (unset retracts a
    label; a judgement that could not judge does not hide an earlier verdict)."""
    latest: dict[str, dict] = {}
    for r in sorted((r for r in records if r.get("kind") == kind), key=lambda r: str(r.get("ts"))):
        if kind == "judgement" and verdict_of(r) not in VERDICTS:
            continue
        latest[r["turn_id"]] = r
    return {t: r for t, r in latest.items() if verdict_of(r) in VERDICTS}


def verdict_of(record: dict) -> str | None:
    """`verdict` (accept|reject|unset); judgements may say `acceptable: bool` instead."""
    if record.get("verdict"):
        return str(record["verdict"])
    if isinstance(record.get("acceptable"), bool):
        return "accept" if record["acceptable"] else "reject"
    return None


def question_of(turn: dict) -> str:
    """What was asked, in words: the typed text, or the transcript (known, else heard)."""
    if turn.get("modality") == "text":
        return turn.get("text") or ""
    spoken = turn.get("transcript") or turn.get("transcript_heard") or "(speech)"
    return f"{turn['instruction']} {spoken}".strip() if turn.get("instruction") else spoken


def answers_frame(records: list[dict]):
    """One row per answered turn (not deleted, not failed) with its human label and judge verdict."""
    import pandas as pd

    records = live_records(records)
    labels, judged = latest_verdicts(records, "label"), latest_verdicts(records, "judgement")
    rows = []
    for t in records:
        if t.get("kind") != "turn" or t.get("error"):
            continue
        lab, jud = labels.get(t["id"], {}), judged.get(t["id"], {})
        rows.append({**{k: t.get(k) for k in ANSWER_COLUMNS}, "turn_id": t["id"], "question": question_of(t),
                     "label": verdict_of(lab) if lab else None, "label_reason": lab.get("reason"),
                     "label_ts": lab.get("ts"), "judge": verdict_of(jud) if jud else None,
                     "judge_reason": jud.get("reason")})
    return pd.DataFrame(rows, columns=ANSWER_COLUMNS)


VOTE_COLUMNS = ["vote_id", "ts", "session", "round", "model_a", "model_b", "choice", "winner", "reason",
                "modality", "question", "drawn", "source"]


def votes_frame(records: list[dict]):
    """One row per voted Compare round (not deleted; the latest vote if a round has several)."""
    import pandas as pd

    latest: dict[str, dict] = {}
    for v in sorted((r for r in live_records(records) if r.get("kind") == "vote"), key=lambda r: str(r.get("ts"))):
        latest[v.get("round") or v["id"]] = v
    rows = [{**{k: v.get(k) for k in VOTE_COLUMNS}, "vote_id": v["id"]} for v in latest.values()]
    return pd.DataFrame(rows, columns=VOTE_COLUMNS)
