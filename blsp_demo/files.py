"""Small file helpers every layer uses: content hashes and JSON-lines files."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Union

PathLike = Union[str, "os.PathLike[str]"]


def content_sha256(source: PathLike | bytes) -> str:
    """Hex sha256 of a file's content, or of bytes: the name audio is stored under, and the check
    of every weight file."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        return hashlib.sha256(source).hexdigest()
    with open(source, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def read_jsonl(path: PathLike) -> list[dict]:
    """Every whole JSON object line of `path` ([] when it does not exist); a torn line (a writer
    killed mid-write) is skipped. The app's record log has a reader of its own that also reports
    what it skipped (`app.store.read_records`)."""
    path = Path(path)
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if isinstance(obj, dict):
            out.append(obj)
    return out
