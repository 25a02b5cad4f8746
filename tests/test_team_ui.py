"""The Annotate and Dashboard handlers for a labelling team (issue 17), with the fake engine of
test_ui_handlers: sign-in and roles, the queue through the handlers, annotators on chat labels,
and the public API /annotator and /label through gradio_client."""

from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import pytest
from test_ui_handlers import SETTINGS, make_services, run

from blsp_demo.app.identity import Roles
from blsp_demo.app.labelling import QueueState
from blsp_demo.app.session import ChatState
from blsp_demo.app.store import read_records
from blsp_demo.ui import build_demo, launch_options
from blsp_demo.ui.annotate import AnnotateHandlers
from blsp_demo.ui.chat import ChatHandlers
from blsp_demo.ui.dashboard import DashboardHandlers
from test_ui_handlers import FakeEngine

ALL = ("all", "all", "all", "", "")


@pytest.fixture
def services(tmp_path):
    return make_services(tmp_path / "data", {"fake": FakeEngine()})


def labels(services) -> list[dict]:
    return [r for r in read_records(services.store.data_dir).records if r["kind"] == "label"]


def ask(services, n: int) -> ChatState:
    chat = ChatHandlers(services)
    state = None
    for i in range(n):
        state = run(chat.chat_text(f"question {i}", state, SETTINGS))[-1][-1]
    return state


def test_private_team_sign_in_queue_undo(services):
    ask(services, 3)
    a = AnnotateHandlers(services, Roles(("alice", "bob"), "pc"))
    d = DashboardHandlers(services, Roles(("alice", "bob"), "pc"))
    with pytest.raises(gr.Error, match="private"):
        a.queue_show(None, QueueState(), 0, *ALL)
    assert a.on_tab(a.queue_show, 7, None, QueueState(), 0, *ALL) == (gr.skip(),) * 7
    assert "private" in d.refresh(None)[0] and d.refresh(None)[-1]["visible"] is False
    with pytest.raises(gr.Error, match="Wrong passcode"):
        a.sign_in("alice", "nope", None)
    with pytest.raises(gr.Error, match="not on this Space's list"):
        a.sign_in("eve", "pc", None)
    who_line, state = a.sign_in(" alice ", "pc", None)
    assert state.annotator == "alice" and "alice" in who_line
    q, progress, info, audio, context, reason, note = a.queue_show(state, QueueState(), 0, *ALL)
    assert "0 of 3" in progress and q.current and "your label: **none**" in info and context[-1]["role"] == "assistant"
    first = q.current
    q, progress, *_ = a.queue_label("accept", state, q, "fine", 0, *ALL)
    assert "1 of 3" in progress and q.current != first
    assert labels(services)[-1].items() >= {"turn_id": first, "verdict": "accept", "annotator": "alice",
                                            "source": "queue", "reason": "fine"}.items()
    second = q.current
    q, progress, *_ = a.queue_skip(state, q, 0, *ALL)
    assert "skipped" in progress and q.current not in (first, second)
    q, progress, *_, note = a.queue_undo(state, q, 0, *ALL)
    assert q.current == first and "0 of 3" in progress and "Took back" in note
    assert labels(services)[-1]["verdict"] == "unset" and labels(services)[-1]["annotator"] == "alice"
    # bob sees the same answers in the same order
    _, bob = a.sign_in("bob", "pc", None)
    assert a.queue_show(bob, QueueState(), 0, *ALL)[0].current == first
    assert d.refresh(state)[-1]["visible"] is True


def test_oauth_profile_becomes_the_annotator(services):
    a = AnnotateHandlers(services, Roles(("hf-user",), "pc"))
    _, state = a.sign_in_oauth(None, SimpleNamespace(username="hf-user", name="HF User"))
    assert state.annotator == "hf-user"  # no passcode for a Hub login
    assert a.sign_in_oauth(None, None) == (gr.skip(), gr.skip())


def test_chat_thumbs_and_feedback_carry_the_annotator(services):
    state = ask(services, 1)
    _, state = AnnotateHandlers(services, Roles()).sign_in("carol", "", state)
    ChatHandlers(services).feedback(1, "accept", "", state)
    assert labels(services)[-1]["annotator"] == "carol" and labels(services)[-1]["source"] == "api"


def test_public_api_annotator_and_label(services, monkeypatch):
    from gradio_client import Client

    ask(services, 2)
    turn_ids = [r["id"] for r in read_records(services.store.data_dir).records if r["kind"] == "turn"]
    monkeypatch.setenv("BLSP_ANNOTATE_PASSCODE", "team-pc")
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=None, prevent_thread_lock=True, quiet=True))
    try:
        alice, stranger = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
        with pytest.raises(Exception, match="private"):
            stranger.predict(turn_ids[0], "accept", "", api_name="/label")
        with pytest.raises(Exception, match="Wrong passcode"):
            alice.predict("alice", "guess", api_name="/annotator")
        assert "alice" in alice.predict("alice", "team-pc", api_name="/annotator")
        status = alice.predict(turn_ids[0], "Reject", "wrong", api_name="/label")
        assert "reject" in status and "alice" in status
        with pytest.raises(Exception, match="No logged answer"):
            alice.predict("no-such-turn", "accept", "", api_name="/label")
        with pytest.raises(Exception, match="verdict must be one of"):
            alice.predict(turn_ids[1], "maybe", "", api_name="/label")
        history, details, _, _ = alice.predict("Hi there", api_name="/chat_text")
        assert "accept" in alice.predict(details["message_index"], "accept", "", api_name="/feedback")
    finally:
        demo.close()
    mine = labels(services)
    assert [(r["turn_id"], r["verdict"], r["annotator"], r["source"]) for r in mine] == [
        (turn_ids[0], "reject", "alice", "api"), (details["turn_id"], "accept", "alice", "api")]


def test_compare_votes_carry_the_annotator(tmp_path):
    from blsp_demo.app.arena import Arena
    from blsp_demo.app.session import UserInput

    services = make_services(tmp_path / "data", {"fake": FakeEngine(), "other": FakeEngine("other-model", "blsp")})
    arena = Arena(services)
    state = list(arena.ask(None, "s1", SETTINGS, UserInput(text="hi"), ("fake", "other")))[-1].state
    record, _ = arena.vote(state, "s1", "A", "", annotator="dana")
    assert record["annotator"] == "dana"
    assert [r["annotator"] for r in read_records(services.store.data_dir).records if r["kind"] == "vote"] == ["dana"]


def test_dashboard_judge_button_without_a_judge_and_for_strangers(services, monkeypatch):
    for k in ("OPENAI_BASE_URL", "OPENAI_API_KEY"):
        monkeypatch.delenv(k, raising=False)
    d = DashboardHandlers(services, Roles(("alice",), ""))
    with pytest.raises(gr.Error, match="Sign in"):
        d.judge_start(None)
    with pytest.raises(gr.Error, match="Sign in"):
        d.judge_stop(None)
    progress, timer = d.judge_start(ChatState(annotator="alice"))
    assert "No judge is configured" in progress and "OPENAI_BASE_URL" in progress
