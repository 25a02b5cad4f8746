"""Issue 20, defect 4 (fast): the per-minute and at-once limits count what the client cannot
choose (its address, a logged-in user; X-Forwarded-For only behind proxies the host trusts), so
rotating Gradio session hashes gains nothing; the app's engines bound their KV caches by bytes."""

from __future__ import annotations

import gradio as gr
import pytest
from test_hardening_round2 import long_engine, run
from test_ui_handlers import SETTINGS, make_services

from blsp_demo.ui.chat import ChatHandlers


# ---- defect 4: limits keyed on what the client cannot choose; caches bounded by bytes ------------
def request(session_hash: str, host: str = "10.0.0.7", forwarded: str = ""):
    from types import SimpleNamespace

    return SimpleNamespace(session_hash=session_hash, client=SimpleNamespace(host=host),
                           headers={"x-forwarded-for": forwarded} if forwarded else {}, username=None)


def limited_services(tmp_path, **env):
    from blsp_demo.app.limits import RateLimits, SessionGate

    services = make_services(tmp_path / "data", {"fake": long_engine()})
    services.gate = SessionGate(RateLimits.from_env({k: str(v) for k, v in env.items()}))
    return services


def test_rotating_session_hashes_do_not_escape_the_limit_at_once(tmp_path):
    h = ChatHandlers(limited_services(tmp_path))
    turns = [h.chat_text("Hi", None, SETTINGS, request(f"rotated-{i}")) for i in range(7)]
    admitted, refused = 0, 0
    for gen in turns:  # all seven in flight together, as parallel queue calls
        status = next(gen)[2]
        if status.startswith("**Error:**"):
            refused += 1
            assert "already has 1 question being answered" in status
        else:
            admitted += 1
    assert (admitted, refused) == (1, 6)
    other = run(h.chat_text("Hi", None, SETTINGS, request("bystander", host="10.0.0.8")))
    assert other[-1][1]["response"]  # another address is not held up


def test_rotating_session_hashes_do_not_escape_the_limit_per_minute(tmp_path):
    h = ChatHandlers(limited_services(tmp_path, BLSP_TURNS_PER_MINUTE=20))
    answered = 0
    for i in range(28):
        try:
            run(h.chat_text("Hi", None, SETTINGS, request(f"rotated-{i}")))
            answered += 1
        except gr.Error as err:
            assert "your connection asked 20 questions" in str(err)
    assert answered == 20


def test_x_forwarded_for_counts_only_when_the_host_trusts_it(tmp_path):
    from blsp_demo.app.limits import ClientKey, RateLimits

    spoofed = [ClientKey(session=f"s{i}", host="10.0.0.7", forwarded_for=f"1.2.3.{i}") for i in range(3)]
    untrusted, trusted = RateLimits(), RateLimits(forwarded_hops=1)
    assert {k.counted(untrusted) for k in spoofed} == {"addr:10.0.0.7"}
    assert len({k.counted(trusted) for k in spoofed}) == 3
    # behind one trusted proxy, what the client itself put in front of the header is ignored
    assert ClientKey(host="proxy", forwarded_for="6.6.6.6, 9.9.9.9").counted(trusted) == "addr:9.9.9.9"
    assert ClientKey(session="s", host="h", user="ana").counted(untrusted) == "user:ana"
    h = ChatHandlers(limited_services(tmp_path, BLSP_TURNS_PER_MINUTE=3))
    for i in range(3):
        run(h.chat_text("Hi", None, SETTINGS, request(f"r{i}", forwarded=f"1.2.3.{i}")))
    with pytest.raises(gr.Error, match="your connection asked 3 questions"):
        run(h.chat_text("Hi", None, SETTINGS, request("r9", forwarded="1.2.3.9")))


def test_the_apps_engines_bound_their_kv_caches_by_bytes(tmp_path, monkeypatch):
    from blsp_demo.app.limits import DEFAULT_CACHE_MB, engine_limits_from_env
    from blsp_demo.app.services import EnginePool

    assert EnginePool()._loader.keywords["limits"].max_cache_bytes == DEFAULT_CACHE_MB * 2**20
    assert engine_limits_from_env({"BLSP_MAX_CACHE_MB": "64"}).max_cache_bytes == 64 * 2**20
    assert engine_limits_from_env({"BLSP_MAX_CACHE_MB": "0"}).max_cache_bytes is None


def test_a_sessions_state_is_released_after_the_ttl(tmp_path, monkeypatch):
    import gradio as gr

    from blsp_demo.app.limits import session_ttl_s
    from blsp_demo.ui import build_demo

    assert session_ttl_s({}) == 1800 and session_ttl_s({"BLSP_SESSION_TTL_S": "0"}) is None
    monkeypatch.setenv("BLSP_SESSION_TTL_S", "90")
    demo = build_demo(make_services(tmp_path / "data", {"fake": long_engine()}))
    ttls = [b.time_to_live for b in demo.blocks.values() if isinstance(b, gr.State)]
    assert 90 in ttls  # the chat's state (conversation; its delete_callback drops the KV caches)


def test_through_the_real_queue_rotating_hashes_get_one_turn_at_once_and_twenty_a_minute(tmp_path):
    """The web server's queue starts jobs as its 2 slots free up, so a limit of 2 at once never bit
    there (7 of 7 parallel turns with rotating hashes were admitted): one address gets one slot."""
    from blsp_demo.judge.llama_server import free_port
    from blsp_demo.ui import build_demo, launch_options
    from evaluations.reliability.round2 import run_rotation

    services = limited_services(tmp_path)
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    try:
        r = run_rotation(demo.local_url, parallel=7, sequential=25)
    finally:
        demo.close()
    assert r.problems == [], r.problems
    assert r.parallel_admitted == 1 and r.max_in_a_minute == 20
    assert "already has 1 question being answered" in r.refusal or "Slow down" in r.refusal
