"""Warm start: CTC over the LLM's own vocabulary, so adapter frames start out embedding-like.

The output layer is the frozen LLM input-embedding matrix, restricted to the token ids that occur
in the training transcripts, compared by cosine (so a frame scores high only by pointing the way
its token's embedding points), plus a learned blank. A second term pulls each non-blank frame
towards its token's embedding in scale too. This costs no LLM forward pass: about 1 s per batch of
32 here, against several seconds for the behavior-alignment loss.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from ..model.adapter import lengths_to_mask
from .batches import Example, length_buckets
from .step2 import adapter_parameters, adapter_state, freeze_all_but_adapter


@dataclass(frozen=True)
class CtcConfig:
    steps: int = 600
    batch_size: int = 32
    lr: float = 1.5e-3
    warmup: int = 30
    embed_weight: float = 1.0
    seed: int = 0
    checkpoint_every_s: float = 300.0


class CtcHead(nn.Module):
    """Cosine scores against a fixed table of token embeddings, plus a learned blank (index 0)."""

    def __init__(self, table: torch.Tensor):
        super().__init__()
        self.register_buffer("table", F.normalize(table.float(), dim=-1), persistent=False)
        self.blank = nn.Parameter(torch.randn(table.shape[1]) * 0.02)
        self.log_scale = nn.Parameter(torch.tensor(2.5))  # scale ~12: cosines need a sharp softmax

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, S, d) -> (B, S, 1 + V) logits."""
        keys = torch.cat([F.normalize(self.blank, dim=-1)[None], self.table])  # (1 + V, d)
        return self.log_scale.exp() * F.normalize(frames, dim=-1) @ keys.T


def transcript_ids(tokenizer, text: str) -> list[int]:
    return tokenizer(" " + text.strip(), add_special_tokens=False)["input_ids"]


def restricted_vocab(tokenizer, examples: list[Example]) -> list[int]:
    return sorted({t for e in examples for t in transcript_ids(tokenizer, e.transcript)})


def ctc_losses(model, head: CtcHead, vocab_embed: torch.Tensor, vocab_index: dict[int, int], tokenizer,
               batch: list[Example], features: dict[str, torch.Tensor], cfg: CtcConfig) -> dict[str, torch.Tensor]:
    states = [features[e.id].float() for e in batch]
    lengths = torch.tensor([s.shape[0] for s in states])
    frames, out_len = model.adapt(torch.nn.utils.rnn.pad_sequence(states, batch_first=True), lengths)  # (B, S, d)
    logits = head(frames)  # (B, S, 1 + V)
    targets = [[vocab_index[t] + 1 for t in transcript_ids(tokenizer, e.transcript) if t in vocab_index] for e in batch]
    flat = torch.tensor([t for ts in targets for t in ts])
    ctc = F.ctc_loss(logits.log_softmax(-1).transpose(0, 1), flat, out_len, torch.tensor([len(t) for t in targets]),
                     blank=0, zero_infinity=True)
    # Frames the head reads as a token should also BE that token's embedding (direction and scale).
    mask = lengths_to_mask(out_len, frames.shape[1])
    best = logits.argmax(-1)
    tokened = mask & (best > 0)
    if tokened.any():
        want = vocab_embed[best[tokened] - 1]  # (N, d)
        closeness = F.mse_loss(frames[tokened], want) / vocab_embed.pow(2).mean()
    else:
        closeness = frames.sum() * 0
    return {"ctc": ctc, "embed": closeness, "loss": ctc + cfg.embed_weight * closeness,
            "token_frames": tokened.float().sum() / mask.float().sum()}


def train_ctc(model, tokenizer, examples: list[Example], features: dict[str, torch.Tensor], cfg: CtcConfig,
              out: Path) -> list[dict]:
    """Resumable CTC warm start of the adapter; writes `out/last.pt` (adapter + head + optimizer)."""
    freeze_all_but_adapter(model)
    embed = model.llama_model.get_input_embeddings().weight.detach().float()
    vocab = restricted_vocab(tokenizer, examples)
    vocab_index = {t: i for i, t in enumerate(vocab)}
    vocab_embed = embed[torch.tensor(vocab)]  # (V, d): row i is the token of CTC class i + 1
    head = CtcHead(vocab_embed)
    params = adapter_parameters(model) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    step, epoch, pos, log = 0, 0, 0, []
    out.mkdir(parents=True, exist_ok=True)
    if (out / "last.pt").is_file():
        blob = torch.load(out / "last.pt", weights_only=False)
        model.load_state_dict(blob["adapter"], strict=False)
        head.load_state_dict(blob["head"])
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
        parts = ctc_losses(model, head, vocab_embed, vocab_index, tokenizer, batch, features, cfg)
        parts["loss"].backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        log.append({"step": step, "lr": lr, "elapsed_s": time.monotonic() - t0, **{k: float(v) for k, v in parts.items()}})
        bar.set_postfix(ctc=f"{float(parts['ctc']):.3f}", embed=f"{float(parts['embed']):.3f}")
        bar.update(1)
        if time.monotonic() - last_save > cfg.checkpoint_every_s or step == cfg.steps:
            blob = {"adapter": adapter_state(model),
                    "head": head.state_dict(), "optimizer": opt.state_dict(), "step": step, "epoch": epoch,
                    "pos": pos, "log": log, "config": asdict(cfg), "vocab": vocab}
            torch.save(blob, out / "last.pt.tmp")
            os.replace(out / "last.pt.tmp", out / "last.pt")
            last_save = time.monotonic()
    bar.close()
    return log
