"""Who labels: an annotator's name for a session, and who may use the Annotate and Dashboard tabs.

A host sets, in the environment,
    BLSP_ANNOTATORS          comma-separated names allowed to annotate (case-insensitive)
    BLSP_ANNOTATE_PASSCODE   a passcode shared by the labelling team
Either or both make the Annotate and Dashboard tabs private; with neither, anyone may label
(under a typed name, or anonymously). On a Space with OAuth the logged-in Hugging Face user is the
name (checked against BLSP_ANNOTATORS the same way).
"""

from __future__ import annotations

import hmac
import os
import re
from dataclasses import dataclass

MAX_NAME_CHARS = 64
_NAME = re.compile(r"^[\w.@+\- ]+$")


class NotAllowed(ValueError):
    """The name or passcode does not open the Annotate and Dashboard tabs."""


def clean_name(name: str | None) -> str:
    """A name as recorded: trimmed, inner spaces collapsed; ValueError when it cannot be one."""
    name = " ".join(str(name or "").split())
    if not name:
        raise ValueError("Type your name (it goes on every label you give).")
    if len(name) > MAX_NAME_CHARS:
        raise ValueError(f"A name is at most {MAX_NAME_CHARS} characters; got {len(name)}.")
    if not _NAME.match(name):
        raise ValueError("A name may use letters, digits, spaces and . _ - @ + only.")
    return name


@dataclass(frozen=True)
class Roles:
    allowed: tuple[str, ...] = ()  # lower-cased; empty: any name
    passcode: str = ""  # empty: none needed

    @classmethod
    def from_env(cls) -> "Roles":
        names = os.environ.get("BLSP_ANNOTATORS", "")
        allowed = tuple(n.strip().lower() for n in names.split(",") if n.strip())
        return cls(allowed, os.environ.get("BLSP_ANNOTATE_PASSCODE", "").strip())

    @property
    def private(self) -> bool:
        """Whether the Annotate and Dashboard tabs need a known annotator."""
        return bool(self.allowed or self.passcode)

    def sign_in(self, name: str | None, passcode: str | None = "", oauth: bool = False) -> str:
        """The annotator's recorded name, or NotAllowed / ValueError with what to do.
        A name from OAuth (the Hub login) needs no passcode."""
        name = clean_name(name)
        if self.allowed and name.lower() not in self.allowed:
            raise NotAllowed(f"{name!r} is not on this Space's list of annotators (BLSP_ANNOTATORS); "
                             "ask the host to add you.")
        if self.passcode and not oauth and not hmac.compare_digest(
                (passcode or "").strip().encode(), self.passcode.encode()):
            raise NotAllowed("Wrong passcode: ask the host of this Space for the labelling team's passcode.")
        return name

    def admits(self, annotator: str | None) -> bool:
        """Whether a session signed in as `annotator` ("" = nobody) may use the private tabs."""
        return not self.private or bool(annotator)


def who(record: dict) -> str:
    """The annotator a label or vote counts for: its `annotator`, else its anonymous session
    (labels written before annotators existed have none)."""
    return record.get("annotator") or f"anonymous:{str(record.get('session') or '')[:8]}"
