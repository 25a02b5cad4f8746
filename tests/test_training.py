"""Behavior-alignment training on a tiny random BLSP: the loss goes down, checkpoints reload
identically and resume at the same step; the CTC warm start and step-1 filters work."""

from __future__ import annotations

import json

import pytest
import torch

from blsp_demo.train.batches import Example, length_buckets, pad_rows, prompt_ids, target_ids
from blsp_demo.train.step1 import assign_kinds, filter_reason, parse_kinds
from blsp_demo.train.step2 import Step2Trainer, TrainConfig, lr_at
from blsp_demo.train.warmstart import CtcConfig, train_ctc

SENTENCES = ["hello world how are you", "the quick brown fox jumps", "one two three four five",
             "what is the capital of france", "i am fine thank you", "six seven eight nine ten"]


@pytest.fixture()
def tiny(official_checkpoint):
    from transformers import AutoTokenizer

    from blsp_demo.model.blsp import BlspModel

    torch.manual_seed(0)
    model = BlspModel.from_pretrained(official_checkpoint)
    with torch.no_grad():  # a sharper random LLM: with the default 0.02 init its output ignores the input
        for name, p in model.llama_model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 0.25)
    tok = AutoTokenizer.from_pretrained(official_checkpoint)
    examples = [Example(f"u{i}", "Please repeat the following words.", s, s) for i, s in enumerate(SENTENCES)]
    g = torch.Generator().manual_seed(1)
    features = {e.id: torch.randn(160 + 16 * i, 32, generator=g).half() for i, e in enumerate(examples)}
    return model, tok, examples, features


def config(**kw) -> TrainConfig:
    base = dict(steps=30, batch_size=3, lr=3e-3, warmup=3, eval_every=0, llm_dtype="float32",
                template="blsp", max_target_tokens=12, checkpoint_every_s=1e9)
    return TrainConfig(**{**base, **kw})


def test_loss_goes_down_and_checkpoint_resumes(tiny, tmp_path):
    model, tok, examples, features = tiny
    trainer = Step2Trainer(model, tok, examples, features, config(), tmp_path / "run")
    first = trainer.losses(examples[:3])["loss"].item()
    state = trainer.train()
    assert state.step == 30 and (tmp_path / "run" / "last.pt").is_file() and (tmp_path / "run" / "loss.png").is_file()
    last = sum(r["loss"] for r in state.log[-5:]) / 5
    assert last < 0.7 * first, (first, last)
    # Only the adapter moved.
    assert all(not p.requires_grad for n, p in model.named_parameters() if n.startswith(("llama_model", "whisper_model")))

    # A fresh trainer resumes at the same step with identical adapter weights and optimizer state.
    clone = Step2Trainer(_reload(model), tok, examples, features, config(steps=40), tmp_path / "run")
    assert clone.resume() and clone.state.step == 30
    for (k, a), (_, b) in zip(trainer.core.state_dict().items(), clone.core.state_dict().items()):
        if k.split(".")[0] in ("subsampler", "adapter", "speech_ln"):
            assert torch.equal(a, b), k
    with torch.no_grad():
        assert clone.losses(examples[:3])["loss"].item() == pytest.approx(trainer.losses(examples[:3])["loss"].item(), abs=1e-6)
    clone.train()
    assert clone.state.step == 40 and [r["step"] for r in clone.state.log] == list(range(1, 41))


def _reload(model):
    """A second copy of the same tiny model (as a new process would load it)."""
    import copy

    fresh = copy.deepcopy(model)
    with torch.no_grad():  # scramble the adapter: resume must restore it
        for p in list(fresh.adapter.parameters()) + list(fresh.subsampler.parameters()):
            p.normal_()
    return fresh


def test_kd_and_ce_only_both_train(tiny, tmp_path):
    model, tok, examples, features = tiny
    trainer = Step2Trainer(model, tok, examples, features, config(kd_weight=0.0, steps=5), tmp_path / "ce")
    out = trainer.losses(examples[:2])
    assert "kd" not in out and out["loss"].item() == pytest.approx(out["ce"].item())
    trainer = Step2Trainer(model, tok, examples, features, config(kd_weight=1.0, steps=5), tmp_path / "kd")
    out = trainer.losses(examples[:2])
    assert out["kd"].item() >= 0 and out["loss"].item() == pytest.approx(out["ce"].item() + out["kd"].item(), rel=1e-5)


def with_ctc(model, tok, examples):
    """The tiny model with a CTC selector over the tokens of its transcripts (as the micro model)."""
    from blsp_demo.model.ctc import CtcSelector
    from blsp_demo.train.warmstart import ctc_vocab

    vocab = ctc_vocab(tok, [e.transcript for e in examples])
    model.config.speech_compression, model.config.ctc_vocab_size = "ctc", len(vocab)
    model.ctc = CtcSelector(model.config.llama_config["hidden_size"], len(vocab))
    model.ctc.set_vocab(vocab)
    return model


def test_ctc_warm_start_learns_and_selects_about_one_frame_per_token(tiny, tmp_path):
    from blsp_demo.model.ctc import greedy_classes
    from blsp_demo.train.warmstart import transcript_ids

    model, tok, examples, features = tiny
    model = with_ctc(model, tok, examples)
    log = train_ctc(model, tok, examples, features, CtcConfig(steps=80, batch_size=3, lr=5e-3, warmup=3), tmp_path / "ctc")
    assert log[0]["ctc"] > 1.0 and log[-1]["ctc"] < 0.3 * log[0]["ctc"]
    blob = torch.load(tmp_path / "ctc" / "last.pt", weights_only=False)
    assert blob["step"] == 80
    assert set(k.split(".")[0] for k in blob["adapter"]) == {"subsampler", "adapter", "speech_ln", "ctc"}
    assert torch.equal(blob["adapter"]["ctc.vocab"], model.ctc.vocab)
    # The trained head reads the training utterances; selection keeps about one frame per token.
    model.eval()
    e = examples[0]
    state = features[e.id].float()[None]
    with torch.no_grad():
        full, n_full = model.adapt(state, torch.tensor([state.shape[1]]), compress=False)
        kept, n_kept = model.adapt(state, torch.tensor([state.shape[1]]))
        best = model.ctc.logits(full, model.llama_model.get_input_embeddings().weight).argmax(-1)[0]
    decoded = [model.ctc.token_id(c) for c in greedy_classes(best)]
    assert decoded == transcript_ids(tok, e.transcript)
    assert int(n_kept) == len(decoded) < int(n_full)


def test_select_runs_averages_each_token_run():
    from blsp_demo.model.ctc import select_runs

    frames = torch.arange(12, dtype=torch.float32).reshape(6, 2)  # rows [0,1] [2,3] ... [10,11]
    best = torch.tensor([0, 5, 5, 0, 5, 7])  # blank, a, a, blank, a (a new run), b
    out = select_runs(frames, best, torch.zeros(6))
    assert out.tolist() == [[3.0, 4.0], [8.0, 9.0], [10.0, 11.0]]
    only_blank = select_runs(frames, torch.zeros(6, dtype=torch.long), torch.tensor([0.0, 0, 3, 0, 0, 0]))
    assert only_blank.tolist() == [[4.0, 5.0]]  # never empty: the most token-like frame


def test_step2_with_a_ctc_selector_adds_the_ctc_terms(tiny, tmp_path):
    model, tok, examples, features = tiny
    model = with_ctc(model, tok, examples)
    trainer = Step2Trainer(model, tok, examples, features, config(kd_weight=0.0, ctc_weight=0.5, steps=5), tmp_path / "s")
    out = trainer.losses(examples[:2])
    assert out["loss"].item() == pytest.approx(out["ce"].item() + 0.5 * (out["ctc"].item() + out["embed"].item()), rel=1e-4)


def test_batches_put_targets_after_prompts(tiny):
    model, tok, examples, _ = tiny
    from blsp_demo.prompts import get_template

    tokenize = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    tpl = get_template("blsp")
    student = prompt_ids(tpl, tokenize, tok.bos_token_id, "Please repeat the following words.", speech_len=5)
    teacher = prompt_ids(tpl, tokenize, tok.bos_token_id, "Please repeat the following words.", transcript="hello world")
    assert student.count(-200) == 5 and -200 not in teacher and student[0] == teacher[0] == tok.bos_token_id
    target = target_ids(tokenize, [tok.eos_token_id], examples[0], 40)
    batch = pad_rows([student, teacher], [target, target], 0)
    for b, prompt in enumerate([student, teacher]):
        pos = batch.target_pos[b]
        assert pos[0] == len(prompt) - 1 and len(pos) == len(target)
        assert batch.labels[b, pos[0] + 1].item() == target[0]
    buckets = length_buckets([5, 50, 6, 51, 7, 52], 2, seed=0, epoch=0)
    assert sorted(i for b in buckets for i in b) == list(range(6))
    lengths = [5, 50, 6, 51, 7, 52]
    flat = [lengths[i] for b in sorted(buckets, key=lambda b: lengths[b[0]]) for i in b]
    assert flat == sorted(lengths)  # neighbours in length share a batch


def test_step1_kinds_and_filters():
    kinds = parse_kinds("continue:3,repeat:1")
    assert kinds == {"continue": 0.75, "repeat": 0.25}
    a = assign_kinds([f"id{i}" for i in range(400)], kinds, seed=0)
    assert a == assign_kinds([f"id{i}" for i in range(400)], kinds, seed=0)
    assert 0.65 < sum(v == "continue" for v in a.values()) / 400 < 0.85
    assert filter_reason("the cat sat", "", 3, 48, "continue") == "empty"
    assert filter_reason("the cat sat", "The cat sat.", 4, 48, "continue") == "echo-only"
    assert filter_reason("the cat sat", "The cat sat on the warm mat all day.", 12, 48, "continue") is None
    assert filter_reason("the cat sat", "word " * 48, 48, 48, "continue") == "over-long"
    assert filter_reason("the cat sat", "word " * 48, 48, 48, "respond") is None
    assert lr_at(0, TrainConfig(lr=1.0, warmup=10, steps=100)) == pytest.approx(0.1)
    assert lr_at(100, TrainConfig(lr=1.0, warmup=10, steps=100)) == pytest.approx(0.1)


def test_step2_command_trains_from_audio_on_the_fly(official_checkpoint, tmp_path):
    """The scale-out entry point (what `accelerate launch -m blsp_demo.train.step2` runs): an
    official-layout checkpoint, a manifest of real audio files, step-1 targets, full windows."""
    import numpy as np
    import soundfile as sf

    from blsp_demo.train.step2 import main

    rows, targets = [], []
    for i, text in enumerate(SENTENCES[:4]):
        t = np.arange(16000) / 16000
        sf.write(tmp_path / f"c{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 50 * i) * t)).astype(np.float32), 16000)
        rows.append({"id": f"c{i}", "audio": f"c{i}.wav", "transcript": text, "duration_s": 1.0})
        targets.append({"id": f"c{i}", "kind": "repeat", "instruction": "Please repeat the following words.",
                        "transcript": text, "target": text, "filtered": None})
    (tmp_path / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "targets.jsonl").write_text("".join(json.dumps(r) + "\n" for r in targets))
    out = tmp_path / "run"
    main(["--init", str(official_checkpoint), "--manifest", str(tmp_path / "train.jsonl"), "--targets",
          str(tmp_path / "targets.jsonl"), "--out", str(out), "--steps", "3", "--batch-size", "2",
          "--llm-dtype", "float32", "--template", "blsp", "--window", "full", "--eval-every", "0"])
    blob = torch.load(out / "last.pt", weights_only=False)
    assert blob["state"]["step"] == 3 and len(blob["state"]["log"]) == 3


def test_soft_embeddings_are_expected_token_embeddings():
    from blsp_demo.model.ctc import CtcSelector

    torch.manual_seed(0)
    head = CtcSelector(8)
    table = torch.randn(6, 8)
    vectors = 3 * table[[2, 4]][None]  # (1, 2, 8): pointing exactly at tokens 2 and 4
    sharp = head.soft_embeddings(vectors, table, sharpness=1e4)
    assert torch.allclose(sharp[0], table[[2, 4]], atol=1e-4)  # a sharp head gives the token's own embedding
    flat = head.soft_embeddings(vectors, table, sharpness=0.0)
    assert torch.allclose(flat[0], table.mean(0).expand(2, 8), atol=1e-5)  # no preference: the table's mean
    vectors.requires_grad_(True)
    head.soft_embeddings(vectors, table, sharpness=4.0).sum().backward()
    assert vectors.grad is not None and vectors.grad.abs().sum() > 0  # step 2 trains through it


def test_ctc_head_caches_its_token_rows_until_the_table_or_vocabulary_changes():
    import torch.nn.functional as F

    from blsp_demo.model.ctc import CtcSelector

    torch.manual_seed(0)
    head = CtcSelector(8, vocab_size=4)
    head.set_vocab([1, 3, 4, 6])
    table = torch.randn(7, 8)
    frames = torch.randn(1, 5, 8)

    def reference(frames, table):  # the head's definition, computed from scratch
        keys = torch.cat([F.normalize(head.blank, dim=-1)[None], F.normalize(table[head.vocab], dim=-1)])
        return head.log_scale.exp() * F.normalize(frames, dim=-1) @ keys.T

    assert torch.allclose(head.logits(frames, table), reference(frames, table), atol=1e-6)
    with torch.no_grad():
        table.mul_(-1.0)  # in place: the cached rows must not be used any more
    assert torch.allclose(head.logits(frames, table), reference(frames, table), atol=1e-6)
    head.set_vocab([0, 2, 5, 6])
    assert torch.allclose(head.logits(frames, table), reference(frames, table), atol=1e-6)
    with torch.inference_mode():  # rows cached under inference mode are not reused for training
        head.logits(frames, table)
    frames.requires_grad_(True)
    head.logits(frames, table).sum().backward()
    assert frames.grad is not None and head.blank.grad is not None
    table.requires_grad_(True)  # a loaded LLM's table, served under inference mode: computed once
    with torch.inference_mode():
        first = head._token_rows(table)[1]
        assert head._token_rows(table)[1] is first
        assert torch.allclose(head.logits(frames, table), reference(frames, table), atol=1e-6)
    head.logits(frames, table).sum().backward()  # with gradients on, the table gets its own
    assert table.grad is not None and table.grad.abs().sum() > 0


def test_soft_embeddings_ignore_probabilities_that_underflow():
    """Sharp logits over a big table leave most probabilities as fp32 denormals (x86 matmuls on them
    are ~40x slower); those are zeroed, which changes the result by less than fp32 rounding."""
    from blsp_demo.model.ctc import CtcSelector

    torch.manual_seed(0)
    head = CtcSelector(16)
    table = torch.randn(3000, 16)
    vectors = 5 * torch.randn(1, 7, 16)
    got = head.soft_embeddings(vectors, table, sharpness=8.0)
    probs = (8.0 * head.logits(vectors, table)[..., 1:]).double().softmax(-1)
    exact = probs @ table.double()
    assert (probs < 1e-12).float().mean() > 0.5  # the case the zeroing is for
    assert torch.allclose(got.double(), exact, atol=1e-6)
