"""Admission: one turn at a time per session, a bounded number a minute and at once per client.

The queue runs a few generations at once for everyone (`BLSP_CONCURRENCY`); without a limit one
client could submit hundreds of jobs and hold every slot. `SessionGate` refuses extra turns at
once, with a message saying why and when to come back, so each refused job leaves its queue slot
in milliseconds. A session (Gradio's session hash) gets one turn at a time; but the hash is chosen
by the client, so the per-minute and at-once limits count what the client cannot choose
(`ClientKey.counted`): the logged-in user, else the connection's address, or behind a proxy the
host trusts (`BLSP_FORWARDED_HOPS`) the address that proxy forwarded.

Environment (`RateLimits.from_env`): BLSP_TURNS_PER_MINUTE (20), BLSP_TURNS_AT_ONCE (1 per
client, one less than the queue's 2 generations at once, so one client never holds every slot
while its other jobs wait in the queue; 0: no limit), BLSP_LIMIT_BY (`address`, the default, or `session`), BLSP_FORWARDED_HOPS
(0: X-Forwarded-For is ignored; N: the address N proxies from the right, e.g. 1 on a Space).
"""

from __future__ import annotations

import contextlib
import math
import os
import threading
import time
from collections import deque
from dataclasses import dataclass, replace
from typing import Callable, Iterator


@dataclass(frozen=True)
class RateLimits:
    turns_per_minute: int = 20  # admitted turns per client (see `limit_by`) in any `window_s`; 0: no limit
    window_s: float = 60.0
    one_at_a_time: bool = True  # a session's next turn waits until its current answer is done
    at_once: int = 1  # turns of one client answered at the same time (its sessions together); 0: no limit
    limit_by: str = "address"  # what the per-minute and at-once limits count: address | session
    forwarded_hops: int = 0  # trusted proxies in front of the app: 0, X-Forwarded-For is ignored

    @classmethod
    def from_env(cls, environ=os.environ, **overrides) -> "RateLimits":
        def num(name, default):
            return int(environ.get(name) or default)

        base = cls(turns_per_minute=num("BLSP_TURNS_PER_MINUTE", 20), at_once=num("BLSP_TURNS_AT_ONCE", 1),
                   limit_by=environ.get("BLSP_LIMIT_BY") or "address",
                   forwarded_hops=num("BLSP_FORWARDED_HOPS", 0))
        if base.limit_by not in ("address", "session"):
            raise ValueError(f"BLSP_LIMIT_BY is address or session, not {base.limit_by!r}")
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})


@dataclass(frozen=True)
class ClientKey:
    """Who asks, as the request tells it: the session hash (the client's choice), the connection's
    address, the X-Forwarded-For header, the logged-in user."""

    session: str | None = None
    host: str | None = None
    forwarded_for: str = ""
    user: str | None = None

    def address(self, hops: int) -> str | None:
        """The connection's address; with `hops` trusted proxies, the one the outermost of them saw."""
        if hops > 0:
            chain = [a.strip() for a in self.forwarded_for.split(",") if a.strip()]
            if len(chain) >= hops:
                return chain[-hops]
        return self.host

    def counted(self, limits: RateLimits) -> str | None:
        """The key the per-minute and at-once limits count."""
        if limits.limit_by == "session":
            return self.session
        if self.user:
            return f"user:{self.user}"
        address = self.address(limits.forwarded_hops)
        return f"addr:{address}" if address else self.session


def as_client(client: "ClientKey | str") -> ClientKey:
    return client if isinstance(client, ClientKey) else ClientKey(session=client)


class RateLimited(ValueError):
    """A turn refused by the gate; the message is for the person."""

    code = "rate_limited"


class SessionGate:
    """Admits turns per client (a `ClientKey`, or a session key as a string); `admit(client)` is a
    context manager held while the turn runs."""

    def __init__(self, limits: RateLimits = RateLimits(), clock: Callable[[], float] = time.monotonic):
        self.limits = limits
        self._clock = clock
        self._lock = threading.Lock()
        self._busy: set[str] = set()  # sessions with a turn running
        self._running: dict[str, int] = {}  # counted key -> its turns running
        self._admitted: dict[str, deque[float]] = {}  # counted key -> admission times within the window

    def enter(self, client: "ClientKey | str") -> tuple[str | None, str | None]:
        """Admit one turn of `client` or raise RateLimited; pair with `leave(what enter returned)`."""
        client = as_client(client)
        session, counted = client.session, client.counted(self.limits)
        who = "this session" if counted == session else "your connection"
        with self._lock:
            now = self._clock()
            self._forget_before(now - self.limits.window_s)
            if self.limits.one_at_a_time and session in self._busy:
                raise RateLimited("This session is still waiting for an answer: send the next question "
                                  "once it is done.")
            if self.limits.at_once and counted is not None and self._running.get(counted, 0) >= self.limits.at_once:
                raise RateLimited(f"Wait for an answer: {who} already has {self.limits.at_once} "
                                  f"question{'s' if self.limits.at_once > 1 else ''} being answered.")
            recent = self._admitted.setdefault(counted, deque())
            if self.limits.turns_per_minute and len(recent) >= self.limits.turns_per_minute:
                wait = math.ceil(recent[0] + self.limits.window_s - now)
                raise RateLimited(f"Slow down: {who} asked {len(recent)} questions in the last "
                                  f"{self.limits.window_s:.0f} s (the limit is {self.limits.turns_per_minute}). "
                                  f"Try again in {max(1, wait)} s.")
            recent.append(now)
            if session is not None:
                self._busy.add(session)
            self._running[counted] = self._running.get(counted, 0) + 1
        return session, counted

    def leave(self, admitted: tuple[str | None, str | None]) -> None:
        session, counted = admitted
        with self._lock:
            self._busy.discard(session)
            left = self._running.get(counted, 0) - 1
            if left > 0:
                self._running[counted] = left
            else:
                self._running.pop(counted, None)

    @contextlib.contextmanager
    def admit(self, client: "ClientKey | str") -> Iterator[None]:
        admitted = self.enter(client)
        try:
            yield
        finally:
            self.leave(admitted)

    def _forget_before(self, cutoff: float) -> None:
        """Drop admissions older than the window (and keys with none left: no growth per visitor)."""
        for key in list(self._admitted):
            times = self._admitted[key]
            while times and times[0] <= cutoff:
                times.popleft()
            if not times and key not in self._running:
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


class Retired:
    """Conversations and sessions ended under a running answer (reset, "Delete my data"): the
    answer checks here before each step it shows and before it writes, and stops (its state is
    never written back). Bounded: the oldest of `max_entries` are forgotten first."""

    def __init__(self, max_entries: int = 100_000):
        self._lock = threading.Lock()
        self._keys: dict[str, None] = {}  # insertion-ordered
        self.max_entries = max_entries

    def retire(self, *keys: str) -> None:
        with self._lock:
            for key in keys:
                if key:
                    self._keys[key] = None
            while len(self._keys) > self.max_entries:
                del self._keys[next(iter(self._keys))]

    def any(self, *keys: str) -> bool:
        with self._lock:
            return any(key in self._keys for key in keys)


DEFAULT_CACHE_MB = 1024  # KV caches of all conversations of one engine; BLSP_MAX_CACHE_MB (0: by count only)


def engine_limits_from_env(environ=os.environ):
    """The engines' limits the app loads them with: the conversations' KV caches bounded by bytes
    (`BLSP_MAX_CACHE_MB`) as well as by count (`BLSP_MAX_CACHED_CONVERSATIONS`, 32), so a few
    very long conversations cannot take the machine's memory."""
    from blsp_demo.engine.chat import EngineLimits

    mb = float(environ.get("BLSP_MAX_CACHE_MB") or DEFAULT_CACHE_MB)
    count = int(environ.get("BLSP_MAX_CACHED_CONVERSATIONS") or EngineLimits.max_cached_conversations)
    return EngineLimits(max_cached_conversations=count, max_cache_bytes=int(mb * 2**20) if mb > 0 else None)


def session_ttl_s(environ=os.environ) -> float | None:
    """How long a browser session's state (its conversation, and through `delete_callback` its KV
    caches) is kept after its last event: BLSP_SESSION_TTL_S, default 1800; 0: until the tab closes."""
    ttl = float(environ.get("BLSP_SESSION_TTL_S") or 1800)
    return ttl if ttl > 0 else None
