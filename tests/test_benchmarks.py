"""Benchmarks (issue 6): the official code path gives the engine's greedy tokens where it should (same
window), and the quick benchmark's code path runs end to end on a tiny model with the promised output.
No timing is asserted."""

from __future__ import annotations

import json
import re

import pytest
import torch

from blsp_demo.conversation import Conversation, single_turn
from blsp_demo.engine.decoding import TextStream
from evaluations.benchmarks import machine
from evaluations.benchmarks.official import OfficialPath, forced_options
from evaluations.benchmarks.speech import QUESTION_SECONDS, UserTurn, five_second_clip, question_clips
from evaluations.benchmarks.stages import add_user

FINAL = re.compile(r"^speedup_ttft_turn1=\S+ speedup_ttft_turn10=\S+ speedup_batch=\S+ decode_vs_bound=\S+ "
                   r"decode_vs_llamacpp=\S+ peak_rss_gb=\S+$")
REPLIES = ("paris is the capital of france.", "one two three four five", "hello world how are you today")


@pytest.fixture(scope="module")
def engine(official_checkpoint):
    from blsp_demo.engine.loading import load_engine

    return load_engine(str(official_checkpoint), "blsp", device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench-clips")
    return [str(five_second_clip("what is the capital of france", folder / "a.wav")),
            str(five_second_clip("one two three four five six", folder / "b.wav", voice="en-gb"))]


def text_of(engine, ids: list[int]) -> str:
    return TextStream(engine.tokenizer, engine.template.stop_strings, list(ids)).final_text()


def test_clips_are_five_seconds(clips):
    import soundfile as sf

    info = sf.info(clips[0])
    assert info.samplerate == 16000 and info.frames == int(QUESTION_SECONDS * 16000)


def test_official_path_gives_the_engines_greedy_tokens_turn_by_turn(engine, clips):
    """Same window (the tiny official checkpoint is a 30 s one): the cached engine and the official
    path, which re-encodes and re-reads everything, agree token for token on every turn."""
    assert engine.frontend.window == "full"
    official, opts, mels = OfficialPath.from_engine(engine), forced_options(6), {}
    script = [UserTurn(audio=clips[0]), UserTurn(text="hello world"), UserTurn(audio=clips[1]),
              UserTurn(text="one two three")]
    conv = Conversation()
    shared = 0
    for k, turn in enumerate(script):
        conv = add_user(conv, turn)
        r = engine.respond(conv, opts)
        t = official.respond(conv, opts, mels)
        assert len(t.ids) == 6 and len(t.token_times) == 6 and 0 < t.ttft_s <= t.total_s
        assert t.prompt_tokens == r.prefill_tokens + r.cached_tokens  # the same prompt
        if k == 0:  # turn 1: at most the conversation-independent prefix (BOS, system) is cached
            shared = engine.plan(conv, engine.cache_for(conv.id)).shared
            assert r.cached_tokens <= shared
        else:  # from turn 2 on the engine reuses the conversation's own cache
            assert r.cached_tokens > shared
        assert text_of(engine, t.ids) == r.text
        if r.finish_reason == "length":  # not cut by a stop string: every generated id is known
            assert engine.cache_for(conv.id).reply_ids[(len(conv.turns), r.text)] == t.ids
        conv = conv.add_reply(REPLIES[k % len(REPLIES)])  # fixed replies: the engine must crop its cache
    assert set(mels) == set(clips)  # the official history keeps features, not encodings


def test_official_one_at_a_time_equals_engine_batch(engine, clips):
    official, opts = OfficialPath.from_engine(engine), forced_options(5)
    convs = [single_turn(audio=clips[0]), single_turn(audio=clips[1], instruction="Please repeat the following words."),
             single_turn(text="hello world")]
    each = official.respond_each(convs, opts)
    for batch_size in (1, 3):
        batch = engine.respond_batch(convs, opts, batch_size=batch_size)
        assert [b.text for b in batch] == [text_of(engine, t.ids) for t in each]


def test_trimmed_window_reads_the_same_prompt_shape(official_checkpoint, clips):
    """The engine's trimmed window changes the features, not the number of speech positions."""
    from blsp_demo.engine.loading import load_engine

    trimmed = load_engine(str(official_checkpoint), "blsp", device="cpu", dtype="float32", window="trimmed")
    official, opts = OfficialPath.from_engine(trimmed), forced_options(3)
    r = trimmed.respond(single_turn(audio=clips[0]), opts)
    t = official.respond(single_turn(audio=clips[0]), opts)
    assert r.prefill_tokens == t.prompt_tokens and r.new_tokens == len(t.ids) == 3


def test_machine_helpers():
    wall, cpu = machine.copy_bandwidth(torch.device("cpu"), mib=8, repeats=2)
    assert wall > 0 and cpu > 0
    shared = torch.nn.Linear(4, 4, bias=False)
    model = torch.nn.Sequential(shared, torch.nn.Linear(4, 4), shared)
    assert machine.weight_bytes(model) == (16 + 16 + 4) * 4  # the shared matrix once
    from transformers import LlamaConfig

    cfg = LlamaConfig(hidden_size=64, num_attention_heads=4, num_key_value_heads=2, num_hidden_layers=3)
    assert machine.kv_bytes_per_position(cfg, torch.float32) == 2 * 3 * 2 * 16 * 4
    assert machine.reset_peak_rss() in (True, False) and machine.peak_rss_bytes() > 0
    load = machine.OtherLoad()
    assert load.cores() is None or load.cores() >= 0


def test_question_clips_cycle_voices(tmp_path):
    out = question_clips(tmp_path, 3)
    assert len(out) == 3 and all(p.endswith(".wav") for p, _ in out) and out[0][1].endswith("?")


def test_paper_shape_config_has_the_papers_shapes():
    from blsp_demo.model.blsp import BlspModel
    from evaluations.benchmarks.subjects import paper_shape_config

    cfg = paper_shape_config(vocab_size=32000, bos=1, eos=2)
    with torch.device("meta"):
        model = BlspModel(cfg)
    llm_params = sum(p.numel() for p in model.llama_model.parameters())
    assert 6.6e9 < llm_params < 6.8e9  # Llama-2-7B
    assert model.whisper_model.config.d_model == 768 and len(model.whisper_model.layers) == 12  # whisper-small
    assert cfg.encoder_window == "full"


def test_quick_benchmark_prints_the_table_and_one_summary_line(official_checkpoint, tmp_path, capsys):
    from evaluations.benchmarks.cli import main

    results = main(["--quick", "--model", str(official_checkpoint), "--device", "cpu", "--threads", "1",
                    "--out", str(tmp_path)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert FINAL.match(lines[-1]) and sum(bool(FINAL.match(x)) for x in lines) == 1
    values = dict(kv.split("=") for kv in lines[-1].split())
    assert values.pop("decode_vs_llamacpp") == "nan"  # a folder's LLM is no bundled GGUF: nothing to compare
    assert all(float(v) > 0 for v in values.values())
    assert 0.1 < float(values["peak_rss_gb"]) < 64 and results.llamacpp == []
    text = "\n".join(lines)
    for heading in ("5 s spoken question", "Conversation", "Batch:", "Limit:", "peak RSS"):
        assert heading in text
    chat = [x for x in results.samples if x.stage == "chat"]
    assert {x.turn for x in chat if x.system == "engine"} == set(range(1, 11))
    assert {x.turn for x in chat if x.system == "official"} == {1, 10}
    assert all(x.new_tokens == results.settings.chat_tokens for x in chat if x.system == "official")
    # the files a full run commits
    md = (tmp_path / "RESULTS.md").read_text()
    assert lines[-1] in md and "## Machine" in md
    assert (tmp_path / "ttft_per_turn.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((tmp_path / "results.json").read_text())["headline"]["speedup_batch"] > 0
    # RESULTS.md and the plot can be rewritten from results.json alone, keeping a hand-written analysis
    (tmp_path / "RESULTS.md").write_text(md.replace("(analysis to be written after the run)", "kept words"))
    again = main(["--rewrite", "--out", str(tmp_path)])
    assert capsys.readouterr().out.strip().splitlines()[-1] == lines[-1]
    assert "kept words" in (tmp_path / "RESULTS.md").read_text() and again.batch == results.batch


def test_profile_splits_a_turn_into_stages(engine, clips):
    from evaluations.benchmarks.profiling import profile_turns
    from evaluations.benchmarks.report import profile_markdown
    from evaluations.benchmarks.stages import QUICK

    official = OfficialPath.from_engine(engine)
    script = [UserTurn(audio=clips[0]), UserTurn(text="hello world")]
    prof = profile_turns(engine, official, script, QUICK, at=(1, 2))
    assert set(prof["stages"]) == set(prof["ops"]) == {"engine turn 1", "official turn 1", "engine turn 2",
                                                       "official turn 2"}
    assert prof["stages"]["engine turn 1"].encoder_calls == 1 and prof["stages"]["engine turn 2"].encoder_calls == 0
    assert prof["stages"]["official turn 2"].encoder_calls == 1  # the past speech turn, encoded again
    assert prof["stages"]["official turn 2"].decode_steps == QUICK.chat_tokens - 1
    assert all(ops and ops[0]["self_ms"] >= ops[-1]["self_ms"] for ops in prof["ops"].values())
    md = "\n".join(profile_markdown(prof))
    assert "| engine turn 1 |" in md and "soundfile" in md


def test_decode_probes_run_on_a_tiny_llm(engine):
    from evaluations.benchmarks import probes

    llm = engine.llm
    assert probes.matmul_floor_ms(llm) >= 0
    assert probes.decode_step_ms(llm, batch=2, context=8) > 0
    assert probes.prefill_ms(llm, 8) > 0
    assert probes.static_step_ms(llm, compiled=False) > 0


@pytest.mark.slow
def test_quick_benchmark_on_the_shipped_micro_blsp(tmp_path):
    """`python -m evaluations.benchmarks --quick` as the README gives it, on the real weights and the
    trained adapter: it runs in CI's environment and ends with the summary line (no timing asserted)."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "BLSP_THREADS": os.environ.get("BLSP_THREADS", "2"), "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-m", "evaluations.benchmarks", "--quick", "--out", str(tmp_path)],
                          cwd=root, env=env, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert FINAL.match(last), done.stdout[-2000:]
    assert all(float(v.split("=")[1]) > 0 for v in last.split())
    assert "Decode vs llama.cpp" in done.stdout and "smollm2-135m-instruct: engine (llama.cpp)" in done.stdout
    assert "micro-blsp (" in done.stdout + done.stderr  # the trained adapter, not the random-adapter fallback
    # peak_rss_gb is the serving process of the app's default model (a process of its own)
    from blsp_demo.engine.registry import DEFAULT_MODEL

    serving = next(x for x in done.stdout.splitlines() if x.strip().startswith(f"{DEFAULT_MODEL} ("))
    peak = float(serving.split("peak RSS ")[1].split(" GB")[0])
    assert f"peak_rss_gb={peak:.2f}" in last
