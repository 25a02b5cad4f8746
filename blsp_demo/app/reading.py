"""Reading the data dir's records: every records file, bad lines skipped and reported.

A reader never fails a whole view for one bad line: a torn last line (a crash mid-write), damage,
or a record holding text that is not valid Unicode (a lone surrogate written by an older version)
is skipped and listed in `ReadResult.bad_lines`. `store.py` re-exports these names.
"""

from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from blsp_demo.app.text import is_valid_unicode

log = logging.getLogger(__name__)

RECORDS_DIR = "records"


@dataclass(frozen=True)
class BadLine:
    """A line that is not a JSON object: a torn last line after a crash, or damage."""

    path: Path
    line_no: int  # 1-based
    torn: bool  # the file's last line, without its newline: a write cut short
    excerpt: str

    def __str__(self) -> str:
        what = "torn last line" if self.torn else "unreadable line"
        return f"{self.path.name}:{self.line_no}: {what} skipped ({self.excerpt!r})"


@dataclass(frozen=True)
class ReadResult:
    records: list[dict]
    bad_lines: list[BadLine]


def records_files(data_dir: Path | str) -> list[Path]:
    return sorted((Path(data_dir) / RECORDS_DIR).glob("*.jsonl"))


_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")  # a JSON escape of a surrogate half


def read_file(path: Path) -> ReadResult:
    data = path.read_bytes()
    lines = data.split(b"\n")
    records, bad = [], []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        torn = i == len(lines) - 1  # no newline after it
        try:
            obj = json.loads(raw)
            if not isinstance(obj, dict):
                raise ValueError("not an object")
            if _SURROGATE_ESCAPE.search(raw) and not is_valid_unicode(json.dumps(obj, ensure_ascii=False)):
                raise ValueError("not valid Unicode")  # written by an older version: no view may choke on it
        except ValueError:
            bad.append(BadLine(path, i + 1, torn, raw[:60].decode("utf-8", "replace")))
            continue
        records.append(obj)
    return ReadResult(records, bad)


def read_records(data_dir: Path | str) -> ReadResult:
    """Every record of every records file, oldest first; bad lines are skipped and listed."""
    records, bad = [], []
    for path in records_files(data_dir):
        result = read_file(path)
        records += result.records
        bad += result.bad_lines
    for line in bad:
        log.warning("%s", line)
    records.sort(key=lambda r: str(r.get("ts", "")))
    return ReadResult(records, bad)


def deleted_sessions(records: Iterable[dict]) -> set[str]:
    return {r.get("deleted_session") or r["session"] for r in records if r.get("kind") == "deletion"}


def live_records(records: list[dict]) -> list[dict]:
    """The records a reader should use: those of deleted sessions, and labels and judgements
    on their turns, are left out (the deletion records themselves stay)."""
    gone = deleted_sessions(records)
    if not gone:
        return list(records)
    gone_turns = {r["id"] for r in records if r.get("kind") == "turn" and r.get("session") in gone}
    return [r for r in records if r.get("kind") == "deletion"
            or (r.get("session") not in gone and r.get("turn_id") not in gone_turns)]


