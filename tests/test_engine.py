"""The engine on tiny random models: KV-cache reuse, isolation, streaming, batches, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import soundfile as sf

from blsp_demo.audio import AudioError
from blsp_demo.config import GenerationOptions
from blsp_demo.conversation import Conversation
from blsp_demo.engine import BlspEngine, TextEngine
from blsp_demo.prompts import get_template

GREEDY = GenerationOptions(max_new_tokens=6)


@pytest.fixture(scope="module")
def parts(official_checkpoint):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from blsp_demo.model.blsp import BlspModel

    return (BlspModel.from_pretrained(official_checkpoint).eval(), AutoTokenizer.from_pretrained(official_checkpoint),
            WhisperFeatureExtractor.from_pretrained(official_checkpoint))


def make_engine(parts, **kw) -> BlspEngine:
    model, tok, fx = parts
    return BlspEngine(model, tok, fx, template=get_template("blsp"), model_id="tiny", **kw)


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(1)
    out = {}
    for name, seconds in [("a", 1.5), ("b", 2.0), ("long", 65.0)]:
        t = np.arange(int(16000 * seconds)) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) + rng.normal(0, 0.01, t.size)
        sf.write(d / f"{name}.wav", x.astype(np.float32), 16000)
        out[name] = str(d / f"{name}.wav")
    sf.write(d / "silent.wav", np.zeros(16000, np.float32), 16000)
    out["silent"] = str(d / "silent.wav")
    return out


def three_turns(engine, clips):
    conv = Conversation().add_speech(clips["a"])
    r1 = engine.respond(conv, GREEDY)
    conv = conv.add_reply(r1.text).add_text("hello world")
    r2 = engine.respond(conv, GREEDY)
    conv = conv.add_reply(r2.text).add_speech(clips["b"], instruction="Please repeat the following words.")
    r3 = engine.respond(conv, GREEDY)
    return conv, (r1, r2, r3)


def test_third_turn_prefills_only_its_own_tokens(parts, clips):
    engine = make_engine(parts)
    conv, (r1, r2, r3) = three_turns(engine, clips)
    assert all(r.new_tokens > 0 for r in (r1, r2, r3))
    cache = engine.cache_for(conv.id)
    plan = engine.plan(conv, cache)
    # Turn 3's new positions: the end of reply 2, the separator, "###[Human]:" + instruction,
    # the speech frames and the assistant prefix; everything before came from the cache.
    turn3 = engine.plan(conv.without_last().without_last(), cache)  # through the end of turn 2's prompt
    assert r3.cached_tokens >= len(turn3.ids)
    assert r3.cached_tokens + r3.prefill_tokens == len(plan.ids)
    new_speech = engine.speech_frames(conv.turns[-1], cache)[1].shape[0]
    suffix = len(engine.tokenize("\n\n\n")) + len(engine.tokenize("###[Human]:Please repeat the following words.")) \
        + len(engine.tokenize("\n\n\n###[Assistant]:"))
    assert r3.prefill_tokens <= new_speech + suffix + 1  # +1: the last reply token was never fed
    # The same conversation on a cold engine (same reply tokens) gives the same answer.
    cold = make_engine(parts)
    cold.cache_for(conv.id).reply_ids.update(cache.reply_ids)
    r3_cold = cold.respond(conv, GREEDY)
    assert r3_cold.cached_tokens == 0 and r3_cold.prefill_tokens == len(plan.ids)
    assert r3_cold.text == r3.text


def test_conversations_never_share_cached_positions(parts, clips):
    engine = make_engine(parts)
    a = Conversation().add_speech(clips["a"])
    engine.respond(a, GREEDY)
    b = Conversation().add_speech(clips["a"])  # same audio, another conversation: its own cache
    assert engine.respond(b, GREEDY).cached_tokens == 0
    # An edited history reuses only the positions before the edit.
    a2 = a.add_reply("one two").add_text("hello")
    engine.respond(a2, GREEDY)
    edited = Conversation(turns=(a2.turns[0], a2.turns[1].__class__("assistant", "three four"), a2.turns[2]), id=a2.id)
    r = engine.respond(edited, GREEDY)
    prefix = engine.plan(Conversation(turns=edited.turns[:1], id="x"), engine.cache_for("scratch"))
    assert r.cached_tokens == len(prefix.ids)
    engine.forget(a.id)
    assert engine.respond(a, GREEDY).cached_tokens == 0


def test_bad_audio_leaves_conversation_and_cache_untouched(parts, clips, tmp_path):
    engine = make_engine(parts)
    conv = Conversation().add_speech(clips["a"])
    conv = conv.add_reply(engine.respond(conv, GREEDY).text)
    cache = engine.cache_for(conv.id)
    keys_before = list(cache.keys)
    bad = tmp_path / "not-audio.wav"
    bad.write_text("this is text, not audio")
    for path, code in [(clips["silent"], "silent"), (str(bad), "unreadable"), (str(tmp_path / "missing.wav"), "not_found")]:
        with pytest.raises(AudioError) as err:
            engine.respond(conv.add_speech(path), GREEDY)
        assert err.value.code == code
        assert cache.keys == keys_before
    assert len(conv.turns) == 2
    r = engine.respond(conv.add_text("hello"), GREEDY)  # the conversation goes on, cache reused
    assert r.cached_tokens > 0


def test_stream_yields_tokens_as_they_come(parts, clips):
    engine = make_engine(parts)
    chunks = list(engine.stream(Conversation().add_text("hello world"), GenerationOptions(max_new_tokens=12)))
    final = chunks[-1].response
    assert final is not None and all(c.response is None for c in chunks[:-1])
    assert "".join(c.delta for c in chunks).strip() == final.text
    assert 0 < final.ttft_s <= final.total_s


def test_long_audio_is_split_into_windows_not_cut(parts, clips):
    engine = make_engine(parts)
    frames = engine.speech_frames(Conversation().add_speech(clips["long"]).turns[0], engine.cache_for("x"))[1]
    # 30 s + 30 s + 5 s windows: each 3000 mel frames -> 1500 -> 188 adapter frames, 500 -> 250 -> 32
    assert frames.shape[0] == 188 + 188 + 32


def test_context_overflow_drops_oldest_turns_with_a_notice(parts, clips):
    engine = make_engine(parts, max_context=120)
    conv = Conversation()
    for i in range(6):
        conv = conv.add_text("one two three four five six seven eight nine ten")
        r = engine.respond(conv, GREEDY)
        conv = conv.add_reply(r.text)
    assert any("Dropped the" in n for n in r.notices)
    with pytest.raises(ValueError, match="context"):
        engine.respond(Conversation().add_text("one two three " * 60), GREEDY)


def test_batch_equals_one_at_a_time(parts, clips):
    engine = make_engine(parts)
    convs = [Conversation().add_speech(clips["a"]), Conversation().add_text("hello world how are you"),
             Conversation().add_speech(clips["silent"]), Conversation().add_speech(clips["b"], instruction="Please repeat the following words.")]
    errors = {}
    batch = engine.respond_batch(convs, GREEDY, batch_size=4, on_error=lambda i, e: errors.setdefault(i, e))
    assert batch[2] is None and isinstance(errors[2], AudioError)
    for conv, got in zip(convs, batch):
        if got is not None:
            assert got.text == engine.respond(conv, GREEDY).text


class RecordingAsr:
    """An ASR with a batch entry point that records its calls (the real Whisper batch is a slow test)."""

    def __init__(self):
        self.calls: list[int] = []

    def _text(self, samples) -> str:
        return f"heard {len(samples)} samples"

    def __call__(self, samples) -> str:
        self.calls.append(1)
        return self._text(samples)

    def batch(self, clips) -> list[str]:
        self.calls.append(len(clips))
        return [self._text(c) for c in clips]


def test_cascade_batch_transcribes_every_clip_once_in_one_call(parts, clips):
    from blsp_demo.engine import CascadeEngine

    model, tok, _ = parts
    asr = RecordingAsr()
    engine = CascadeEngine(model.llama_model, tok, get_template("blsp"), asr, model_id="tiny-cascade")
    convs = [Conversation().add_speech(clips["a"]), Conversation().add_speech(clips["b"]),
             Conversation().add_speech(clips["a"]), Conversation().add_text("hello"),
             Conversation().add_speech("/no/such/file.wav")]
    errors = {}
    batch = engine.respond_batch(convs, GREEDY, batch_size=5, on_error=lambda i, e: errors.setdefault(i, e))
    assert asr.calls == [2]  # two distinct clips, one batched call; the missing file is reported per row
    assert batch[0].transcript == "heard 24000 samples" and batch[1].transcript == "heard 32000 samples"
    assert batch[4] is None and 4 in errors
    for conv, got in zip(convs[:4], batch[:4]):
        assert got.text == engine.respond(conv, GREEDY).text  # same answers as one at a time


def test_beams_and_sampling_options(parts, clips):
    engine = make_engine(parts)
    conv = Conversation().add_text("hello world")
    beam = engine.respond(conv, GREEDY.replace(num_beams=3))
    assert beam.new_tokens > 0 and any("beam" in n for n in beam.notices)
    s1 = engine.respond(conv, GREEDY.replace(temperature=1.0, top_p=0.9, seed=3, max_new_tokens=8))
    s2 = engine.respond(Conversation().add_text("hello world"), GREEDY.replace(temperature=1.0, top_p=0.9, seed=3, max_new_tokens=8))
    assert s1.text == s2.text  # seeded sampling is reproducible
    with pytest.raises(ValueError, match="top_p"):
        engine.respond(conv, GREEDY.replace(top_p=0))


def test_text_engine_needs_transcripts(parts, clips):
    model, tok, _ = parts
    engine = TextEngine(model.llama_model, tok, get_template("blsp"), model_id="tiny-text")
    with pytest.raises(ValueError, match="transcript"):
        engine.respond(Conversation().add_speech(clips["a"]), GREEDY)
    r = engine.respond(Conversation().add_speech(clips["a"], transcript="hello world"), GREEDY)
    assert r.transcript == "hello world" and r.new_tokens > 0


def test_text_stream_holds_back_partial_stop_strings():
    from blsp_demo.decoding import TextStream

    class CharTok:  # one character per id
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    stream = TextStream(CharTok(), ("###[Human]",), [])
    out = "".join(stream.push(ord(c)) for c in "Paris.\n\n###[Hu")
    assert out == "Paris.\n\n" and not stream.stopped
    out += "".join(stream.push(ord(c)) for c in "man]")
    assert stream.stopped and out.strip() == "Paris." and stream.final_text() == "Paris."
