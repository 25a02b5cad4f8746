"""The engine on tiny random models: KV-cache reuse, isolation, the shared system-prompt cache,
streaming, batches, bad input."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import soundfile as sf
import torch

from blsp_demo.audio import AudioError
from blsp_demo.options import GenerationOptions
from blsp_demo.conversation import Conversation
from blsp_demo.engine.build import blsp_engine, cascade_engine, text_engine
from blsp_demo.engine.chat import ChatEngine, EngineLimits
from blsp_demo.engine.plan import shared_piece_count
from blsp_demo.prompts import TEMPLATES, Bos, Speech, get_template, render

GREEDY = GenerationOptions(max_new_tokens=6)


@pytest.fixture(scope="module")
def parts(official_checkpoint):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    from blsp_demo.model.blsp import BlspModel

    return (BlspModel.from_pretrained(official_checkpoint).eval(), AutoTokenizer.from_pretrained(official_checkpoint),
            WhisperFeatureExtractor.from_pretrained(official_checkpoint))


def make_engine(parts, template: str = "blsp", share_prefix: bool = True, max_shared_prefixes: int = 8,
                max_context: int | None = None, **kw) -> ChatEngine:
    model, tok, fx = parts
    limits = EngineLimits(max_context=max_context, max_shared_prefixes=max_shared_prefixes if share_prefix else 0)
    return blsp_engine(model, tok, fx, template=get_template(template), model_id="tiny", limits=limits, **kw)


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
    shared = engine.plan(b, engine.cache_for("scratch")).shared
    assert shared == 1  # only the BOS (the blsp template has no system prompt) is shared
    assert engine.respond(b, GREEDY).cached_tokens == shared
    # An edited history reuses only the positions before the edit.
    a2 = a.add_reply("one two").add_text("hello")
    engine.respond(a2, GREEDY)
    edited = Conversation(turns=(a2.turns[0], a2.turns[1].__class__("assistant", "three four"), a2.turns[2]), id=a2.id)
    r = engine.respond(edited, GREEDY)
    prefix = engine.plan(Conversation(turns=edited.turns[:1], id="x"), engine.cache_for("scratch"))
    assert r.cached_tokens == len(prefix.ids)
    engine.forget(a.id)
    assert engine.respond(a, GREEDY).cached_tokens == shared


# ---- the shared system-prompt cache ----------------------------------------------------------------
def test_shared_prefix_is_bos_and_system_segment_for_every_template():
    """The shared pieces are the same for any first turn (speech, instruction, text, longer history),
    and never hold speech or user text."""
    for tpl in TEMPLATES.values():
        for system in (None, "", "Be brief."):
            convs = [Conversation(system=system).add_speech("/x.wav"),
                     Conversation(system=system).add_speech("/x.wav", instruction="Please repeat."),
                     Conversation(system=system).add_text("hello"),
                     Conversation(system=system).add_text("hello").add_reply("hi").add_text("again")]
            text = system if system is not None else tpl.system_default
            starts = set()
            for conv in convs:
                pieces = render(tpl, conv)
                n = shared_piece_count(tpl, text, pieces)
                assert n < len(pieces) and not any(isinstance(p, Speech) for p in pieces[:n])
                assert not any("hello" in getattr(p, "text", "") or "repeat" in getattr(p, "text", "")
                               for p in pieces[:n])
                starts.add(tuple(pieces[:n]))
            assert len(starts) == 1, (tpl.name, system)
            start = starts.pop()
            assert isinstance(render(tpl, convs[0])[0], Bos) == (start[:1] == (Bos(),))  # an opening BOS is shared
            assert bool(text) == (len(start) > sum(isinstance(p, Bos) for p in start)), (tpl.name, system)


def spoken(clips, name: str = "a", system: str | None = None) -> Conversation:
    return Conversation(system=system).add_speech(clips[name])


def test_new_conversations_reuse_the_shared_system_prompt(parts, clips):
    engine, plain = make_engine(parts, "chatml"), make_engine(parts, "chatml", share_prefix=False)
    plan = engine.plan(spoken(clips), engine.cache_for("scratch"))
    system = engine.tokenize(get_template("chatml").system_format.format(system=get_template("chatml").system_default))
    assert plan.shared == len(system) and plan.ids[:plan.shared] == system
    first, second = engine.respond(spoken(clips), GREEDY), engine.respond(spoken(clips, "b"), GREEDY)
    assert first.cached_tokens == 0 and first.prefill_tokens == len(plan.ids)  # nothing shared yet
    total = len(engine.plan(spoken(clips, "b"), engine.cache_for("scratch")).ids)
    assert second.cached_tokens == plan.shared and second.prefill_tokens == total - plan.shared
    assert len(engine.prefixes) == 1
    # The same greedy text as prefilling everything, and the same logits within float noise.
    for conv, got in ((spoken(clips), first), (spoken(clips, "b"), second)):
        ref = plain.respond(conv, GREEDY)
        assert ref.text == got.text and ref.cached_tokens == 0
    seed = engine.prefixes.copy(plan.shared_keys)
    shared_logits, _ = engine._forward(plan.ids[plan.shared:], plan.frames_from(plan.shared), seed, plan.shared)
    full_logits, _ = engine._forward(plan.ids, plan.frames_from(0), engine._new_cache(), 0)
    torch.testing.assert_close(shared_logits, full_logits, atol=1e-5, rtol=1e-4)
    # Later turns reuse the conversation's own cache, as before; a forgotten one starts over.
    conv = spoken(clips)
    reply = engine.respond(conv, GREEDY)
    turn2 = engine.respond(conv.add_reply(reply.text).add_text("hello world"), GREEDY)
    assert turn2.cached_tokens > len(plan.ids)
    engine.forget(conv.id)
    assert engine.respond(conv, GREEDY).cached_tokens == plan.shared


def test_different_system_prompts_do_not_share(parts, clips):
    engine, plain = make_engine(parts, "chatml"), make_engine(parts, "chatml", share_prefix=False)
    engine.respond(spoken(clips), GREEDY)
    brief = engine.respond(spoken(clips, system="Be brief."), GREEDY)
    assert brief.cached_tokens == 0 and len(engine.prefixes) == 2
    assert brief.text == plain.respond(spoken(clips, system="Be brief."), GREEDY).text
    again = engine.respond(spoken(clips, "b", system="Be brief."), GREEDY)
    assert again.cached_tokens == engine.plan(spoken(clips, system="Be brief."), engine.cache_for("x")).shared
    none = engine.respond(spoken(clips, system=""), GREEDY)  # no system prompt: nothing to share
    assert none.cached_tokens == 0 and len(engine.prefixes) == 2


def test_decoding_never_changes_the_shared_cache(parts, clips):
    engine = make_engine(parts, "chatml")
    engine.respond(spoken(clips), GREEDY)
    keys = engine.plan(spoken(clips), engine.cache_for("scratch")).shared_keys
    before = [(k.clone(), v.clone()) for k, v, _ in engine.prefixes.copy(keys)]
    convs = [spoken(clips, "b"), spoken(clips), Conversation().add_text("hello world"), spoken(clips, "b")]
    got = [engine.respond(c, GREEDY.replace(max_new_tokens=10)) for c in convs]
    after = list(engine.prefixes.copy(keys))
    assert all(torch.equal(k0, k1) and torch.equal(v0, v1) for (k0, v0), (k1, v1, _) in zip(before, after))
    fresh = make_engine(parts, "chatml", share_prefix=False)
    assert [r.text for r in got] == [fresh.respond(c, GREEDY.replace(max_new_tokens=10)).text for c in convs]
    assert all(r.cached_tokens == len(keys) for r in got)


def test_shared_prefix_under_concurrent_conversations(parts, clips):
    engine = make_engine(parts, "chatml", max_shared_prefixes=2)
    convs = [spoken(clips, "ab"[i % 2], system=f"System {i % 3}.") for i in range(9)]
    with ThreadPoolExecutor(max_workers=4) as pool:  # an exception in a thread is raised here
        results = list(pool.map(lambda c: engine.respond(c, GREEDY), convs))
    assert len(engine.prefixes) == 2  # bounded: the least recently used prompt start was dropped
    plain = make_engine(parts, "chatml", share_prefix=False)
    assert [r.text for r in results] == [plain.respond(c, GREEDY).text for c in convs]


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
    model, tok, _ = parts
    asr = RecordingAsr()
    engine = cascade_engine(model.llama_model, tok, get_template("blsp"), asr, model_id="tiny-cascade")
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
    engine = text_engine(model.llama_model, tok, get_template("blsp"), model_id="tiny-text")
    with pytest.raises(ValueError, match="transcript"):
        engine.respond(Conversation().add_speech(clips["a"]), GREEDY)
    r = engine.respond(Conversation().add_speech(clips["a"], transcript="hello world"), GREEDY)
    assert r.transcript == "hello world" and r.new_tokens > 0


def test_text_stream_holds_back_partial_stop_strings():
    from blsp_demo.engine.decoding import TextStream

    class CharTok:  # one character per id
        def decode(self, ids, skip_special_tokens=True):
            return "".join(chr(i) for i in ids)

    stream = TextStream(CharTok(), ("###[Human]",), [])
    out = "".join(stream.push(ord(c)) for c in "Paris.\n\n###[Hu")
    assert out == "Paris.\n\n" and not stream.stopped
    out += "".join(stream.push(ord(c)) for c in "man]")
    assert stream.stopped and out.strip() == "Paris." and stream.final_text() == "Paris."
