"""Warm start: CTC over the LLM's own vocabulary, so adapter frames start out embedding-like.

The output layer is the frozen LLM input-embedding matrix (all of it), compared by cosine (a
frame scores high only by pointing the way its token's embedding points), plus a learned blank:
the model's `CtcSelector` (model/ctc.py), which later also picks the frames the LLM reads. A
second term pulls each non-blank frame towards its token's embedding in scale too. No LLM forward
pass: far cheaper per step than the behavior-alignment loss.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from blsp_demo.model.adapter import lengths_to_mask
from blsp_demo.weights.devices import autocast
from blsp_demo.train.batches import Example, length_buckets
from blsp_demo.train.params import adapter_parameters, adapter_state, freeze_all_but_adapter


@dataclass(frozen=True)
class CtcConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup: int = 30
    embed_weight: float = 1.0
    seed: int = 0
    checkpoint_every_s: float = 300.0
    bf16: bool = True  # autocast where bf16 is fast (devices.fast_bf16): ~2x on this CPU


def transcript_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]


def ctc_vocab(tokenizer, texts: list[str]) -> list[int]:
    """The token ids of the training transcripts: the classes of the CTC head."""
    return sorted({t for text in texts for t in transcript_ids(tokenizer, text)})


def ctc_terms(model, frames: torch.Tensor, out_len: torch.Tensor, token_ids: list[list[int]]) -> dict[str, torch.Tensor]:
    """CTC over the LLM's vocabulary (the head's classes) for uncompressed adapter frames (B, S, d),
    plus the closeness term: frames the head reads as a token should also BE that token's
    embedding (direction and scale), so that the LLM can read them. Tokens outside the head's
    classes are left out of the CTC targets."""
    head = model.ctc
    table = head.token_table(model.llama_model.get_input_embeddings().weight.detach())  # (V', d)
    if head.vocab.numel():
        index = {t: i for i, t in enumerate(head.vocab.tolist())}
        classes = [[index[t] + 1 for t in ids if t in index] for ids in token_ids]
    else:
        classes = [[t + 1 for t in ids] for ids in token_ids]
    logits = head.logits(frames, model.llama_model.get_input_embeddings().weight.detach())  # (B, S, 1 + V')
    flat = torch.tensor([c for row in classes for c in row], device=frames.device, dtype=torch.long)
    ctc = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), flat, out_len,
                     torch.tensor([len(c) for c in classes], device=frames.device), blank=0, zero_infinity=True)
    mask = lengths_to_mask(out_len, frames.shape[1])
    best = logits.detach().argmax(-1)
    tokened = mask & (best > 0)
    if tokened.any():
        want = table[best[tokened] - 1].float()  # (N, d)
        closeness = F.mse_loss(frames[tokened].float(), want) / table.float().pow(2).mean()
    else:
        closeness = frames.sum() * 0
    return {"ctc": ctc, "embed": closeness, "token_frames": tokened.float().sum() / mask.float().sum()}


def ctc_losses(model, tokenizer, batch: list[Example], features: dict[str, torch.Tensor],
               cfg: CtcConfig) -> dict[str, torch.Tensor]:
    states = [features[e.id].float() for e in batch]
    lengths = torch.tensor([s.shape[0] for s in states])
    frames, out_len = model.adapt(torch.nn.utils.rnn.pad_sequence(states, batch_first=True), lengths,
                                  compress=False)  # (B, S, d)
    out = ctc_terms(model, frames, out_len, [transcript_ids(tokenizer, e.transcript) for e in batch])
    out["loss"] = out["ctc"] + cfg.embed_weight * out["embed"]
    return out


def train_ctc(model, tokenizer, examples: list[Example], features: dict[str, torch.Tensor], cfg: CtcConfig,
              out: Path) -> list[dict]:
    """Resumable CTC warm start of the adapter; writes `out/last.pt` (adapter + head + optimizer)."""
    if getattr(model, "ctc", None) is None:
        raise ValueError("the CTC warm start needs a model built with speech_compression='ctc'")
    freeze_all_but_adapter(model)
    params = adapter_parameters(model)
    device = params[0].device
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    step, epoch, pos, log = 0, 0, 0, []
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").is_file():
        blob = torch.load(out / "last.pt", weights_only=False)
        model.load_state_dict(blob["adapter"], strict=False)
        opt.load_state_dict(blob["optimizer"])
        step, epoch, pos, log = blob["step"], blob["epoch"], blob["pos"], blob["log"]
    lengths = [features[e.id].shape[0] for e in examples]
    bar = tqdm(total=cfg.steps, initial=step, desc="warm start (CTC)", unit="step")
    last_save, t0 = time.monotonic(), time.monotonic()
    while step < cfg.steps:
        order = length_buckets(lengths, cfg.batch_size, cfg.seed, epoch)
        if pos >= len(order):
            epoch, pos = epoch + 1, 0
            continue
        batch = [examples[i] for i in order[pos]]
        pos += 1
        lr = cfg.lr * min(1.0, (step + 1) / cfg.warmup) * (0.1 + 0.9 * (1 - step / cfg.steps))
        for g in opt.param_groups:
            g["lr"] = lr
        with autocast(device, cfg.bf16):
            parts = ctc_losses(model, tokenizer, batch, features, cfg)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        log.append({"step": step, "lr": lr, "elapsed_s": time.monotonic() - t0, **{k: float(v.detach()) for k, v in parts.items()}})
        bar.set_postfix(ctc=f"{float(parts['ctc']):.3f}", embed=f"{float(parts['embed']):.3f}")
        bar.update(1)
        if time.monotonic() - last_save > cfg.checkpoint_every_s or step == cfg.steps:
            blob = {"adapter": adapter_state(model), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "pos": pos, "log": log, "config": asdict(cfg)}
            torch.save(blob, out / "last.pt.tmp")
            os.replace(out / "last.pt.tmp", out / "last.pt")
            last_save = time.monotonic()
    bar.close()
    return log
