"""The fixes behind the hardening suite, on their own (fast; the app's handlers with the fake engine of
test_ui_handlers): text that no encoder takes, non-media uploads never kept under a servable name,
a client leaving mid-answer, and the per-session gate in the handlers."""

from __future__ import annotations

import json
from types import SimpleNamespace

import gradio as gr
import pytest
from test_ui_handlers import SETTINGS, FakeEngine, make_services

from blsp_demo.app.store import Store, audio_ext, json_line, read_records
from blsp_demo.ui.chat import ChatHandlers
from blsp_demo.app.session import MAX_TEXT_CHARS, UserInput, valid_text


def test_a_lone_surrogate_becomes_a_replacement_character_and_pairs_are_joined():
    assert valid_text("a\ud800b") == "a\ufffdb"
    assert valid_text("\ud83d\ude00") == "\U0001f600"  # a pair sent as two halves
    assert UserInput(text="hi \udfff").text == "hi \ufffd"


def test_records_with_unencodable_text_are_written_as_valid_utf8(tmp_path):
    line = json_line({"text": "x\ud800y"})
    assert json.loads(line.decode("utf-8"))["text"] == "x\ufffdy"  # a lone surrogate never reaches the disk
    store = Store(tmp_path)
    store.append("turn", "s", text="bad \ud800 text")
    assert read_records(tmp_path).records[0]["text"] == "bad \ufffd text"


def test_text_over_the_limit_is_refused_with_its_length():
    with pytest.raises(ValueError, match="100,000 characters long; the limit is 20,000"):
        UserInput(text="x" * 100_000).check()
    with pytest.raises(ValueError, match="instruction is"):
        UserInput(audio="a.wav", instruction="y" * (MAX_TEXT_CHARS + 1)).check()
    assert UserInput(text="x" * MAX_TEXT_CHARS).check()


def test_only_media_extensions_are_kept_for_stored_audio():
    assert [audio_ext(n) for n in ("a.WAV", "b.webm", "c.m4a", "d.html", "e.svg", "f", "g.wav.js")] == \
        ["wav", "webm", "m4a", "bin", "bin", "bin", "bin"]


def test_a_file_that_is_not_audio_is_refused_logged_and_never_stored(tmp_path):
    services = make_services(tmp_path / "data", {"fake": FakeEngine()})
    page = tmp_path / "page.html"
    page.write_text("<script>alert(1)</script>")
    with pytest.raises(gr.Error, match="Could not read the audio"):
        list(ChatHandlers(services).chat_audio(str(page), "", None, SETTINGS))
    failed = read_records(tmp_path / "data").records[-1]
    assert failed["error_code"] == "unreadable" and failed["audio_sha256"] and failed["audio_name"] == "page.html"
    assert list((tmp_path / "data" / "audio").iterdir()) == []  # nothing servable was kept


def test_a_client_leaving_mid_answer_is_logged_as_cancelled(tmp_path):
    services = make_services(tmp_path / "data", {"fake": FakeEngine()})
    gen = ChatHandlers(services).chat_text("Tell me a long story.", None, SETTINGS)
    outs = [next(gen) for _ in range(3)]  # "Thinking…", then the first tokens
    gen.close()
    turn = read_records(tmp_path / "data").records[-1]
    assert outs[-1][0][-1]["role"] == "assistant"
    assert turn["error_code"] == "cancelled" and turn["text"] == "Tell me a long story." and turn["response"] is None


def test_the_gate_refuses_a_second_turn_of_the_same_client_and_logs_it(tmp_path):
    services = make_services(tmp_path / "data", {"fake": FakeEngine()})
    h = ChatHandlers(services)
    request = SimpleNamespace(session_hash="tab-1")
    first = h.chat_text("first", None, SETTINGS, request)
    next(first)  # the first turn is under way (its state is written only when it is done)
    state = None
    with pytest.raises(gr.Error, match="still waiting for an answer"):
        list(h.chat_text("second", state, SETTINGS, request))
    assert len(list(h.chat_text("from another tab", None, SETTINGS, SimpleNamespace(session_hash="tab-2")))) > 1
    for out in first:  # until the finished answer is shown, not until the generator is exhausted
        if isinstance(out[1], dict) and "turn_id" in out[1]:
            break
    # the person sees the answer and asks at once: admitted (the gate opened before the last output)
    assert list(h.chat_text("third", None, SETTINGS, request))[-1][1]["response"]
    list(first)
    codes = [r["error_code"] for r in read_records(tmp_path / "data").records if r["kind"] == "turn"]
    assert codes.count("rate_limited") == 1


@pytest.mark.slow
def test_two_sessions_transcribing_at_once_each_hear_their_own_question():
    """Whisper decodes through hooks on the shared model; unguarded, two sessions' speech turns at
    once mixed their transcripts ("What is the largest planet planet" for the France question) or
    failed with a KeyError. The cascade engine transcribes one clip at a time."""
    import threading

    from blsp_demo.options import GenerationOptions
    from blsp_demo.conversation import Conversation
    from blsp_demo.engine.loading import load_engine
    from blsp_demo.app.services import EXAMPLES_DIR

    engine = load_engine("micro-cascade")
    clips = {"france": EXAMPLES_DIR / "capital_of_france.wav", "planet": EXAMPLES_DIR / "largest_planet.wav"}
    barrier, heard, errors = threading.Barrier(2), {w: [] for w in clips}, []

    def session(word, path):
        for _ in range(3):
            barrier.wait(timeout=120)
            try:
                response = engine.respond(Conversation().add_speech(str(path)), GenerationOptions(max_new_tokens=1))
                heard[word].append(response.transcript.lower())
            except Exception as err:  # noqa: BLE001 - the failure under test
                errors.append(repr(err))

    threads = [threading.Thread(target=session, args=item) for item in clips.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert all("capital of france" in t and "planet" not in t for t in heard["france"]), heard
    assert all("largest planet in our solar system" in t and "france" not in t for t in heard["planet"]), heard
