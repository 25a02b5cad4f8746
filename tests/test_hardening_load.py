"""Many users at once against the real app (a subprocess on the real offline model, default queue
settings): concurrent gradio_client sessions with mixed spoken and typed turns and a label on each
answer; and one client flooding the queue. CI runs BLSP_HARDENING_SESSIONS sessions (default 6);
`python -m evaluations.reliability` runs 20."""

from __future__ import annotations

import os

import pytest

from blsp_demo.app.limits import RateLimited, RateLimits, SessionGate
from evaluations.reliability.flood import run_flood, run_per_minute
from evaluations.reliability.load import LoadOptions, check_load, made_up_words, run_load

SESSIONS = int(os.environ.get("BLSP_HARDENING_SESSIONS", "6"))


@pytest.mark.slow
def test_concurrent_sessions_no_errors_no_leakage_every_label_once(hardened_app, tmp_path):
    options = LoadOptions(sessions=SESSIONS, turns=5)
    runs = run_load(hardened_app.url, options, tmp_path)
    report = check_load(runs, hardened_app.data_dir, options.turns)
    print(f"\n{report.sessions} sessions, {report.turns_answered}/{report.turns_planned} turns, labels "
          f"{report.labels_written}/{report.labels_acked}; TTFT {report.ttft}; queue wait {report.queue_wait}")
    assert report.problems == []
    assert report.turns_answered == report.turns_planned == SESSIONS * 5
    assert report.labels_acked == report.labels_written == SESSIONS * 5
    assert {s.modality for r in runs for s in r.samples} == {"speech", "text"}


@pytest.mark.slow
def test_one_client_flooding_the_queue_does_not_starve_another(hardened_app):
    result = run_flood(hardened_app.url, hardened_app.data_dir, burst=10)
    print(f"\n{result}")
    assert result.problems == []
    assert result.refused >= 5  # refused at once, each with the reason


@pytest.mark.slow
def test_per_minute_limit_refuses_with_a_clear_message(hardened_app):
    result = run_per_minute(hardened_app.url, limit=20)  # the app's default BLSP_TURNS_PER_MINUTE
    assert result.problems == [] and "Try again in" in result.message


def test_gate_one_at_a_time_and_per_minute_with_a_clock():
    now = [0.0]
    gate = SessionGate(RateLimits(turns_per_minute=3, window_s=60), clock=lambda: now[0])
    with gate.admit("a"):
        with pytest.raises(RateLimited, match="still waiting for an answer"):
            gate.enter("a")
        gate.leave(gate.enter("b"))  # another session is not held up
    for _ in range(2):
        gate.leave(gate.enter("a"))
    with pytest.raises(RateLimited, match=r"asked 3 questions in the last 60 s .* Try again in 60 s"):
        gate.enter("a")
    now[0] = 60.5  # the first admission left the window
    gate.leave(gate.enter("a"))
    now[0] = 1000.0
    gate.leave(gate.enter("c"))
    assert set(gate._admitted) == {"c"}  # idle sessions are forgotten: no growth per visitor


def test_made_up_words_are_distinct_and_never_inside_each_other():
    words = made_up_words(40, seed=7)
    assert len(set(words)) == 40
    assert not [(a, b) for a in words for b in words if a != b and a in b]
