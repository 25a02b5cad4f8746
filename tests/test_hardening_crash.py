"""SIGKILL the real app (a subprocess) in the middle of a concurrent load, restart it on the same
data dir: every acknowledged turn and label is there exactly once, no record is duplicated, the
reader skips and reports a torn last line and the restart recovers it, and the server answers."""

from __future__ import annotations

import os

import pytest

from evaluations.reliability.crash import CrashOptions, run_crash
from evaluations.reliability.load import LoadOptions
from evaluations.reliability.server import AppServer, ServerOptions

pytestmark = pytest.mark.slow
SESSIONS = int(os.environ.get("BLSP_HARDENING_CRASH_SESSIONS", "4"))


def test_sigkill_mid_load_then_restart_loses_and_doubles_nothing(tmp_path):
    server = AppServer(ServerOptions(tmp_path / "data", max_new_tokens=6)).start()
    try:
        report = run_crash(server, CrashOptions(LoadOptions(sessions=SESSIONS, turns=5),
                                                kill_after_labels=2 * SESSIONS), tmp_path / "audio")
    finally:
        server.stop()
    print(f"\n{report}")
    assert report.problems == []
    assert report.labels_acked >= 2 * SESSIONS and report.labels_found == report.labels_acked
    assert report.turns_found == report.turns_acked > 0 and report.duplicated == []
