"""LLaSM on tiny random checkpoints in the released layout (tests/tiny_llasm.py): loading with no
missing or unexpected keys, token ids by LLaSM's official tokenization rules, the 64 audio
positions filled with projected Whisper decoder states, chat with cache reuse, the CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from blsp_demo.options import GenerationOptions
from blsp_demo.conversation import Conversation
from blsp_demo.engine.cache import ChatCache
from blsp_demo.engine.loading import load_engine
from blsp_demo.model.tokens import SPEECH_PLACEHOLDER
from blsp_demo.weights.sources import WeightsError

ROOT = Path(__file__).resolve().parents[1]
GREEDY = GenerationOptions(max_new_tokens=5)
SYSTEM = ("You are a helpful language and speech assistant. You are able to understand the speech content "
          "that the user provides, and assist the user with a variety of tasks using natural language.")
AUDIO = "<au_start>" + "<au_patch>" * 64 + "<au_end>"  # one speech turn's content


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from tiny_llasm import write_llasm_checkpoint, write_whisper_tower

    root = tmp_path_factory.mktemp("llasm")
    tower = write_whisper_tower(root / "whisper-tower")
    return {"tower": tower, "cllama2": write_llasm_checkpoint(root / "llasm-cllama2", tower),
            "baichuan": write_llasm_checkpoint(root / "llasm-baichuan", tower, baichuan=True)}


@pytest.fixture(scope="module")
def engine(folders):
    return load_engine(str(folders["cllama2"]), device="cpu")


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    d = tmp_path_factory.mktemp("clips")
    rng = np.random.default_rng(3)
    out = {}
    for name, seconds in [("a", 1.5), ("long", 35.0)]:
        t = np.arange(int(16000 * seconds)) / 16000
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(200, 800) * t) + rng.normal(0, 0.01, t.size)
        sf.write(d / f"{name}.wav", x.astype(np.float32), 16000, subtype="FLOAT")
        out[name] = str(d / f"{name}.wav")
    return out


def two_turns(clip: str) -> Conversation:
    """Speech, an answer, then text: the conversation whose prompt the rules below spell out."""
    return Conversation().add_speech(clip).add_reply("paris is the capital").add_text("hello world")


def plan_tokens(engine, conv) -> list[int]:
    plan = engine.plan(conv, ChatCache())
    return [engine.frontend.patch_id if i == SPEECH_PLACEHOLDER else i for i in plan.ids]


# ---- the released layout --------------------------------------------------------------------
def test_checkpoint_loads_with_no_missing_or_unexpected_keys(folders):
    from blsp_demo.model.llasm import LlasmForCausalLM

    model, info = LlasmForCausalLM.from_pretrained(folders["cllama2"], output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    on_disk = torch.load(folders["cllama2"] / "pytorch_model.bin", weights_only=True)
    assert set(model.state_dict()) == set(on_disk)
    assert torch.equal(model.model.mm_projector.weight, on_disk["model.mm_projector.weight"])
    assert model.config.model_type == "llaaa" and model.config.audio_token_len == 64


def test_a_checkpoint_with_other_keys_is_refused(folders, tmp_path):
    from tiny_llasm import copy_with_config

    bad = copy_with_config(folders["cllama2"], tmp_path / "fused")
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    state["model.layers.0.self_attn.W_pack.weight"] = torch.zeros(192, 64)  # Baichuan's fused q/k/v
    torch.save(state, bad / "pytorch_model.bin")
    with pytest.raises(WeightsError, match="W_pack"):
        load_engine(str(bad), device="cpu")


def test_tokenizer_has_the_audio_tokens_in_the_official_order(engine):
    base = 360  # the tiny sentencepiece vocabulary
    assert engine.tokenizer.convert_tokens_to_ids(["<au_patch>", "<au_start>", "<au_end>"]) == [base, base + 1, base + 2]


# ---- token ids: LLaSM's infer_tokenize.py rules, restated ---------------------------------------
def official_cllama2(tok, conversations: list[dict]) -> list[int]:
    """`tokenize_Cllama2`: the system text alone (no BOS), and again at the start of the first turn;
    each human turn `[INST] {content} [/INST] ` encoded with BOS; each answer `{content} ` + EOS."""
    system = "<<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n"
    ids = tok.encode(system, add_special_tokens=False)
    conversations[0]["value"] = system + conversations[0]["value"]
    for turn in conversations:
        content = turn["value"].strip()
        if turn["from"] == "human":
            ids += tok.encode(f"[INST] {content} [/INST] ")
        elif content:
            ids += tok.encode(f"{content} ", add_special_tokens=False) + [tok.eos_token_id]
    return ids


def official_baichuan(tok, conversations: list[dict]) -> list[int]:
    """`tokenize_baichuan`: BOS, the system text, then `USER:` / `ASSISTANT:` and each content,
    every part encoded on its own; an answer ends with `</s>`."""
    ids = tok.encode(SYSTEM, add_special_tokens=False)
    for turn in conversations:
        role = {"human": "USER", "gpt": "ASSISTANT"}[turn["from"]]
        content = turn["value"].strip() + ("</s>" if role == "ASSISTANT" and turn["value"] else "")
        ids += tok.encode(role + ":", add_special_tokens=False) + tok.encode(content, add_special_tokens=False)
    return [tok.bos_token_id] + ids


def as_official(conv: Conversation) -> list[dict]:
    return [{"from": "human" if t.role == "user" else "gpt", "value": AUDIO if t.audio else t.text}
            for t in conv.turns] + [{"from": "gpt", "value": ""}]


def test_two_turn_tokens_follow_the_official_cllama2_rules(engine, clips):
    tok = engine.tokenizer
    conv = two_turns(clips["a"])
    ids = plan_tokens(engine, conv)
    assert ids == official_cllama2(tok, as_official(conv))
    # Spelled out: system alone; BOS [INST] system + audio [/INST]; answer + EOS; BOS [INST] text [/INST].
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    system = "<<SYS>>\n" + SYSTEM + "\n<</SYS>>\n\n"
    bos, eos = tok.bos_token_id, tok.eos_token_id
    assert ids == (enc(system) + [bos] + enc("[INST] " + system + AUDIO + " [/INST] ")
                   + enc("paris is the capital ") + [eos] + [bos] + enc("[INST] hello world [/INST] "))
    start, patch, end = tok.convert_tokens_to_ids(["<au_start>", "<au_patch>", "<au_end>"])
    at = ids.index(start)
    assert ids[at + 1: at + 65] == [patch] * 64 and ids[at + 65] == end and ids.count(patch) == 64
    assert ids.count(bos) == 2 and ids.count(eos) == 1


def test_two_turn_tokens_follow_the_official_baichuan_rules(folders, clips):
    engine = load_engine(str(folders["baichuan"]), device="cpu")
    assert engine.template.name == "baichuan"
    conv = two_turns(clips["a"])
    ids = plan_tokens(engine, conv)
    tok = engine.tokenizer
    assert ids == official_baichuan(tok, as_official(conv))
    enc = lambda s: tok.encode(s, add_special_tokens=False)  # noqa: E731
    assert ids == ([tok.bos_token_id] + enc(SYSTEM) + enc("USER:") + enc(AUDIO) + enc("ASSISTANT:")
                   + enc("paris is the capital") + [tok.eos_token_id] + enc("USER:") + enc("hello world")
                   + enc("ASSISTANT:"))


# ---- the audio path ----------------------------------------------------------------------------
def test_audio_positions_receive_projected_decoder_states(engine, folders, clips):
    from transformers import WhisperFeatureExtractor, WhisperModel

    # Independently: 30 s padded features -> whole Whisper with 64 start tokens -> mm_projector.
    samples, rate = sf.read(clips["a"], dtype="float32")
    tower = WhisperModel.from_pretrained(folders["tower"]).eval()
    feats = WhisperFeatureExtractor.from_pretrained(folders["tower"])(samples, sampling_rate=rate,
                                                                      return_tensors="pt").input_features
    assert feats.shape[-1] == 3000
    start = torch.full((1, 64), tower.config.decoder_start_token_id)
    with torch.no_grad():
        states = tower(feats, decoder_input_ids=start).last_hidden_state[0]  # (64, 32)
    weights = torch.load(folders["cllama2"] / "pytorch_model.bin", weights_only=True)
    expected = states @ weights["model.mm_projector.weight"].T + weights["model.mm_projector.bias"]  # (64, 64)

    seen = []
    hook = engine.frontend.model.model.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append(kwargs["inputs_embeds"][0].clone()), with_kwargs=True)
    try:
        conv = Conversation().add_speech(clips["a"])
        engine.respond(conv, GREEDY)
    finally:
        hook.remove()
    prefill = seen[0]  # (L, d_llm): what the LLM received for the whole first prompt
    plan = engine.plan(conv, ChatCache())
    slots = torch.tensor(plan.ids) == SPEECH_PLACEHOLDER
    assert int(slots.sum()) == 64 and prefill.shape[0] == len(plan.ids)
    torch.testing.assert_close(prefill[slots], expected, atol=1e-4, rtol=1e-4)
    table = weights["model.embed_tokens.weight"]
    torch.testing.assert_close(prefill[~slots], table[torch.tensor(plan.ids)[~slots]])


def test_long_audio_gets_one_block_of_64_per_30_s_window(engine, clips):
    ids = plan_tokens(engine, Conversation().add_speech(clips["long"]))  # 35 s: two windows
    start, patch, end = engine.tokenizer.convert_tokens_to_ids(["<au_start>", "<au_patch>", "<au_end>"])
    assert ids.count(patch) == 128 and ids.count(start) == ids.count(end) == 2
    first = ids.index(start)
    assert ids[first: first + 132] == ([start] + [patch] * 64 + [end]) * 2


# ---- chat ---------------------------------------------------------------------------------------
def test_two_turn_chat_reuses_the_cache(folders, clips):
    engine = load_engine(str(folders["cllama2"]), device="cpu")
    calls = []
    hook = engine.frontend.tower.whisper.register_forward_hook(lambda *args: calls.append(1))
    conv = Conversation().add_speech(clips["a"])
    r1 = engine.respond(conv, GREEDY)
    turn1 = engine.plan(conv, engine.cache_for(conv.id))
    conv = conv.add_reply(r1.text).add_text("hello world")
    r2 = engine.respond(conv, GREEDY)
    hook.remove()
    assert r1.new_tokens > 0 and r2.new_tokens > 0 and r1.cached_tokens == 0
    assert len(calls) == 1  # the recording went through Whisper once
    plan = engine.plan(conv, engine.cache_for(conv.id))
    assert r2.cached_tokens >= len(turn1.ids) and r2.cached_tokens + r2.prefill_tokens == len(plan.ids)
    # Turn 2 prefills only: the last answer token, EOS, and `BOS [INST] hello world [/INST] `.
    assert r2.prefill_tokens <= 2 + 1 + len(engine.tokenize("[INST] hello world [/INST] "))
    cold = load_engine(str(folders["cllama2"]), device="cpu")
    cold.cache_for(conv.id).reply_ids.update(engine.cache_for(conv.id).reply_ids)
    r2_cold = cold.respond(conv, GREEDY)
    assert r2_cold.cached_tokens == 0 and r2_cold.text == r2.text


def test_a_missing_audio_tower_says_what_to_pass(folders, tmp_path, monkeypatch):
    from tiny_llasm import copy_with_config

    elsewhere = copy_with_config(folders["cllama2"], tmp_path / "released",
                                 mm_audio_tower="/data/models/whisper-large-v2")
    monkeypatch.delenv("LLASM_AUDIO_TOWER", raising=False)
    with pytest.raises(WeightsError, match="audio_tower=.*LLASM_AUDIO_TOWER"):
        load_engine(str(elsewhere), device="cpu")
    assert load_engine(str(elsewhere), device="cpu", audio_tower=str(folders["tower"])).frontend.tower.width == 32
    monkeypatch.setenv("LLASM_AUDIO_TOWER", str(folders["tower"]))
    assert load_engine(str(elsewhere), device="cpu").name == "llasm"


def test_cli_chat_answers_as_json(folders):
    env = {**os.environ, "BLSP_THREADS": "1", "BLSP_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "blsp_demo", "chat", "--model", str(folders["cllama2"]),
                           "--text", "hi", "--json", "--max-new-tokens", "4"],
                          capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert {"response", "ttft_s", "total_s", "new_tokens"} <= set(out)
    assert out["system"] == "llasm" and 0 < out["new_tokens"] <= 5


@pytest.mark.slow
def test_llasm_checkpoint_chats_through_the_app(folders, clips, tmp_path):
    """A LLaSM-layout folder as the app's model: a spoken turn and a typed turn over the public API."""
    from conftest import free_port
    from gradio_client import Client, handle_file

    from blsp_demo.app.settings import AppSettings
    from blsp_demo.app.store import read_records
    from blsp_demo.ui import Services, build_demo, launch_options

    spec = str(folders["cllama2"])
    services = Services.create(AppSettings(model=spec, data_dir=tmp_path / "data"))
    demo = build_demo(services)
    demo.launch(**launch_options(services, server_port=free_port(), prevent_thread_lock=True, quiet=True))
    try:
        client = Client(demo.local_url, verbose=False)
        spoken = ROOT / "examples" / "capital_of_france.wav"  # speech: the app refuses audio without any
        history, details, status, _ = client.predict(handle_file(str(spoken)), "", api_name="/chat_audio")
        assert history[-1]["role"] == "assistant", status
        history, details, status, _ = client.predict("hello world", api_name="/chat_text")
        assert history[-1]["role"] == "assistant", status
    finally:
        demo.close()
    turns = [r for r in read_records(tmp_path / "data").records if r["kind"] == "turn"]
    assert len(turns) == 2 and {t["modality"] for t in turns} == {"speech", "text"}
    assert all(t["engine"] == "llasm" and t["model"] == spec and t["response"] for t in turns), turns
