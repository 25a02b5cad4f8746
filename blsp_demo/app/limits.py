"""Per-session admission: one turn at a time, a bounded number a minute.

The queue runs a few generations at once for everyone (`BLSP_CONCURRENCY`); without a limit one
client could submit hundreds of jobs and hold every slot. `SessionGate` refuses a session's extra
turns at once, with a message saying why and when to come back, so each refused job leaves its
queue slot in milliseconds. It is keyed by the client's session (Gradio's session hash), not by
the app's own session id, which does not exist yet when a new client fires many first requests.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable, Iterator


@dataclass(frozen=True)
class RateLimits:
    turns_per_minute: int = 20  # admitted turns per session in any `window_s`; 0: no limit
    window_s: float = 60.0
    one_at_a_time: bool = True  # a session's next turn waits until its current answer is done


class RateLimited(ValueError):
    """A turn refused by the gate; the message is for the person."""

    code = "rate_limited"


class SessionGate:
    """Admits turns per client key; `admit(key)` is a context manager held while the turn runs."""

    def __init__(self, limits: RateLimits = RateLimits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: set[str] = set()
        self._admitted: dict[str, deque[float]] = {}  # key -> admission times within the window

    def enter(self, key: str) -> str:
        """Admit one turn of `key` or raise RateLimited; pair with `leave(key)`."""
        with self._lock:
            now = self._clock()
            self._forget_before(now - self.limits.window_s)
            if self.limits.one_at_a_time and key in self._busy:
                raise RateLimited("This session is still waiting for an answer: send the next question "
                                  "once it is done.")
            recent = self._admitted.setdefault(key, deque())
            if self.limits.turns_per_minute and len(recent) >= self.limits.turns_per_minute:
                wait = math.ceil(recent[0] + self.limits.window_s - now)
                raise RateLimited(f"Slow down: this session asked {len(recent)} questions in the last "
                                  f"{self.limits.window_s:.0f} s (the limit is {self.limits.turns_per_minute}). "
                                  f"Try again in {max(1, wait)} s.")
            recent.append(now)
            self._busy.add(key)
        return key

    def leave(self, key: str) -> None:
        with self._lock:
            self._busy.discard(key)

    @contextlib.contextmanager
    def admit(self, key: str) -> Iterator[None]:
        self.enter(key)
        try:
            yield
        finally:
            self.leave(key)

    def _forget_before(self, cutoff: float) -> None:
        """Drop admissions older than the window (and keys with none left: no growth per visitor)."""
        for key in list(self._admitted):
            times = self._admitted[key]
            while times and times[0] <= cutoff:
                times.popleft()
            if not times and key not in self._busy:
                del self._admitted[key]


def release_before_last(steps, release: Callable[[], None]) -> Iterator:
    """Every step of `steps` (objects with a `done` flag); the finished one comes last, after
    `release()` has run, so a client may ask again as soon as it sees the answer. `release` runs
    whatever happens (a client that leaves mid-answer closes the generator)."""
    done = None
    try:
        for step in steps:
            if step.done:
                done = step
            else:
                yield step
    finally:
        steps.close()  # a client that left mid-answer: the inner generator logs what it must
        release()
    yield done
