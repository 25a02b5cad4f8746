"""The LLM judge from the app: "judge the answers not yet judged" in a background thread.

One `JudgeRunner` per app. A run takes the logged answers without an accept/reject judgement,
asks the configured OpenAI-compatible server (`judge.OpenAIBackend`: JUDGE_MODEL, OPENAI_BASE_URL,
OPENAI_API_KEY) one answer at a time, at most `per_minute` requests a minute, and appends a
`judgement` record for each (as `evaluations.judge_logs` does), with who asked for it. It is
resumable: a run that stopped (Stop, a restart, a crash) is started again and judges only what
is still unjudged; replies are cached on disk, so nothing is paid twice.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import dataclass, replace
from typing import Callable

from blsp_demo.app.store import Store, live_records, question_of
from blsp_demo.vocab import VERDICTS

log = logging.getLogger(__name__)

NOT_CONFIGURED = ("No judge is configured: start the app with OPENAI_BASE_URL (an OpenAI-compatible server: "
                  "vLLM, llama.cpp's server, Ollama, OpenAI) and JUDGE_MODEL, plus OPENAI_API_KEY if the "
                  "server needs one; or judge from the command line (`python -m evaluations.judge_logs`). "
                  "Real judging needs a capable model behind that server: the offline models this project "
                  "bundles (SmolLM2-135M, Qwen2.5-Coder 0.5B and 1.5B) agree with answer match at chance "
                  "(kappa 0.01-0.04), so they only try the plumbing.")
NO_QUESTION = "(speech)"


def unjudged_turns(records: list[dict]) -> list[dict]:
    """Answered turns (not failed, not deleted) without an accept/reject judgement, oldest first."""
    records = live_records(records)
    judged = {r.get("turn_id") for r in records if r.get("kind") == "judgement" and r.get("verdict") in VERDICTS}
    return [t for t in records if t.get("kind") == "turn" and not t.get("error") and t.get("response") is not None
            and t["id"] not in judged]


def judge_configured(env=None) -> bool:
    env = os.environ if env is None else env
    return bool(env.get("OPENAI_BASE_URL") or env.get("OPENAI_API_KEY"))


def openai_judge():
    """The configured OpenAI-compatible judge (JudgeError when there is none)."""
    from pathlib import Path

    from blsp_demo.judge import DEFAULT_CACHE_DIR, Judge

    cache = os.environ.get("BLSP_JUDGE_CACHE")
    return Judge.from_env("openai", cache_dir=Path(cache) if cache else DEFAULT_CACHE_DIR)


@dataclass(frozen=True)
class JudgeProgress:
    running: bool = False
    done: int = 0
    total: int = 0
    failed: int = 0  # answers the judge could not judge (recorded as unjudged; tried again next run)
    message: str = ""

    def markdown(self) -> str:
        bar = f"<progress value='{self.done}' max='{max(self.total, 1)}'></progress> " if self.total else ""
        state = "judging" if self.running else "idle"
        counts = f"{self.done} of {self.total} judged" + (f", {self.failed} unjudged" if self.failed else "")
        return f"{bar}**{state}** · {counts}" + (f"  \n{self.message}" if self.message else "")


class JudgeRunner:
    """Judges the unjudged answers in a background thread; one run at a time."""

    def __init__(self, store: Store, make_judge: Callable = openai_judge, per_minute: float | None = None,
                 configured: Callable[[], bool] = judge_configured):
        self.store, self.make_judge, self.configured = store, make_judge, configured
        self.per_minute = per_minute or float(os.environ.get("BLSP_JUDGE_PER_MINUTE", "60"))
        self._lock = threading.Lock()
        self._progress = JudgeProgress()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def progress(self) -> JudgeProgress:
        with self._lock:
            return self._progress

    def _set(self, **changes) -> None:
        with self._lock:
            self._progress = replace(self._progress, **changes)

    def start(self, annotator: str = "", session: str = "") -> JudgeProgress:
        """Start a run (or report the one under way); a clear message when no judge is configured."""
        if not self.configured():
            self._set(message=NOT_CONFIGURED)
            return self.progress()
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return replace(self._progress, message="A run is already under way.")
            self._stop.clear()
            turns = unjudged_turns(self.store.read().records)
            self._progress = JudgeProgress(True, 0, len(turns), 0, "Judging…" if turns else "")
            if not turns:
                self._progress = JudgeProgress(False, 0, 0, 0, "Every answer already has a judgement.")
                return self._progress
            self._thread = threading.Thread(target=self._run, args=(turns, annotator, session),
                                            name="judge-run", daemon=True)
            self._thread.start()
            return self._progress

    def stop(self) -> JudgeProgress:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._set(running=False, message="Stopped; press Judge again to carry on where it stopped.")
        return self.progress()

    def _run(self, turns: list[dict], annotator: str, session: str) -> None:
        try:
            judge = self.make_judge()
        except Exception as err:  # noqa: BLE001 - shown on the page, the app carries on
            self._set(running=False, message=f"Could not start the judge: {err}")
            return
        gap, last = 60.0 / self.per_minute, 0.0
        for t in turns:
            if self._stop.wait(max(0.0, last + gap - time.monotonic())):
                return
            last = time.monotonic()
            self._judge_one(judge, t, annotator, session)
        p = self.progress()
        self._set(running=False, message=f"Done: {p.done - p.failed} judged, {p.failed} could not be judged"
                                         f" ({judge.model}).")

    def _judge_one(self, judge, turn: dict, annotator: str, session: str) -> None:
        q = question_of(turn)
        try:
            j = judge.judge("" if q == NO_QUESTION else q, turn.get("response") or "")
            self.store.append("judgement", turn.get("session") or "", turn_id=turn["id"], model=turn.get("model"),
                              annotator=annotator, requested_in=session, source="app", **j.record_fields())
        except Exception as err:  # noqa: BLE001 - one answer's failure must not end the run
            log.exception("judging %s failed", turn.get("id"))
            self._set(failed=self.progress().failed + 1, done=self.progress().done + 1, message=str(err))
            return
        failed = int(j.verdict not in VERDICTS)
        p = self.progress()
        self._set(done=p.done + 1, failed=p.failed + failed)
