"""Compare: the ranking code against hand-computed values, vote records, rounds with fake engines
(draw, streaming, logging, vote, reveal), the dashboard section, and the public API endpoints."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_ui_handlers import EXAMPLES, WAV, FakeEngine, make_services

from blsp_demo.analysis import ranking as R
from blsp_demo.app.arena import RANDOM, Arena, CompareState, RoundFailed, interleave, normalize_choice, \
    reveal_markdown, revealed
from blsp_demo.weights.sources import WeightsError
from blsp_demo.app.store import Store, read_records, votes_frame
from blsp_demo.ui import build_demo, launch_options
from blsp_demo.ui.compare import api_question
from blsp_demo.ui.dashboard import DashboardHandlers
from blsp_demo.app.session import ChatSettings, UserInput


# ---- Bradley-Terry and win rates -----------------------------------------------------------------
def test_bradley_terry_two_models_is_the_win_rate():
    # 2 models: the MLE is p1 / (p1 + p2) = points / games; 3 wins, 1 loss, 2 ties -> (3 + 1) / 6
    votes = [("x", "y", "A")] * 3 + [("y", "x", "A")] + [("x", "y", "tie"), ("y", "x", "both_bad")]
    models = R.models_of(R.outcomes(votes))
    wins = R.win_matrix(R.outcomes(votes), models)
    assert models == ["x", "y"] and wins.tolist() == [[0, 4], [2, 0]]
    p = R.bradley_terry(wins)
    assert p[0] / (p[0] + p[1]) == pytest.approx(4 / 6, abs=1e-9)
    assert p[0] * p[1] == pytest.approx(1.0)  # geometric mean 1
    # one virtual tie per pair adds half a point to each side: (4 + 1/2) / (6 + 1)
    p = R.bradley_terry(wins, prior=1.0)
    assert p[0] / (p[0] + p[1]) == pytest.approx(4.5 / 7, abs=1e-9)


def test_bradley_terry_three_models_with_known_strengths():
    # Counts equal to their expectations under strengths (4, 2, 1) make (4, 2, 1) the MLE:
    # x-y 3 games, P(x wins) = 4/6 -> 2:1; x-z 5 games, 4/5 -> 4:1; y-z 3 games, 2/3 -> 2:1
    wins = np.array([[0, 2, 4], [1, 0, 2], [1, 1, 0]], dtype=float)
    p = R.bradley_terry(wins)
    assert (p / p[2]).tolist() == pytest.approx([4, 2, 1], abs=1e-7)
    assert p.prod() == pytest.approx(1.0)
    # the score equations hold: points_i = sum_j n_ij p_i / (p_i + p_j)
    games = wins + wins.T
    expected = (games * p[:, None] / (p[:, None] + p[None, :])).sum(axis=1)
    assert expected.tolist() == pytest.approx(wins.sum(axis=1).tolist())
    # ratings: 400 Elo points per factor 10 of strength; 1000 at the geometric mean
    r = R.ratings(p)
    assert r[0] - r[2] == pytest.approx(400 * math.log10(4)) and r.mean() == pytest.approx(1000)


def test_bradley_terry_cycle_and_degenerate_cases():
    cycle = np.array([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=float)  # x>y, y>z, z>x
    assert R.bradley_terry(cycle).tolist() == pytest.approx([1, 1, 1])
    never_won = np.array([[0, 3], [0, 0]], dtype=float)
    assert R.bradley_terry(never_won).tolist() == [1.0, 0.0]  # no MLE: the loser's strength is 0
    p = R.bradley_terry(never_won, prior=1.0)
    assert p[0] / p[1] == pytest.approx(3.5 / 0.5)


def test_outcomes_both_bad_as_tie_or_excluded_and_errors():
    votes = [("x", "y", "A"), ("x", "y", "both_bad"), ("y", "x", "tie"), ("x", "y", "B")]
    assert [o.points_a for o in R.outcomes(votes)] == [1, 0.5, 0.5, 0]
    assert [o.points_a for o in R.outcomes(votes, both_bad="exclude")] == [1, 0.5, 0]
    with pytest.raises(ValueError, match="one of"):
        R.outcomes([("x", "y", "C")])
    with pytest.raises(ValueError, match="two different"):
        R.outcomes([("x", "x", "A")])
    with pytest.raises(ValueError, match="both_bad must be"):
        R.outcomes(votes, both_bad="loss")


def test_leaderboard_counts_win_rates_and_intervals():
    votes = ([("x", "y", "A")] * 6 + [("y", "x", "B")] * 2 + [("x", "y", "B")] * 2 + [("y", "z", "both_bad")]
             + [("z", "x", "tie")])
    board = R.leaderboard(votes).set_index("model")
    # z drew with the strong x and with the weak y: Bradley-Terry puts it between them
    assert list(board.index) == ["x", "z", "y"] and list(board["rank"]) == [1, 2, 3]
    x, y, z = board.loc["x"], board.loc["y"], board.loc["z"]
    assert (x["games"], x["wins"], x["ties"], x["losses"], x["both_bad"]) == (11, 8, 1, 2, 0)
    assert (y["games"], y["wins"], y["ties"], y["losses"], y["both_bad"]) == (11, 2, 1, 8, 1)
    assert x["win_rate"] == pytest.approx(100 * 8.5 / 11) and z["win_rate"] == pytest.approx(50.0)
    for row in (x, y, z):
        assert row["win_rate_lo"] <= row["win_rate"] <= row["win_rate_hi"]
        assert row["rating_lo"] <= row["rating"] <= row["rating_hi"]
    assert 0 < x["win_rate_lo"] < x["win_rate_hi"] <= 100
    again = R.leaderboard(votes).set_index("model")  # seeded: the same votes give the same intervals
    assert again.loc["y", "rating_lo"] == y["rating_lo"] and again.loc["y", "win_rate_hi"] == y["win_rate_hi"]
    # both bad excluded: y-z's only vote disappears from the games but is still counted apart
    excluded = R.leaderboard(votes, both_bad="exclude").set_index("model")
    assert excluded.loc["y", "games"] == 10 and excluded.loc["y", "both_bad"] == 1
    assert R.leaderboard([]).empty


def test_win_rate_interval_by_hand():
    rate, lo, hi = R.win_rate_interval([1, 1, 1])
    assert (rate, lo, hi) == (100.0, 100.0, 100.0)  # every resample is all wins
    rate, lo, hi = R.win_rate_interval([1, 0])  # resamples: 2 wins, 1+1, or 2 losses
    assert rate == 50.0 and (lo, hi) == (0.0, 100.0)
    assert all(math.isnan(v) for v in R.win_rate_interval([]))


# ---- records -------------------------------------------------------------------------------------
def test_vote_records_and_votes_frame(tmp_path):
    store = Store(tmp_path)
    store.vote("s1", "A", " clearer ", round="r1", model_a="x", model_b="y", winner="x")
    store.vote("s2", "both_bad", round="r2", model_a="y", model_b="z", winner=None)
    with pytest.raises(ValueError, match="a vote is one of"):
        store.vote("s1", "maybe", round="r3")
    frame = votes_frame(read_records(tmp_path).records)
    assert list(frame["choice"]) == ["A", "both_bad"] and frame.loc[0, "reason"] == "clearer"
    store.delete_session("s1")  # deleted sessions' votes are left out
    assert list(votes_frame(read_records(tmp_path).records)["round"]) == ["r2"]


def test_normalize_choice_and_interleave():
    assert [normalize_choice(c) for c in ("a", " B ", "Tie", "both bad", "both_bad", "Both-Bad")] == \
        ["A", "B", "tie", "both_bad", "both_bad", "both_bad"]
    with pytest.raises(ValueError, match="A, B, tie, both_bad"):
        normalize_choice("C")
    assert list(interleave([iter("ab"), iter("wxyz")])) == [(0, "a"), (1, "w"), (0, "b"), (1, "x"), (1, "y"),
                                                            (1, "z")]


# ---- rounds with fake engines ---------------------------------------------------------------------
@pytest.fixture
def arena_services(tmp_path):
    engines = {"fake": FakeEngine("fake-model", "cascade", tokens=("Paris", " is", " the", " capital.")),
               "other": FakeEngine("other-model", "blsp", tokens=("It", " is", " Paris.")),
               "texty": FakeEngine("texty-model", "text", tokens=("Rome",)),
               "broken": WeightsError("micro-blsp: the trained adapter is not there yet")}
    return make_services(tmp_path / "data", engines)


SETTINGS = ChatSettings(model="fake")


def play(arena, inp, picks=(RANDOM, RANDOM), session="s1", state=None):
    steps = list(arena.ask(state, session, SETTINGS, inp, picks))
    return steps, steps[-1].state


def test_draw_is_seeded_per_session_and_leaves_out_what_cannot_answer(arena_services):
    arena = Arena(arena_services)
    text = UserInput(text="What is the capital of France?")
    draws = [arena.draw("session-1", n, text) for n in range(1, 6)]
    assert draws == [arena.draw("session-1", n, text) for n in range(1, 6)]  # replayable
    others = [arena.draw("session-2", n, text)[0] for n in range(1, 6)]
    assert others != [d[0] for d in draws]
    for models, how, notices in draws:
        assert len(set(models)) == 2 and "broken" not in models and how == "random"
    pairs = {frozenset(arena.draw(f"s{k}", 1, text)[0]) for k in range(30)}
    assert pairs == {frozenset(p) for p in (("fake", "other"), ("fake", "texty"), ("other", "texty"))}
    left_out = [n for k in range(30) for n in arena.draw(f"s{k}", 1, text)[2]]
    assert left_out and all("broken could not be loaded" in n for n in left_out)

    spoken = UserInput(audio=WAV)  # a recording without transcript: the text system sits out
    assert all("texty" not in arena.draw(f"s{k}", 1, spoken)[0] for k in range(20))
    notices = [n for k in range(20) for n in arena.draw(f"s{k}", 1, spoken)[2]]
    assert any("texty answers from known transcripts" in n for n in notices)
    example = UserInput(audio=WAV, transcript="What is the capital of France?")
    assert any("texty" in arena.draw(f"s{k}", 1, example)[0] for k in range(20))


def test_picked_systems(arena_services):
    arena = Arena(arena_services)
    text = UserInput(text="hi")
    sides = {arena.draw(f"s{k}", 1, text, ("fake", "other"))[0] for k in range(20)}
    assert sides == {("fake", "other"), ("other", "fake")}  # the order on screen is random
    with pytest.raises(RoundFailed, match="two different systems"):
        arena.draw("s", 1, text, ("other", "other"))
    with pytest.raises(RoundFailed, match="broken could not be loaded"):
        arena.draw("s", 1, text, ("broken", RANDOM))
    models, how, _ = arena.draw("s", 1, text, (RANDOM, "texty"))
    assert "texty" in models and how == "mixed"
    only_cascade = Arena(arena_services, systems=["fake", "texty", "broken"])
    with pytest.raises(RoundFailed, match="Fewer than two systems"):
        only_cascade.draw("s", 1, UserInput(audio=WAV))


def test_round_streams_both_answers_logs_turns_and_takes_one_vote(arena_services):
    arena = Arena(arena_services)
    steps, state = play(arena, UserInput(text="What is the capital of France?"), ("fake", "other"))
    assert steps[-1].done and not any(s.done for s in steps[:-1]) and state.rounds == 1
    a_first = [s.answers for s in steps if any(s.answers)]
    assert len({s[0] for s in a_first}) >= 3 and len({s[1] for s in a_first}) >= 3  # both streamed
    # interleaved: B has text before A is complete
    assert any(a and b and a != steps[-1].answers[0] for a, b in a_first)
    rnd = state.current
    by_model = dict(zip(rnd.models, steps[-1].answers))
    assert by_model == {"fake": "Paris is the capital.", "other": "It is Paris."}

    turns = [r for r in read_records(arena_services.store.data_dir).records if r["kind"] == "turn"]
    turns.sort(key=lambda t: t["compare_side"])  # logged as each finishes
    assert [(t["compare_side"], t["model"]) for t in turns] == list(zip("AB", rnd.models))
    assert {t["compare_round"] for t in turns} == {rnd.id} and {t["session"] for t in turns} == {"s1"}
    assert len({t["conversation"] for t in turns}) == 2  # each side its own conversation
    forgotten = [c for e in ("fake", "other") for c in arena_services.pool.get(e).forgotten]
    assert sorted(forgotten) == sorted(t["conversation"] for t in turns)  # KV caches dropped

    with pytest.raises(ValueError, match="no round"):
        arena.vote(CompareState(), "s1", "A")
    record, state = arena.vote(state, "s1", "b", " shorter ")
    assert record.items() >= {"kind": "vote", "session": "s1", "round": rnd.id, "choice": "B", "reason": "shorter",
                              "model_a": rnd.models[0], "model_b": rnd.models[1], "winner": rnd.models[1],
                              "drawn": "chosen", "modality": "text",
                              "question": "What is the capital of France?"}.items()
    assert record["turn_ids"] == [t["id"] for t in turns]
    assert [(t["side"], t["response"], t["ttft_s"]) for t in record["turns"]] == \
        [(s, t["response"], t["ttft_s"]) for s, t in zip("AB", turns)]
    with pytest.raises(ValueError, match="already has your vote"):
        arena.vote(state, "s1", "A")
    shown = revealed(record)
    assert shown["A"]["model"] == rnd.models[0] and shown["winner"] == rnd.models[1]
    assert f"**A** was **{rnd.models[0]}**" in reveal_markdown(record) and "B is better" in reveal_markdown(record)
    assert (read_records(arena_services.store.data_dir).records[-1]) == record


def test_votes_need_both_answers_and_the_same_session(arena_services):
    arena = Arena(arena_services)
    gen = arena.ask(None, "s1", SETTINGS, UserInput(text="q"), ("fake", "other"))
    mid = [next(gen) for _ in range(3)][-1]
    with pytest.raises(ValueError, match="Wait until both answers"):
        arena.vote(mid.state, "s1", "A")
    gen.close()
    _, state = play(arena, UserInput(text="q"), ("fake", "other"))
    with pytest.raises(ValueError, match="deleted with your data"):
        arena.vote(state, "another-session", "tie")


def test_a_failing_side_fails_the_round(tmp_path):
    engines = {"good": FakeEngine(), "bad": FakeEngine(fail=ValueError("this turn is too long; shorten it"))}
    arena = Arena(make_services(tmp_path, engines))
    with pytest.raises(RoundFailed, match="could not answer: this turn is too long"):
        play(arena, UserInput(text="q"), ("good", "bad"))
    with pytest.raises(RoundFailed, match="message is empty"):
        play(arena, UserInput(text="  "))
    failed = {r["model"]: r for r in read_records(tmp_path).records if r["kind"] == "turn" and r["error"]}
    assert set(failed) <= {"bad", "good"} and failed["bad"]["compare_side"] in "AB"
    if "good" in failed:  # stopped half-way when the other side failed: logged as cancelled
        assert failed["good"]["error_code"] == "cancelled" and failed["good"]["response"] is None


def test_spoken_example_round_keeps_the_audio_once(arena_services):
    arena = Arena(arena_services)
    ex = EXAMPLES[0]
    _, state = play(arena, UserInput(audio=str(ex.audio), transcript=ex.text), ("texty", "fake"))
    record, _ = arena.vote(state, "s1", "tie")
    assert record["modality"] == "speech" and record["question"] == ex.text
    assert len({t["audio_path"] for t in record["turns"]}) == 1
    assert len(list(arena_services.store.audio_dir.iterdir())) == 1


# ---- dashboard -------------------------------------------------------------------------------------
def test_dashboard_comparison_section(arena_services):
    h = DashboardHandlers(arena_services)
    summary, fig, table = h.refresh_votes()
    assert "**0** Compare votes" in summary and table.empty and fig.axes
    arena = Arena(arena_services)
    for k, choice in enumerate(["A", "B", "tie", "both_bad", "A"]):
        _, state = play(arena, UserInput(text=f"q{k}"), ("fake", "other"), session=f"s{k}")
        arena.vote(state, f"s{k}", choice)
    summary, fig, table = h.refresh_votes()
    assert "**5** Compare votes" in summary and "1 both bad" in summary and len(fig.axes) == 2
    assert list(table.columns) == ["rank", "model", "rating", "rating 95% CI", "votes", "W-T-L", "both bad",
                                   "win rate %", "win rate 95% CI"]
    assert set(table["model"]) == {"fake", "other"} and list(table["votes"]) == [5, 5]
    assert table["win rate %"].sum() == pytest.approx(100.0)


# ---- the public API with fake engines -------------------------------------------------------------
def test_api_question_argument():
    assert api_question("typed") == UserInput(text="typed")
    with pytest.raises(ValueError, match="uploaded file"):
        api_question({"path": "/etc/passwd", "meta": {"_type": "gradio.FileData"}})
    with pytest.raises(ValueError, match="text, or an audio file"):
        api_question(42)


def test_compare_and_vote_endpoints(arena_services, tts_question):
    from gradio_client import Client, handle_file

    demo = build_demo(arena_services)
    demo.launch(**launch_options(arena_services, server_port=None, prevent_thread_lock=True, quiet=True))
    try:
        client = Client(demo.local_url, verbose=False)
        api = client.view_api(return_format="dict")["named_endpoints"]
        assert [p["parameter_name"] for p in api["/compare"]["parameters"]] == ["audio_or_text"]
        assert [p["parameter_name"] for p in api["/vote"]["parameters"]] == ["choice", "reason"]
        with pytest.raises(Exception, match="no round to vote on"):
            client.predict("A", "", api_name="/vote")
        job = client.submit("What is the capital of France?", api_name="/compare")
        answer_a, answer_b, status = job.result(timeout=60)
        assert {answer_a, answer_b} <= {"Paris is the capital.", "It is Paris.", "Rome"} and answer_a != answer_b
        assert "revealed after your vote" in status and len(job.outputs()) >= 4  # streamed
        reveal, shown = client.predict("both_bad", "neither answers", api_name="/vote")
        assert shown["choice"] == "both_bad" and shown["winner"] is None and "both are bad" in reveal
        assert {shown["A"]["model"], shown["B"]["model"]} <= {"fake", "other", "texty"}
        with pytest.raises(Exception, match="already has your vote"):
            client.predict("A", "", api_name="/vote")

        client.predict(handle_file(str(tts_question)), api_name="/compare")  # spoken, no transcript
        reveal, shown = client.predict("A", "", api_name="/vote")
        assert "texty" not in (shown["A"]["model"], shown["B"]["model"])
        client.predict(handle_file(WAV), api_name="/compare")  # a spoken example's file: its transcript is known
        client.predict("B", "", api_name="/vote")
        votes = [r for r in read_records(arena_services.store.data_dir).records if r["kind"] == "vote"]
        assert [v["modality"] for v in votes] == ["text", "speech", "speech"]
        assert {v["source"] for v in votes} == {"api"}
        assert votes[1]["question"] == "heard words" and votes[2]["question"] == EXAMPLES[0].text
        assert len({v["session"] for v in votes}) == 1  # one client, one session

        with pytest.raises(Exception, match="message is empty"):
            client.predict("", api_name="/compare")
        with pytest.raises(Exception, match="no round to vote on"):  # the failed round left nothing to vote on
            client.predict("A", "", api_name="/vote")
    finally:
        demo.close()


def test_two_api_clients_have_their_own_rounds(arena_services):
    from gradio_client import Client

    demo = build_demo(arena_services)
    demo.launch(**launch_options(arena_services, server_port=None, prevent_thread_lock=True, quiet=True))
    try:
        one, two = Client(demo.local_url, verbose=False), Client(demo.local_url, verbose=False)
        one.predict("first client", api_name="/compare")
        with pytest.raises(Exception, match="no round to vote on"):
            two.predict("A", "", api_name="/vote")
        assert one.predict("tie", "", api_name="/vote")[1]["choice"] == "tie"
    finally:
        demo.close()


# ---- the tab's handlers (what the browser gets) ------------------------------------------------------
def test_tab_handlers_enable_votes_reveal_and_share_the_chat_session(arena_services):
    import gradio as gr

    from blsp_demo.ui.chat import build_chat_tab
    from blsp_demo.ui.compare import CompareHandlers, build_compare_tab
    from blsp_demo.app.session import ChatState

    with gr.Blocks():
        chat = build_chat_tab(arena_services, 1)
        ui = build_compare_tab(arena_services, chat, 1)
    h = CompareHandlers(arena_services, ui)
    outs = list(h.ask_text("What is the capital of France?", None, SETTINGS, CompareState(), ("fake", "other")))
    first, last = outs[0], outs[-1]
    session = first[ui.chat_state]  # a new session, shared with the Chat tab
    assert isinstance(session, ChatState) and all(ui.chat_state in o for o in outs)
    assert [first[b]["interactive"] for b in ui.buttons] == [False] * 4
    assert [last[b]["interactive"] for b in ui.buttons] == [True] * 4 and last[ui.text] == ""
    assert ui.text not in outs[-2]  # the question stays in the box until both answers are in
    assert last[ui.heads[0]] == "### Model A" and "What is the capital" in last[ui.question]
    assert {last[ui.answers[0]], last[ui.answers[1]]} == {"Paris is the capital.", "It is Paris."}

    shown = h.vote_button("tie", "same", session, last[ui.state])
    rnd = shown[ui.state].current
    assert shown[ui.heads[0]] == f"### A: {rnd.models[0]}" and shown[ui.reason] == ""
    assert [shown[b]["interactive"] for b in ui.buttons] == [False] * 4 and shown[ui.details]["choice"] == "tie"
    with pytest.raises(gr.Error, match="already has your vote"):
        h.vote_button("A", "", session, shown[ui.state])

    existing = ChatState()  # an ongoing chat: its state is not written back (the Chat tab may be answering)
    outs = list(h.ask_text("again", existing, SETTINGS, shown[ui.state], (RANDOM, RANDOM)))
    assert not any(ui.chat_state in o for o in outs) and outs[-1][ui.state].rounds == 2
    votes_session = h.vote("B", "", existing, outs[-1][ui.state])[ui.state].current.vote["session"]
    assert votes_session == existing.session
    with pytest.raises(gr.Error, match="message is empty"):
        list(h.ask_text("   ", existing, SETTINGS, outs[-1][ui.state], (RANDOM, RANDOM)))


def test_configured_checkpoints_join_the_compare_systems(monkeypatch, tmp_path):
    from blsp_demo.app.settings import AppSettings
    from blsp_demo.app.services import EnginePool, Services

    monkeypatch.setenv("BLSP_COMPARE_MODELS", " ./ckpt/llasm-tiny , org/blsp-7b,")
    settings = AppSettings.from_env(model="some/checkpoint", data_dir=tmp_path)
    assert settings.extra_models == ("./ckpt/llasm-tiny", "org/blsp-7b")
    services = Services.create(settings, pool=EnginePool(lambda spec: FakeEngine(spec)))
    from blsp_demo.engine.registry import REGISTRY

    assert Arena(services).systems == ["some/checkpoint", *REGISTRY, "./ckpt/llasm-tiny", "org/blsp-7b"]
    assert {"micro-blsp", "micro-cascade", "micro-text", "micro-ctc"} <= set(REGISTRY)
