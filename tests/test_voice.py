"""The voice assistant's core on real parts (espeak-ng, Silero VAD) and a fake engine: sentence
splitting while an answer streams, spoken replies (first audio before the answer is complete,
kept only with consent, deleted with the session), VAD segmentation of a live stream, the
hands-free state machine (question on a pause, barge-in), and the persona in the turn record."""

from __future__ import annotations

import io
import subprocess
import time

import numpy as np
import pytest
import soundfile as sf

from blsp_demo.app.handsfree import HandsFree
from blsp_demo.app.persona import PRESETS, describe, for_engine, has_system_slot, persona_text
from blsp_demo.app.session import Chat, ChatSettings, ChatState, UserInput
from blsp_demo.app.speech_out import Espeak, SentenceStream, SpokenReply, split_sentences
from blsp_demo.app.store import read_records
from blsp_demo.app.vad import Segmenter, VadOptions, to_mono_16k
from blsp_demo.app.voice_turn import latency_line, new_reply, spoken_turn
from blsp_demo.conversation import Conversation
from blsp_demo.prompts import TEMPLATES
from test_ui_handlers import FakeEngine, make_services

ANSWER = ("Paris is the capital of France. ", "It is a large city on the river Seine. ", "Many people visit it.")


def spoken(text: str, folder, rate: int = 48000, lead_s: float = 0.5, tail_s: float = 1.5) -> np.ndarray:
    """espeak-ng speech at `rate` as int16 with silence before and after (what a microphone sends)."""
    raw = folder / "raw.wav"
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "120", "-w", str(raw), text], check=True)
    x, sr = sf.read(raw, dtype="float32")
    x = to_mono_16k(sr, x)
    x = np.concatenate([np.zeros(int(16000 * lead_s), np.float32), x, np.zeros(int(16000 * tail_s), np.float32)])
    from scipy.signal import resample_poly
    return (resample_poly(x, rate // 1000, 16) * 32000).astype(np.int16)


def feed(target, audio: np.ndarray, rate: int = 48000, chunk_s: float = 0.25, **kw):
    step = int(rate * chunk_s)
    out = []
    for i in range(0, len(audio), step):
        out += target(rate, audio[i:i + step], **kw) if kw else target(rate, audio[i:i + step])
    return out


# ---- sentences ---------------------------------------------------------------------------------
def test_sentences_complete_only_once_the_space_after_them_arrives():
    assert split_sentences("Paris is the capital of France.") == ([], "Paris is the capital of France.")
    done, rest = split_sentences("Paris is the capital of France. It is e.g. big, 3.5 km wide. And")
    assert done == ["Paris is the capital of France.", "It is e.g. big, 3.5 km wide."] and rest == "And"
    stream, text, got = SentenceStream(), "".join(ANSWER), []
    for n in range(1, len(text) + 1):  # fed character by character, as a stream could
        got += stream.push(text[:n])
    assert got + stream.flush(text) == [a.strip() for a in ANSWER]
    assert stream.flush(text) == []


# ---- spoken replies --------------------------------------------------------------------------
def test_first_sentence_is_spoken_before_the_answer_is_complete():
    reply = SpokenReply(Espeak(), time.perf_counter())
    reply.on_text(ANSWER[0] + ANSWER[1][:10])
    deadline = time.monotonic() + 10
    while not reply.chunks and time.monotonic() < deadline:
        time.sleep(0.01)
    first = reply.ready()
    assert [c.sentence for c in first] == ["Paris is the capital of France."]
    assert sf.info(io.BytesIO(first[0].wav)).duration > 1.0  # real speech, not an empty file
    fields = reply.on_done("".join(ANSWER))
    assert [c.sentence for c in reply.ready()] == [a.strip() for a in ANSWER[1:]]
    assert 0 < fields["first_audio_s"] < 10 and fields["question_end_ttft_s"] <= fields["first_audio_s"]
    whole = sf.read(io.BytesIO(reply.audio()))[0]
    assert len(whole) / 22050 == pytest.approx(reply.duration_s, abs=0.01)


def test_timings_only_when_nothing_is_spoken():
    reply = SpokenReply(None, time.perf_counter())
    reply.on_text("Paris is the capital of France. It")
    fields = reply.on_done("Paris is the capital of France. It is.")
    assert reply.chunks == [] and fields["first_audio_s"] is None and fields["question_end_ttft_s"] >= 0
    assert latency_line(fields, spoken_question=True).startswith("end of speech \u2192 first token")


def test_missing_espeak_is_a_clear_error():
    from blsp_demo.app.speech_out import TtsError

    with pytest.raises(TtsError, match="not installed"):
        Espeak(binary="no-such-espeak").synthesize("Hello there.")


@pytest.mark.parametrize("keep", [True, False])
def test_spoken_answer_is_kept_only_with_consent_and_deleted_with_the_session(tmp_path, keep):
    services = make_services(tmp_path / "data", {"fake": FakeEngine(tokens=ANSWER)})
    chat, state = Chat(services), ChatState()
    settings = ChatSettings(model="fake", keep_audio=keep)
    reply = new_reply(chat, state, settings, time.perf_counter(), Espeak())
    steps = list(spoken_turn(chat, state, settings, UserInput(text="Capital of France?"), reply))
    assert sum(len(s.audio) for s in steps) == 3  # every sentence reached the player
    turn = steps[-1].progress.record
    assert turn["first_audio_s"] > 0 and turn["question_end_ttft_s"] >= 0
    audio = sorted((tmp_path / "data" / "audio").glob("*.wav")) if (tmp_path / "data" / "audio").exists() else []
    if not keep:
        assert turn["reply_audio_path"] is None and audio == []
        return
    assert [f"audio/{a.name}" for a in audio] == [turn["reply_audio_path"]]
    deletion = chat.delete_session(steps[-1].progress.state)[1]
    assert deletion.audio_removed == [turn["reply_audio_path"]] and not audio[0].exists()


# ---- VAD segmentation ------------------------------------------------------------------------
def test_vad_cuts_a_question_on_the_pause(tmp_path):
    audio = spoken("what is the capital of france", tmp_path)
    events = feed(Segmenter().feed, audio)
    assert [e.kind for e in events] == ["start", "end"]
    heard = len(events[1].audio) / 16000
    assert 1.2 < heard < 3.5  # the speech (espeak: about 2 s), not the silence around it
    silence = np.zeros(48000 * 3, np.int16)
    assert feed(Segmenter().feed, silence) == []  # silence is no question


def test_vad_takes_any_rate_and_channels():
    x = np.zeros((4410, 2), np.int16)
    assert to_mono_16k(44100, x).shape == (1600,)
    assert to_mono_16k(16000, np.zeros(160, np.float32)).dtype == np.float32


# ---- the hands-free state machine --------------------------------------------------------------
def test_handsfree_sends_the_question_and_barge_in_stops_the_answer(tmp_path):
    hf = HandsFree(tmp_path / "hf", VadOptions(min_silence_ms=500))
    audio = spoken("what is the capital of france", tmp_path)
    now = time.perf_counter()
    actions = feed(lambda sr, x: hf.on_audio(sr, x, now), audio)
    assert [a.kind for a in actions] == ["question"] and hf.phase(now) == "thinking"
    assert sf.info(actions[0].path).samplerate == 16000 and actions[0].speech_end < now
    hf.spoken(5.0, now)  # the first sentence is playing
    assert hf.phase(now) == "speaking" and hf.busy(now)
    hf.answered()
    assert hf.phase(now) == "speaking" and hf.phase(now + 6) == "listening"
    again = feed(lambda sr, x: hf.on_audio(sr, x, now + 1), spoken("and italy then", tmp_path))
    assert [a.kind for a in again] == ["barge", "question"] and hf.barge_ins == 1
    hf.answered()  # the second answer is complete and was not spoken
    after = feed(lambda sr, x: hf.on_audio(sr, x, now + 1), spoken("and spain", tmp_path))
    assert [a.kind for a in after] == ["question"]  # nothing playing: no barge-in


# ---- persona ---------------------------------------------------------------------------------
def test_persona_text_and_template_slots():
    assert persona_text("   ") is None and persona_text(" Be brief. ") == "Be brief."
    with pytest.raises(ValueError, match="system prompt"):
        persona_text("x" * 20_001)
    assert has_system_slot(TEMPLATES["chatml"]) and has_system_slot(TEMPLATES["llama2-inst"])
    assert has_system_slot(TEMPLATES["baichuan"]) and not has_system_slot(TEMPLATES["blsp"])
    assert "no system slot" in describe(TEMPLATES["blsp"], "Be brief.")
    assert PRESETS["default"] is None and all(PRESETS[k] for k in PRESETS if k != "default")

    class Blsp:
        template = TEMPLATES["blsp"]

    conv = Conversation(system="Be brief.").add_text("hi")
    assert for_engine(conv, Blsp()).system is None and for_engine(conv, FakeEngine()).system == "Be brief."


def test_the_persona_reaches_the_engine_and_the_record(tmp_path):
    engine = FakeEngine()
    services = make_services(tmp_path / "data", {"fake": engine})
    chat = Chat(services)
    state = ChatState(conversation=Conversation(system=PRESETS["pirate"]))
    done = list(chat.answer(state, ChatSettings(model="fake"), UserInput(text="hello")))[-1]
    assert engine.seen[-1].system == PRESETS["pirate"] and done.record["system_prompt"] == PRESETS["pirate"]
    assert chat.reset(done.state).conversation.system == PRESETS["pirate"]  # a new conversation keeps it
    turns = [r for r in read_records(tmp_path / "data").records if r["kind"] == "turn"]
    assert turns[-1]["system_prompt"] == PRESETS["pirate"]


# ---- the Dashboard's line --------------------------------------------------------------------
def test_dashboard_line_from_the_turn_records(tmp_path):
    from blsp_demo.analysis.voice_latency import voice_latencies, voice_latency_markdown
    from blsp_demo.ui.dashboard import with_voice

    records = [{"kind": "turn", "session": "a", "question_end_ttft_s": 1.0, "first_audio_s": 2.0, "hands_free": True},
               {"kind": "turn", "session": "a", "question_end_ttft_s": 3.0, "first_audio_s": None},
               {"kind": "turn", "session": "b", "question_end_ttft_s": 9.0, "first_audio_s": 9.0},
               {"kind": "turn", "session": "c", "question_end_ttft_s": 5.0, "error": "cancelled"},
               {"kind": "turn", "session": "d", "ttft_s": 0.2},  # a plain turn: no voice timings
               {"kind": "deletion", "session": "b", "deleted_session": "b"}]
    assert voice_latencies(records) == {"turns": 2, "hands_free": 1, "spoken": 1, "ttft_s": 2.0, "first_audio_s": 2.0}
    line = voice_latency_markdown(records)
    assert "first token **2.00 s**" in line and "first spoken audio **2.00 s**" in line
    assert with_voice("summary", records).endswith(line) and with_voice("summary", records[-2:]) == "summary"


# ---- the hands-free handler: a barge-in stops the running answer --------------------------------
def test_barge_in_cancels_the_running_answer_and_records_it(tmp_path):
    import json

    from blsp_demo.ui.chat import client_key
    from blsp_demo.ui.voice import VoiceHandlers

    services = make_services(tmp_path / "data", {"fake": FakeEngine(tokens=ANSWER)})
    h = VoiceHandlers(services, Chat(services), client_key)
    hf = HandsFree(tmp_path / "hf")
    wav = tmp_path / "q.wav"
    sf.write(wav, spoken("what is the capital of france", tmp_path, rate=16000), 16000)
    question = json.dumps({"path": str(wav), "speech_end": time.perf_counter()})
    steps = h.answer_question(question, hf, True, ChatState(), ChatSettings(model="fake", keep_audio=False))
    next(steps), next(steps)  # the answer has begun
    hf.barge_ins += 1  # what HandsFree.on_audio does when speech starts during the answer
    rest = list(steps)
    assert rest[-1][2].startswith("Interrupted") and 'data-phase="' in rest[-1][4]
    turns = [r for r in read_records(tmp_path / "data").records if r["kind"] == "turn"]
    assert [(t["error_code"], t["hands_free"]) for t in turns] == [("cancelled", True)]
    assert not wav.exists()  # the question's audio was not kept (Keep my audio off)
