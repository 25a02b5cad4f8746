"""The micro-blsp pipeline end to end at toy size, and the shipped adapter (slow: real weights)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHIPPED = ROOT / "blsp_demo" / "weights" / "micro-blsp"


@pytest.mark.slow
def test_the_whole_pipeline_runs_at_toy_size(tmp_path):
    """corpus -> features -> step 1 -> CTC warm start -> step 2 -> export, as one command."""
    env = {**os.environ, "BLSP_THREADS": "1", "PYTHONPATH": str(ROOT)}
    work, out = tmp_path / "work", tmp_path / "exported"
    cmd = [sys.executable, "-m", "blsp_demo.train.micro", "run", "--work", str(work), "--tiny", "--clips", "14",
           "--train-clips", "6", "--generate", "3", "--ctc-steps", "3", "--steps", "4", "--batch-size", "2",
           "--export", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=900)
    targets = [json.loads(l) for l in (work / "targets.jsonl").read_text().splitlines()]
    assert len(targets) == 3 and all(t["target"] for t in targets if not t["filtered"])
    import torch

    blob = torch.load(work / "step2" / "last.pt", weights_only=False)
    assert blob["state"]["step"] == 4
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["components"]["adapter"]["sha256"] and (out / "adapter.safetensors").is_file()
    from safetensors.torch import load_file

    exported = load_file(str(out / "adapter.safetensors"))
    vocab = json.loads((work / "ctc_vocab.json").read_text())
    assert cfg["speech_compression"] == "ctc-soft" and cfg["ctc_vocab_size"] == len(vocab)
    assert exported["ctc.vocab"].dtype == torch.int64 and exported["ctc.vocab"].tolist() == vocab  # ids stay exact
    # Rerunning resumes: every stage finds its output and step 2 is already at its last step.
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=900)
    assert torch.load(work / "step2" / "last.pt", weights_only=False)["state"]["step"] == 4


needs_adapter = pytest.mark.skipif(not (SHIPPED / "adapter.safetensors").is_file(),
                                   reason="the micro-blsp adapter has not been trained and committed yet")


@pytest.mark.slow
@needs_adapter
def answer_spoken(spec: str, question, max_new_tokens: int):
    """The engine of `spec` and its answer to one spoken question."""
    from blsp_demo.options import GenerationOptions
    from blsp_demo.conversation import Conversation
    from blsp_demo.engine.loading import load_engine

    engine = load_engine(spec)
    return engine, engine.respond(Conversation().add_speech(str(question)), GenerationOptions(max_new_tokens=max_new_tokens))


def test_shipped_micro_blsp_answers_speech(tts_question):
    engine, r = answer_spoken("micro-blsp", tts_question, 16)
    assert engine.name == "blsp" and engine.frontend.window == "trimmed"
    assert r.new_tokens > 0 and r.text.strip()


@pytest.mark.slow
@needs_adapter
def test_a_damaged_adapter_is_refused(tmp_path):
    from blsp_demo.engine.loading import load_engine
    from blsp_demo.weights.sources import WeightsError

    folder = tmp_path / "micro-copy"
    shutil.copytree(SHIPPED, folder)
    data = bytearray((folder / "adapter.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (folder / "adapter.safetensors").write_bytes(bytes(data))
    with pytest.raises(WeightsError, match="sha256"):
        load_engine(str(folder))


@pytest.mark.slow
@needs_adapter
def test_micro_ctc_transcribes_with_the_adapters_ctc_head(tts_question):
    engine, r = answer_spoken("micro-ctc", tts_question, 8)
    assert engine.name == "ctc" and engine.model_id == "micro-ctc"  # named after its system (issue 13)
    assert r.transcript and r.new_tokens > 0  # the CTC head's reading, then the LLM's answer to it


@pytest.mark.slow
def test_the_whisper_decoder_recipe_runs_at_toy_size(tmp_path):
    """corpus -> spoken questions -> step 1 -> decoder states -> regression init -> step 2 -> export."""
    env = {**os.environ, "BLSP_THREADS": "1", "PYTHONPATH": str(ROOT)}
    work, out = tmp_path / "work", tmp_path / "exported"
    cmd = [sys.executable, "-m", "blsp_demo.train.micro", "run", "--recipe", "whisper-decoder", "--work", str(work),
           "--tiny", "--clips", "12", "--questions", "4", "--repeat-rows", "2", "--generate", "4", "--steps", "2",
           "--batch-size", "2", "--export", str(out)]
    subprocess.run(cmd, check=True, env=env, cwd=ROOT, timeout=900)
    import torch

    assert torch.load(work / "step2-decoder" / "last.pt", weights_only=False)["state"]["step"] == 2
    report = torch.load(work / "decoder_init.pt", weights_only=False)["report"]
    assert report["pairs"] > 0 and report["linear"]["cosine"] > 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["speech_compression"] == "whisper-decoder" and cfg["components"]["adapter"]["sha256"]
    from blsp_demo.weights.checkpoints import load_micro_blsp
    from blsp_demo.weights.devices import Placement

    model, *_ = load_micro_blsp(out, Placement(torch.device("cpu"), torch.float32))  # loads strictly
    assert model.reads_decoder


@pytest.mark.slow
def test_micro_blsp_v3_is_whispers_reading_with_no_trained_parameters(tts_question):
    """micro-blsp-v3 ships only its config: the adapter is zero, and the speech positions of a clip
    Whisper reads with confidence are (nearly) the LLM's own embeddings of Whisper's transcript."""
    import torch

    from blsp_demo.audio import load_audio
    from blsp_demo.engine.asr import whisper_asr
    from blsp_demo.engine.registry import REGISTRY
    from blsp_demo.model.encoder import log_mel

    folder = REGISTRY["micro-blsp-v3"].folder
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json"]
    engine, r = answer_spoken("micro-blsp-v3", tts_question, 16)
    assert engine.revision.startswith("micro-blsp-v3@untrained") and r.text.strip()
    model = engine.frontend.model
    assert all(float(p.abs().max()) == 0 for p in model.decoder_adapter.parameters())
    samples = load_audio(str(tts_question))
    samples = getattr(samples, "samples", samples)
    heard = whisper_asr(torch.device("cpu"))(samples)
    with torch.no_grad():
        frames, n = model.speech_embeddings(*log_mel(engine.frontend.feature_extractor, samples, "full"))
    ids = model.llm_tokenize(heard)[0]
    table = model.llama_model.get_input_embeddings().weight
    assert int(n[0]) == len(ids)  # the cascade's Whisper reads this clip the same way
    cos = torch.nn.functional.cosine_similarity(frames[0, : len(ids)].float(), table[ids].float(), dim=-1)
    assert float(cos.mean()) > 0.9
