"""Handlers of the Gradio app with a fake engine (same interface, fixed tokens): chat turns,
errors, labels, reset, deletion, settings, annotate, dashboard, and the public API contract."""

from __future__ import annotations

import math
import threading
from pathlib import Path

import gradio as gr
import pandas as pd
import pytest

from blsp_demo.app.settings import AppSettings
from blsp_demo.options import GenerationOptions, Response
from blsp_demo.engine.chat import StreamChunk
from blsp_demo.weights.sources import WeightsError
from blsp_demo.app.store import Store, answers_frame, read_records
from blsp_demo.ui import build_demo, launch_options
from blsp_demo.app.annotation import Filters, context_messages, export_answers, filter_answers
from blsp_demo.ui.annotate import AnnotateHandlers
from blsp_demo.ui.chat import ChatHandlers
from blsp_demo.analysis.labels import accept_rates, agreement
from blsp_demo.analysis.metrics import cohen_kappa
from blsp_demo.ui.dashboard import DashboardHandlers
from blsp_demo.app.services import EnginePool, Services, load_examples
from blsp_demo.app.session import ChatSettings

EXAMPLES = load_examples()
WAV = str(EXAMPLES[0].audio)


class FakeEngine:
    """Streams fixed tokens; remembers the conversations it saw and the caches it dropped."""

    def __init__(self, model_id="fake-model", name="cascade", tokens=("Paris", " is", " the", " capital."),
                 fail: Exception | None = None):
        self.model_id, self.name, self.revision = model_id, name, "rev1"
        self.tokens, self.fail = tokens, fail
        self.seen, self.forgotten = [], []

    def stream(self, conv, options):
        self.seen.append(conv)
        text = ""
        for i, tok in enumerate(self.tokens):
            if self.fail is not None and i == 1:  # fail mid-answer
                raise self.fail
            text += tok
            yield StreamChunk(tok, text)
        last = conv.turns[-1]
        heard = (last.transcript or "heard words") if last.audio else None
        yield StreamChunk("", text, Response(text=text, ttft_s=0.01, total_s=0.05, new_tokens=len(self.tokens),
                                             options=options, transcript=heard))

    def forget(self, conv_id):
        self.forgotten.append(conv_id)


def make_services(data_dir: Path, engines: dict) -> Services:
    def loader(spec):
        engine = engines[spec]
        if isinstance(engine, Exception):
            raise engine
        return engine

    from blsp_demo.app.limits import RateLimits, SessionGate

    settings = AppSettings(model="fake", data_dir=data_dir)
    # the tests' clients all come from 127.0.0.1: the limits count sessions, as two people's would
    return Services(settings, EnginePool(loader), Store(data_dir), EXAMPLES, list(engines),
                    gate=SessionGate(RateLimits(limit_by="session")))


@pytest.fixture
def engine():
    return FakeEngine()


@pytest.fixture
def services(tmp_path, engine):
    return make_services(tmp_path / "data", {"fake": engine, "other": FakeEngine("other-model", "blsp"),
                                             "broken": WeightsError("micro-blsp: the adapter weights are missing; "
                                                                    "train them or use micro-cascade.")})


@pytest.fixture
def h(services):
    return ChatHandlers(services)


SETTINGS = ChatSettings(model="fake")


def run(gen):
    """All outputs a generator handler yields: [(history, details, status, input, state), ...]."""
    return list(gen)


def turns(services) -> list[dict]:
    return [r for r in read_records(services.store.data_dir).records if r["kind"] == "turn"]


def text_of(message) -> str:
    return message["content"] if isinstance(message["content"], str) else ""


# ---- chat turns --------------------------------------------------------------------------------
def test_text_turn_streams_and_is_logged(h, services, engine):
    steps = run(h.chat_text("What is the capital of France?", None, SETTINGS))
    history, details, status, cleared, state = steps[-1]
    streamed = [text_of(s[0][-1]) for s in steps if s[0] and s[0][-1]["role"] == "assistant"]
    assert streamed[:4] == ["Paris", "Paris is", "Paris is the", "Paris is the capital."]
    assert [m["role"] for m in history] == ["user", "assistant"] and cleared == ""
    assert details["message_index"] == 1 and details["response"] == "Paris is the capital."
    assert "first token" in status
    (rec,) = turns(services)
    assert rec["id"] == details["turn_id"] and rec["session"] == state.session
    assert rec.items() >= {"modality": "text", "text": "What is the capital of France?", "turn_index": 0,
                           "model": "fake", "model_id": "fake-model", "revision": "rev1", "engine": "cascade",
                           "response": "Paris is the capital.", "ttft_s": 0.01, "total_s": 0.05,
                           "error": None}.items()
    assert rec["options"] == GenerationOptions().to_dict() and rec["tokens_per_s"] > 0
    assert state.conversation.turns[-1].text == "Paris is the capital."


def test_speech_turn_with_instruction_keeps_audio_once(h, services, engine):
    st = run(h.chat_text("hi", None, SETTINGS))[-1][-1]
    steps = run(h.chat_audio(WAV, "Please repeat the following words.", st, SETTINGS))
    history, details, status, cleared, state = steps[-1]
    assert cleared is None
    assert [m["role"] for m in history] == ["user", "assistant", "user", "user", "assistant"]
    assert history[2]["content"] == "Please repeat the following words."
    shown = Path(history[3]["content"]["path"])
    assert shown.parent == services.store.audio_dir and shown.read_bytes() == Path(WAV).read_bytes()
    assert details["message_index"] == 4 and "heard" in status
    conv = engine.seen[-1]
    assert conv.turns[-1].audio == WAV and conv.turns[-1].text == "Please repeat the following words."
    rec = turns(services)[-1]
    assert rec["modality"] == "speech" and rec["turn_index"] == 1 and rec["conversation"] == state.conversation.id
    assert rec["audio_path"] == f"audio/{rec['audio_sha256']}.wav" and rec["audio_kept"] is True
    assert rec["audio_sample_rate"] == 16000 and rec["audio_channels"] == 1 and 1.5 < rec["audio_duration_s"] < 4
    assert rec["transcript_heard"] == "heard words"
    run(h.chat_audio(WAV, "", state, SETTINGS))  # the same audio again: still one file
    assert len(list(services.store.audio_dir.iterdir())) == 1


def test_dont_keep_my_audio(h, services):
    settings = h.settings("fake", 0, 1, 64, 1, keep_audio=False)
    run(h.chat_audio(WAV, "", None, settings))
    rec = turns(services)[-1]
    assert rec["audio_kept"] is False and rec["audio_path"] is None and rec["audio_sha256"]
    assert list(services.store.audio_dir.iterdir()) == []


def test_example_click_sends_the_example_with_its_transcript(h, services, engine):
    index = next(i for i, ex in enumerate(EXAMPLES) if ex.instruction)
    history, details, _, _, state = run(h.chat_example(index, "ignored", None, SETTINGS))[-1]
    turn = engine.seen[-1].turns[-1]
    assert turn.transcript == EXAMPLES[index].text and turn.text == EXAMPLES[index].instruction
    assert turns(services)[-1]["transcript"] == EXAMPLES[index].text


@pytest.mark.parametrize("call, message, code", [
    (lambda h, st: h.chat_text("   ", st, SETTINGS), "message is empty", "ValueError"),
    (lambda h, st: h.chat_audio(None, "", st, SETTINGS), "No audio arrived", "empty"),
    (lambda h, st: h.chat_audio(__file__, "", st, SETTINGS), "Could not read the audio", "unreadable"),
    (lambda h, st: h.chat_text("hi", st, ChatSettings(model="broken")), "adapter weights are missing", "WeightsError"),
])
def test_errors_are_shown_logged_and_leave_the_conversation_intact(h, services, call, message, code):
    before = run(h.chat_text("first question", None, SETTINGS))[-1][-1]
    outputs = []
    with pytest.raises(gr.Error, match=message):
        for out in call(h, before):
            outputs.append(out)
    history, _, status, given_back, state = outputs[-1]
    assert state == before and history == list(before.history) and message in status
    failed = turns(services)[-1]
    assert failed["error"] and message in failed["error"] and failed["error_code"] == code
    assert failed["session"] == before.session and failed["response"] is None
    assert answers_frame(read_records(services.store.data_dir).records).shape[0] == 1  # only the good turn


def test_engine_failing_mid_answer_restores_the_conversation(tmp_path):
    bad = FakeEngine(fail=ValueError("this turn needs 3000 prompt positions; shorten it"))
    h = ChatHandlers(make_services(tmp_path, {"fake": bad}))
    with pytest.raises(gr.Error, match="shorten it"):
        outs = []
        for out in h.chat_text("a very long question", None, SETTINGS):
            outs.append(out)
    assert outs[-1][0] == [] and outs[-1][3] == "a very long question"  # the text is given back


def test_two_sessions_never_share_a_conversation(h, engine):
    a = h.chat_text("I am A", None, SETTINGS)
    b = h.chat_text("I am B", None, SETTINGS)
    out_a, out_b = [], []
    for x, y in zip(a, b):  # interleaved, as the queue may run them
        out_a.append(x)
        out_b.append(y)
    out_a += list(a)
    out_b += list(b)
    sa, sb = out_a[-1][-1], out_b[-1][-1]
    assert sa.session != sb.session and sa.conversation.id != sb.conversation.id
    assert "I am B" not in str(out_a[-1][0]) and "I am A" not in str(out_b[-1][0])
    assert {c.id for c in engine.seen} == {sa.conversation.id, sb.conversation.id}


def test_switching_models_keeps_the_conversation(h, services):
    st = run(h.chat_text("hello", None, SETTINGS))[-1][-1]
    st = run(h.chat_text("and now?", st, ChatSettings(model="other")))[-1][-1]
    recs = turns(services)
    assert [r["model_id"] for r in recs] == ["fake-model", "other-model"]
    assert len(st.conversation.turns) == 4 and recs[1]["engine"] == "blsp"


# ---- labels ------------------------------------------------------------------------------------
def test_thumbs_up_down_retract_and_reason(h, services):
    st = run(h.chat_text("q1", None, SETTINGS))[-1][-1]
    st = run(h.chat_text("q2", st, SETTINGS))[-1][-1]
    like = lambda index, liked: gr.LikeData(None, {"index": index, "value": "", "liked": liked})  # noqa: E731
    status, reason, st = h.on_like(st, "very good", like(1, True))
    assert "accept" in status and reason == "" and st.thumbs() == ["Like", None]
    _, _, st = h.on_like(st, "", like(3, False))
    after = run(h.chat_text("q3", st, SETTINGS))[-1][-1]  # the thumbs are shown again after a turn
    assert h.thumbs(after)["feedback_value"] == ["Like", "Dislike", None] and h.thumbs(None)["feedback_value"] == []
    _, _, st = h.on_like(st, "", like(1, ""))  # the same thumb again: retract
    assert st.thumbs() == [None, "Dislike"]
    labels = [r for r in read_records(services.store.data_dir).records if r["kind"] == "label"]
    assert [(r["message_index"], r["verdict"], r["reason"]) for r in labels] == \
        [(1, "accept", "very good"), (3, "reject", ""), (1, "unset", "")]
    assert [r["turn_id"] for r in labels] == [dict(st.answers)[1], dict(st.answers)[3], dict(st.answers)[1]]
    frame = answers_frame(read_records(services.store.data_dir).records).set_index("turn_id")
    assert pd.isna(frame.loc[dict(st.answers)[1], "label"]) and frame.loc[dict(st.answers)[3], "label"] == "reject"
    with pytest.warns(UserWarning, match="not an answer"):  # gr.Warning outside a request
        status, _, _ = h.on_like(st, "", like(0, True))  # a user message is not an answer
    assert "not an answer" in status


def test_feedback_endpoint(h, services):
    st = run(h.chat_text("q1", None, SETTINGS))[-1][-1]
    status, st = h.feedback(1, "accept", "", st)
    assert "accept" in status and st.thumbs() == ["Like"]
    assert "reject" in h.feedback(-1, " Reject ", "wrong city", st)[0]  # negative: from the end
    with pytest.raises(gr.Error, match="not an answer"):
        h.feedback(0, "accept", "", st)
    with pytest.raises(gr.Error, match="verdict must be one of"):
        h.feedback(1, "maybe", "", st)
    with pytest.raises(gr.Error, match="not finished yet"):
        h.feedback(1, "accept", "", None)  # a session with no answers yet (or a click while streaming)
    labels = [r for r in read_records(services.store.data_dir).records if r["kind"] == "label"]
    assert [(r["verdict"], r["reason"], r["source"]) for r in labels] == [("accept", "", "api"),
                                                                         ("reject", "wrong city", "api")]


# ---- reset, delete, settings ------------------------------------------------------------------
def test_reset_starts_a_new_conversation_in_the_same_session(h, services, engine):
    st = run(h.chat_text("q1", None, SETTINGS))[-1][-1]
    services.pool.get("other")
    history, details, status, new = h.reset(st)
    assert history == [] and details is None and new.session == st.session
    assert new.conversation.id != st.conversation.id and new.history == ()
    assert st.conversation.id in engine.forgotten  # its KV cache is dropped
    st2 = run(h.chat_text("q2", new, SETTINGS))[-1][-1]
    assert len(st2.conversation.turns) == 2 and turns(services)[-1]["turn_index"] == 0


def test_delete_my_data(h, services):
    mine = run(h.chat_audio(WAV, "", None, SETTINGS))[-1][-1]
    h.feedback(1, "accept", "", mine)
    other = run(h.chat_text("someone else", None, SETTINGS))[-1][-1]
    history, _, status, new = h.delete_my_data(mine)
    assert history == [] and "2 records" in status and "1 audio files removed" in status
    assert new.session != mine.session
    assert list(services.store.audio_dir.iterdir()) == []
    frame = answers_frame(read_records(services.store.data_dir).records)
    assert list(frame["session"]) == [other.session]


def test_settings_and_presets(h):
    s = h.settings("other", 0.7, 0.9, 32, 2, True)
    assert s == ChatSettings("other", GenerationOptions(max_new_tokens=32, temperature=0.7, top_p=0.9, num_beams=2))
    assert h.preset("translate", "French", "") == "Please translate the following English text into French text."
    assert "greeting, other" in h.preset("intent", "German", "greeting, other")
    assert h.preset("none", "German", "") == ""


def test_engine_pool_loads_each_model_once_under_concurrency():
    calls = []
    gate = threading.Event()

    def slow_loader(spec):
        calls.append(spec)
        gate.wait(5)
        return FakeEngine(spec)

    pool = EnginePool(slow_loader)
    got = []
    threads = [threading.Thread(target=lambda: got.append(pool.get("m"))) for _ in range(4)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join()
    assert calls == ["m"] and len({id(e) for e in got}) == 1
    pool.forget("conv-1")
    assert got[0].forgotten == ["conv-1"]


# ---- annotate ----------------------------------------------------------------------------------
@pytest.fixture
def logged(h, services):
    """Two sessions: a speech then a text turn (labelled), and one text turn by another model."""
    st = run(h.chat_audio(WAV, "", None, SETTINGS))[-1][-1]
    st = run(h.chat_text("follow-up", st, SETTINGS))[-1][-1]
    h.feedback(3, "reject", "too short", st)
    run(h.chat_text("other model", None, ChatSettings(model="other")))
    return st


def test_annotate_filters_select_label_and_export(services, logged, tmp_path):
    a = AnnotateHandlers(services)
    table, rows, models, summary = a.refresh("all", "all", "all", "", "")
    assert len(table) == 3 and models["choices"] == ["all", "fake", "other"] and "1 labelled" in summary
    assert len(a.refresh("fake", "all", "all", "", "")[0]) == 2
    assert list(a.refresh("all", "speech", "all", "", "")[0]["modality"]) == ["speech"]
    assert list(a.refresh("all", "all", "reject", "", "")[0]["reason"]) == ["too short"]
    assert len(a.refresh("all", "all", "unlabelled", "", "")[0]) == 2
    assert len(a.refresh("all", "all", "all", "2999-01-01", "")[0]) == 0
    with pytest.raises(gr.Error, match="YYYY-MM-DD"):
        a.refresh("all", "all", "all", "yesterday", "")

    table, rows, _, _ = a.refresh("fake", "all", "all", "", "")  # newest first: the text follow-up
    turn_id, audio, context, info, reason = a.select(rows, gr.SelectData(None, {"index": [0, 2], "value": ""}), logged)
    assert turn_id == rows[0] and audio is None and reason == "too short" and "your label: **reject**" in info
    assert [m["role"] for m in context] == ["user", "user", "assistant", "user", "assistant"]
    assert Path(context[0]["content"]["path"]).is_file() and context[3]["content"] == "follow-up"
    _, _, _, _, _ = a.select(rows, gr.SelectData(None, {"index": [1, 0], "value": ""}))
    assert a.select(rows, gr.SelectData(None, {"index": [1, 0], "value": ""}))[1].endswith(".wav")

    status, state, table, *_ = a.label("accept", rows[1], "clear answer", None, "all", "all", "all", "", "")
    assert "accept" in status and state.session
    label = [r for r in read_records(services.store.data_dir).records if r["kind"] == "label"][-1]
    assert label.items() >= {"turn_id": rows[1], "verdict": "accept", "reason": "clear answer",
                             "source": "annotate"}.items()
    with pytest.raises(gr.Error, match="Select an answer"):
        a.label("accept", "", "", None, "all", "all", "all", "", "")

    for fmt, read in (("csv", pd.read_csv), ("jsonl", lambda p: pd.read_json(p, lines=True)),
                      ("parquet", pd.read_parquet)):
        path, agreement_path = a.export(fmt, "all", "all", "all", "", "")
        back = read(path)
        assert Path(agreement_path).name.startswith("agreement-")
        assert len(back) == 3 and {"turn_id", "label", "label_reason", "question", "response"} <= set(back.columns)
        assert sorted(back["label"].dropna()) == ["accept", "reject"]


def test_filters_and_exports_as_functions(services, logged, tmp_path):
    frame = answers_frame(read_records(services.store.data_dir).records)
    assert len(filter_answers(frame, Filters(label="accept"))) == 0
    with pytest.raises(ValueError, match="format"):
        export_answers(frame, "xlsx", tmp_path)
    assert context_messages(read_records(services.store.data_dir).records, "no-such-turn", tmp_path) == []


# ---- dashboard ---------------------------------------------------------------------------------
def test_cohen_kappa():
    accept, reject = "accept", "reject"
    assert cohen_kappa([accept, reject] * 5, [accept, reject] * 5) == 1.0
    assert math.isclose(cohen_kappa([accept, accept, reject, reject], [accept, reject, accept, reject]), 0.0)
    # observed 4/5 agree; expected .4*.2 + .6*.8 = .56
    assert math.isclose(cohen_kappa(list("aabbb"), list("abbbb")), (0.8 - 0.56) / 0.44)
    assert math.isnan(cohen_kappa([], []))
    assert math.isnan(cohen_kappa([accept] * 3, [accept] * 3))


def test_dashboard_rates_agreement_and_figures(services, logged):
    records = read_records(services.store.data_dir).records
    turn_ids = [r["id"] for r in records if r["kind"] == "turn"]
    for tid, verdict in zip(turn_ids, ["accept", "reject", "accept"]):
        services.store.append("judgement", "judge", turn_id=tid, verdict=verdict, judge_model="fake-judge")
    frame = answers_frame(read_records(services.store.data_dir).records)
    rates = accept_rates(frame).set_index(["model", "modality", "source"])
    assert rates.loc[("fake", "text", "human"), "rate"] == 0.0 and rates.loc[("fake", "text", "judge"), "n"] == 1
    assert rates.loc[("other", "text", "judge"), "rate"] == 1.0
    n, kappa, confusion = agreement(frame)
    assert n == 1 and confusion.loc["reject", "reject"] == 1
    summary, *figures, table, team_line, team_table, body = DashboardHandlers(services).refresh()
    assert body["visible"] and "human-judge: Cohen's kappa undefined on 1 answers" in team_line
    assert list(team_table["comparison"]) == ["human-judge"] * len(team_table)
    assert "**3** answers" in summary and "kappa undefined" in summary and len(table) == 4
    assert all(fig.axes for fig in figures)


def test_dashboard_with_no_data(services):
    summary, *figures, table, _, _, _ = DashboardHandlers(services).refresh()
    assert "**0** answers" in summary and table.empty and all(fig.axes for fig in figures)


# ---- the public API, with the fake engine --------------------------------------------------------
def test_public_api_contract(services):
    from gradio_client import Client, handle_file

    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=None, prevent_thread_lock=True, quiet=True))
    try:
        client = Client(demo.local_url, verbose=False)
        api = client.view_api(return_format="dict")["named_endpoints"]
        assert {k: [p["parameter_name"] for p in v["parameters"]] for k, v in api.items()} == {
            "/chat_text": ["text"], "/chat_audio": ["audio", "instruction"],
            "/feedback": ["message_index", "verdict", "reason"], "/reset": [],
            "/compare": ["audio_or_text"], "/vote": ["choice", "reason"],
            "/annotator": ["name", "passcode"], "/label": ["turn_id", "verdict", "reason"],
            "/system": ["system_prompt"]}
        history, details, status, cleared = client.predict("Hi there", api_name="/chat_text")
        assert details["message_index"] == 1 and history[-1]["content"][0]["text"] == "Paris is the capital."
        history, details, status, _ = client.predict(handle_file(WAV), "Please answer the following question.",
                                                     api_name="/chat_audio")
        assert details["message_index"] == 4 and history[3]["content"][0]["type"] == "file"
        assert "accept" in client.predict(details["message_index"], "accept", "ok", api_name="/feedback")
        with pytest.raises(Exception, match="message is empty"):
            client.predict("", api_name="/chat_text")
        assert client.predict(api_name="/reset")[0] == []
    finally:
        demo.close()


# ---- Hub push wiring -------------------------------------------------------------------------------
def test_services_push_turns_to_the_hub_dataset(tmp_path):
    from test_store import FakeHfApi, first_push

    api = FakeHfApi()
    settings = AppSettings(model="fake", data_dir=tmp_path / "data", hf_dataset_repo="me/blsp-logs")
    services = Services.create(settings, pool=EnginePool(lambda spec: FakeEngine()), hf_api=api)
    try:
        assert services.store.lock is services.scheduler.lock  # a push never sees half a line
        first_push(services.scheduler)
        run(ChatHandlers(services).chat_text("hello", None, SETTINGS))
        services.scheduler.trigger().result(timeout=30)
        (ops,) = api.commits
        (path, content), = [(p, c) for kind, p, c in ops if kind == "add"]
        assert path == f"data/records/{services.store.path.name}" and b'"response": "Paris is the capital."' in content
    finally:
        services.scheduler.stop()


def test_services_keep_logging_locally_when_the_hub_fails(tmp_path, caplog):
    from test_store import FakeHfApi

    class Offline(FakeHfApi):
        def create_repo(self, repo_id, **kw):
            raise OSError("no network")

    settings = AppSettings(model="fake", data_dir=tmp_path / "data", hf_dataset_repo="me/blsp-logs")
    services = Services.create(settings, pool=EnginePool(lambda spec: FakeEngine()), hf_api=Offline())
    assert services.scheduler is None and "not pushing to the Hub dataset me/blsp-logs" in caplog.text
    run(ChatHandlers(services).chat_text("hello", None, SETTINGS))
    assert len(turns(services)) == 1
