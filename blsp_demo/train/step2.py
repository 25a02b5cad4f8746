"""BLSP step 2: train only the adapter so the frozen LLM answers speech as it answers the transcript.

Loss on the target tokens (the LLM's own step-1 answer, or the transcript for repetition pairs):
cross-entropy, plus optionally the KL divergence from the teacher (the same LLM reading the
transcript) at every target position (`kd_weight`): a full distribution per token instead of
one id, which teaches the adapter much more per step. Encoder and LLM are frozen; encoder states
come from the feature cache (`train.features`), or from audio on the fly when there is none.

Runs on one CPU or on many GPUs unchanged: `accelerate launch -m blsp_demo.train.step2 ...`.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from blsp_demo.weights.devices import autocast
from blsp_demo.model.adapter import lengths_to_mask
from blsp_demo.prompts import get_template
from blsp_demo.train.params import adapter_parameters, adapter_state, freeze_all_but_adapter
from blsp_demo.train.batches import Batch, Example, length_buckets, pad_rows, prompt_ids, target_ids


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 3000
    batch_size: int = 8
    grad_accum: int = 1
    lr: float = 5e-4
    warmup: int = 60
    weight_decay: float = 0.01
    max_target_tokens: int = 40
    kd_weight: float = 1.0  # 0: the paper's cross-entropy only
    ce_weight: float = 1.0
    ctc_weight: float = 0.2  # models with a CTC selector: keep its reading of the frames right
    llm_dtype: str = "bfloat16"
    bf16_adapter: bool = True  # autocast the adapter where bf16 is fast (devices.fast_bf16)
    checkpoint_every_s: float = 300.0
    eval_every: int = 200
    seed: int = 0
    template: str = "chatml"
    window: str = "trimmed"


@dataclass
class TrainState:
    step: int = 0
    epoch: int = 0
    batch_in_epoch: int = 0
    log: list[dict] = field(default_factory=list)


def lr_at(step: int, cfg: TrainConfig) -> float:
    """Linear warm-up, then cosine decay to 10%."""
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    progress = (step - cfg.warmup) / max(1, cfg.steps - cfg.warmup)
    return cfg.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(1.0, progress))))


def target_logits(llm, batch: Batch, device, **inputs) -> torch.Tensor:
    """Float logits at the target positions only, (N, V): the output layer (49k x 576 for SmolLM2)
    runs on N target positions instead of every position of the batch."""
    hidden = llm.get_decoder()(attention_mask=batch.attention.to(device), **inputs).last_hidden_state  # (B, L, d)
    picked = torch.cat([hidden[b, pos] for b, pos in enumerate(batch.target_pos)])  # (N, d)
    return llm.get_output_embeddings()(picked).float()


class Step2Trainer:
    def __init__(self, model, tokenizer, examples: list[Example], features: dict[str, torch.Tensor],
                 cfg: TrainConfig, out: Path, dev: list[Example] | None = None, accelerator=None):
        from accelerate import Accelerator

        self.model, self.tok, self.cfg, self.out = model, tokenizer, cfg, out
        self.examples, self.features, self.dev = examples, features, dev or []
        self.acc = accelerator or Accelerator(cpu=not torch.cuda.is_available())
        self.tpl = get_template(cfg.template)
        self.end_ids = self._tokenize(self.tpl.assistant_suffix)[:1]  # e.g. <|im_end|>
        self.pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.end_ids[0]
        freeze_all_but_adapter(model)
        model.llama_model.to(getattr(torch, cfg.llm_dtype))
        self.opt = torch.optim.AdamW(adapter_parameters(model), lr=cfg.lr, weight_decay=cfg.weight_decay)
        self.model, self.opt = self.acc.prepare(model, self.opt)
        self.state = TrainState()
        self.lengths = [features.length(e.id) if hasattr(features, "length") else features[e.id].shape[0]
                        for e in examples]

    def _tokenize(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"]

    @property
    def core(self):
        return self.acc.unwrap_model(self.model)

    # ---- one batch ----------------------------------------------------------------------
    def speech(self, batch: list[Example]) -> tuple[torch.Tensor, torch.Tensor, dict[str, torch.Tensor]]:
        """Cached encoder states -> adapter frames (sum S_b, d_llm), per-row counts (B,), and the
        CTC terms of a model with a CTC selector (computed on the frames before selection)."""
        from blsp_demo.train.warmstart import ctc_terms, transcript_ids

        states = [self.features[e.id].float() for e in batch]
        lengths = torch.tensor([s.shape[0] for s in states], device=self.acc.device)
        padded = torch.nn.utils.rnn.pad_sequence(states, batch_first=True).to(self.acc.device)  # (B, T, d_enc)
        core, aux = self.core, {}
        emb, out_len = core.adapt(padded, lengths, compress=False)  # (B, S, d_llm)
        if getattr(core, "ctc", None) is not None:
            if self.cfg.ctc_weight > 0:
                aux = ctc_terms(core, emb, out_len, [transcript_ids(self.tok, e.transcript) for e in batch])
            emb, out_len = core.select(emb, out_len)
        return emb[lengths_to_mask(out_len, emb.shape[1])], out_len, aux

    def losses(self, batch: list[Example]) -> dict[str, torch.Tensor]:
        core, cfg = self.core, self.cfg
        frames, counts, aux = self.speech(batch)
        targets = [target_ids(self._tokenize, self.end_ids, e, cfg.max_target_tokens) for e in batch]
        student = pad_rows([prompt_ids(self.tpl, self._tokenize, self.tok.bos_token_id, e.instruction, int(n))
                            for e, n in zip(batch, counts)], targets, self.pad_id)
        dev = self.acc.device
        embeds = core.embed_with_speech(student.ids.to(dev), frames)
        llm_dtype = next(core.llama_model.parameters()).dtype
        s_logits = target_logits(core.llama_model, student, dev, inputs_embeds=embeds.to(llm_dtype))  # (N, V)
        gold = torch.cat([torch.tensor(t) for t in targets]).to(dev)
        out = {"ce": F.cross_entropy(s_logits, gold)}
        if cfg.kd_weight > 0:
            with torch.no_grad():
                teacher = pad_rows([prompt_ids(self.tpl, self._tokenize, self.tok.bos_token_id, e.instruction,
                                               transcript=e.transcript) for e in batch], targets, self.pad_id)
                t_logits = target_logits(core.llama_model, teacher, dev, input_ids=teacher.ids.to(dev))
            out["kd"] = F.kl_div(F.log_softmax(s_logits, -1), F.log_softmax(t_logits, -1), log_target=True,
                                 reduction="batchmean")
        out["loss"] = cfg.ce_weight * out["ce"] + cfg.kd_weight * out.get("kd", torch.zeros((), device=dev))
        if aux:
            out["ctc"], out["embed"] = aux["ctc"], aux["embed"]
            out["loss"] = out["loss"] + cfg.ctc_weight * (aux["ctc"] + aux["embed"])
        return out

    # ---- checkpoints --------------------------------------------------------------------
    def save(self) -> None:
        if not self.acc.is_main_process:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        blob = {"adapter": adapter_state(self.core),
                "optimizer": self.opt.state_dict(), "state": asdict(self.state), "config": asdict(self.cfg),
                "rng": torch.get_rng_state()}
        tmp = self.out / "last.pt.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, self.out / "last.pt")  # atomic: a kill never leaves a broken checkpoint
        (self.out / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in self.state.log))

    def resume(self) -> bool:
        path = self.out / "last.pt"
        if not path.is_file():
            return False
        blob = torch.load(path, weights_only=False)
        self.core.load_state_dict(blob["adapter"], strict=False)
        self.opt.load_state_dict(blob["optimizer"])
        self.state = TrainState(**blob["state"])
        torch.set_rng_state(blob["rng"])
        return True

    # ---- the loop -----------------------------------------------------------------------
    def batches(self):
        while True:
            order = length_buckets(self.lengths, self.cfg.batch_size, self.cfg.seed, self.state.epoch)
            while self.state.batch_in_epoch < len(order):
                # Under DDP each process takes its own batch of every num_processes consecutive ones.
                k = self.state.batch_in_epoch + self.acc.process_index
                yield [self.examples[i] for i in order[k % len(order)]]
                self.state.batch_in_epoch += self.acc.num_processes
            self.state.epoch, self.state.batch_in_epoch = self.state.epoch + 1, 0

    @torch.no_grad()
    def dev_loss(self) -> float | None:
        if not self.dev:
            return None
        self.model.eval()
        vals = [float(self.losses(self.dev[i: i + self.cfg.batch_size])["ce"])
                for i in range(0, len(self.dev), self.cfg.batch_size)]
        self.model.train()
        return sum(vals) / len(vals)

    def train(self) -> TrainState:
        cfg = self.cfg
        self.model.train()
        last_save, t_start = time.monotonic(), time.monotonic()
        bar = tqdm(total=cfg.steps, initial=self.state.step, desc="step 2 (adapter)", unit="step",
                   disable=not self.acc.is_main_process)
        stream = self.batches()
        while self.state.step < cfg.steps:
            for group in self.opt.param_groups:
                group["lr"] = lr_at(self.state.step, cfg)
            parts = {}
            for _ in range(cfg.grad_accum):
                with autocast(self.acc.device, cfg.bf16_adapter):
                    out = self.losses(next(stream))
                self.acc.backward(out["loss"] / cfg.grad_accum)
                parts = {k: parts.get(k, 0.0) + float(v.detach()) / cfg.grad_accum for k, v in out.items()}
            grad_norm = float(torch.nn.utils.clip_grad_norm_(adapter_parameters(self.core), 1.0))
            self.opt.step()
            self.opt.zero_grad(set_to_none=True)
            self.state.step += 1
            record = {"step": self.state.step, "lr": lr_at(self.state.step - 1, cfg), "grad_norm": grad_norm,
                      "elapsed_s": time.monotonic() - t_start, **parts}
            if cfg.eval_every and self.state.step % cfg.eval_every == 0:
                record["dev_ce"] = self.dev_loss()
            self.state.log.append(record)
            bar.set_postfix(loss=f"{parts['loss']:.3f}", ce=f"{parts['ce']:.3f}")
            bar.update(1)
            if time.monotonic() - last_save > cfg.checkpoint_every_s or self.state.step == cfg.steps:
                self.save()
                plot_losses(self.state.log, self.out / "loss.png")
                last_save = time.monotonic()
        bar.close()
        return self.state


def plot_losses(log: list[dict], path: Path) -> None:
    """Training loss (smoothed) and dev cross-entropy against steps."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not log:
        return
    steps = [r["step"] for r in log]
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in ("loss", "ce", "kd"):
        vals = [r.get(key) for r in log]
        if any(v is not None for v in vals):
            k = max(1, len(vals) // 15)  # a running mean over ~7% of the run
            smooth = [sum(v for v in vals[max(0, i - k): i + 1]) / len(vals[max(0, i - k): i + 1]) for i in range(len(vals))]
            ax.plot(steps, smooth, label=f"train {key}")
    dev = [(r["step"], r["dev_ce"]) for r in log if r.get("dev_ce") is not None]
    if dev:
        ax.plot(*zip(*dev), "o-", label="dev ce")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


class OnTheFlyStates:
    """Encoder states computed from audio when there is no cache (GPU training at scale).
    Behaves like the cache: `states[id]` -> (T', d_enc); `length(id)` for length bucketing."""

    def __init__(self, model, extractor, rows: list[dict], window: str):
        self.model, self.extractor, self.window = model, extractor, window
        self.rows = {r["id"]: r for r in rows}

    def __contains__(self, key: str) -> bool:
        return key in self.rows

    def length(self, key: str) -> int:
        return int(50 * float(self.rows[key].get("duration_s") or 10.0))  # 50 encoder frames per second

    @torch.no_grad()
    def __getitem__(self, key: str) -> torch.Tensor:
        from blsp_demo.audio import load_audio
        from blsp_demo.model.encoder import encode_features, log_mel

        samples = load_audio(self.rows[key]["audio"])[: 30 * 16000]
        encoder = self.model.whisper_model
        weight = next(encoder.parameters())
        with torch.autocast(weight.device.type, enabled=False):  # the frozen encoder runs as loaded
            features, frames = log_mel(self.extractor, samples, self.window)
            states, lengths = encode_features(encoder, features.to(weight.device, weight.dtype),
                                              frames.to(weight.device), self.window)
        return states[0, : int(lengths[0])].float()


def load_initial_model(init: str | None, whisper: str | None, llm: str | None):
    """The model to train: an existing BLSP folder (official or micro layout), or a fresh adapter
    between a Whisper checkpoint's encoder and a causal LM (paper scale: whisper-small + a 7B LLM)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, WhisperFeatureExtractor, WhisperModel

    from blsp_demo.weights.devices import Placement
    from blsp_demo.weights.checkpoints import load_blsp_folder
    from blsp_demo.model.blsp import BlspConfig, BlspModel
    from blsp_demo.weights.sources import resolve_checkpoint

    place = Placement(torch.device("cpu"), torch.float32)
    if init:
        model, tok, fx, _ = load_blsp_folder(resolve_checkpoint(init), place)
        return model, tok, fx
    wdir, ldir = resolve_checkpoint(whisper), resolve_checkpoint(llm)
    encoder = WhisperModel.from_pretrained(wdir).get_encoder()
    lm = AutoModelForCausalLM.from_pretrained(ldir, dtype=torch.float32)
    config = BlspConfig(whisper_config=encoder.config.to_dict(), llama_config=lm.config.to_dict(),
                        prompt_template="blsp", encoder_window="full")
    model = BlspModel(config)
    model.whisper_model.load_state_dict(encoder.state_dict())
    model.llama_model.load_state_dict(lm.state_dict())
    return model, AutoTokenizer.from_pretrained(ldir), WhisperFeatureExtractor.from_pretrained(wdir)


def main(argv: list[str] | None = None) -> None:
    """`accelerate launch -m blsp_demo.train.step2 --init FOLDER | --whisper W --llm L --manifest M --targets T --out O`"""
    import argparse

    from blsp_demo.train.batches import Example
    from blsp_demo.train.features import read_manifest

    p = argparse.ArgumentParser(description="BLSP step 2: train the adapter by behavior alignment")
    p.add_argument("--init", help="a BLSP folder or Hub id to continue from (official or micro layout)")
    p.add_argument("--whisper", help="Whisper checkpoint for a fresh adapter (e.g. openai/whisper-small)")
    p.add_argument("--llm", help="causal LM for a fresh adapter (the stage-1 instruction-tuned LLM)")
    p.add_argument("--manifest", required=True, help="train manifest (audio, transcript, id, duration_s)")
    p.add_argument("--targets", required=True, help="step 1 output (id, kind, instruction, transcript, target)")
    p.add_argument("--out", required=True)
    for name, field_ in TrainConfig.__dataclass_fields__.items():
        p.add_argument("--" + name.replace("_", "-"), type=type(field_.default), default=field_.default)
    a = p.parse_args(argv)
    if not a.init and not (a.whisper and a.llm):
        p.error("give --init FOLDER, or --whisper and --llm for a fresh adapter")
    model, tok, fx = load_initial_model(a.init, a.whisper, a.llm)
    cfg = TrainConfig(**{k: getattr(a, k) for k in TrainConfig.__dataclass_fields__})
    rows = read_manifest(Path(a.manifest))
    targets = [json.loads(l) for l in Path(a.targets).read_text().splitlines() if l.strip()]
    examples = [Example(t["id"], t["instruction"], t["transcript"], t["target"], t["kind"], not t.get("truncated"))
                for t in targets if not t.get("filtered")]
    states = OnTheFlyStates(model, fx, rows, cfg.window)
    examples = [e for e in examples if e.id in states]
    trainer = Step2Trainer(model, tok, examples, states, cfg, Path(a.out))
    trainer.resume()
    trainer.train()


if __name__ == "__main__":
    main()
