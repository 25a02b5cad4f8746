"""micro-BLSP v2 (`speech_compression: "whisper-decoder"`): the stages after the corpus.

1. Whisper's greedy decoder states per clip (`train.decoder_states`, cached: training never runs
   Whisper).
2. Initialization without the LLM: ridge regression of each decoder state onto the LLM's input
   embedding of the text of the Whisper token it chose (the mean embedding when that text is
   several LLM tokens), then a few hundred regression steps for the adapter's residual MLP.
3. Behavior alignment (`train.step2`, unchanged): cross-entropy on the LLM's own answer to the
   transcript plus KL to the frozen LLM reading the transcript; only the adapter trains.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from blsp_demo.prompts import INSTRUCTIONS
from blsp_demo.train.batches import Example
from blsp_demo.train.features import read_manifest

REPEAT = INSTRUCTIONS["repeat"]


def whisper_token_text(ids: list[int]) -> dict[int, str]:
    """Whisper token id -> its text (bytes decoded leniently: a piece of a UTF-8 character is '')."""
    import whisper

    enc = whisper.tokenizer.get_tokenizer(True).encoding
    return {i: enc.decode_single_token_bytes(i).decode("utf-8", errors="ignore") for i in set(ids)}


def token_targets(ids: list[int], llm_tokenizer, table: torch.Tensor) -> dict[int, torch.Tensor]:
    """Whisper token id -> the mean LLM input embedding of its text's LLM tokens (576,)."""
    out = {}
    for i, text in whisper_token_text(ids).items():
        llm_ids = llm_tokenizer(text, add_special_tokens=False)["input_ids"] if text else []
        if llm_ids:
            out[i] = table[llm_ids].float().mean(0)
    return out


def regression_pairs(states: dict, tokens: dict, llm_tokenizer, table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Every cached (decoder state, target embedding) pair: X (N, d_dec), Y (N, d_llm)."""
    targets = token_targets([t for ts in tokens.values() for t in ts], llm_tokenizer, table)
    xs, ys = [], []
    for cid, ts in tokens.items():
        for k, t in enumerate(ts):
            if t in targets and k < states[cid].shape[0]:
                xs.append(states[cid][k].float())
                ys.append(targets[t])
    return torch.stack(xs), torch.stack(ys)


def init_by_regression(adapter, x: torch.Tensor, y: torch.Tensor, ridge: float = 1e-2, steps: int = 300,
                       lr: float = 1e-3, batch: int = 1024, seed: int = 0) -> dict:
    """Closed-form ridge for the linear map, then `steps` of MSE regression for the residual MLP."""
    with torch.no_grad():
        xb = torch.cat([x, torch.ones(len(x), 1)], 1)  # (N, d+1): the bias column
        gram = xb.T @ xb + ridge * len(x) * torch.eye(xb.shape[1])
        w = torch.linalg.solve(gram, xb.T @ y)  # (d+1, d_llm)
        adapter.linear.weight.copy_(w[:-1].T)
        adapter.linear.bias.copy_(w[-1])
    report = {"pairs": len(x), "linear": fit_quality(adapter, x, y)}
    opt = torch.optim.AdamW([p for n, p in adapter.named_parameters() if not n.startswith("linear")], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        loss = F.mse_loss(adapter(x[idx]), y[idx])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    report["mlp"] = fit_quality(adapter, x, y)
    return report


@torch.no_grad()
def fit_quality(adapter, x: torch.Tensor, y: torch.Tensor) -> dict:
    pred = adapter(x).float()
    return {"mse": float(F.mse_loss(pred, y)), "cosine": float(F.cosine_similarity(pred, y, dim=-1).mean()),
            "target_rms": float(y.pow(2).mean().sqrt()), "pred_rms": float(pred.pow(2).mean().sqrt())}


def decoder_model(adapter_state: dict | None = None, inner_dim: int = 1024):
    from blsp_demo.weights.checkpoints import assemble_micro, micro_config
    from blsp_demo.weights.devices import Placement

    cfg = micro_config(adapter_inner_dim=inner_dim, speech_compression="whisper-decoder")
    model, tok, _ = assemble_micro(cfg, Placement(torch.device("cpu"), torch.float32))
    if adapter_state is not None:
        model.load_state_dict(adapter_state, strict=False)
    return model, tok, cfg


def examples(work: Path, states: dict, repeat_rows: int) -> list[Example]:
    """Step-1 answers to the spoken training questions, plus repetition pairs of corpus clips."""
    rows = [json.loads(l) for l in (work / "targets.jsonl").read_text().splitlines() if l.strip()]
    out = [Example(r["id"], r["instruction"], r["transcript"], r["target"], r["kind"], not r.get("truncated", False))
           for r in rows if not r.get("filtered") and r["id"] in states]
    corpus_rows = [r for r in read_manifest(work / "corpus" / "train.jsonl") if r["id"] in states]
    out += [Example(r["id"], REPEAT, r["transcript"], r["transcript"]) for r in corpus_rows[:repeat_rows]]
    return out


def stage_init(work: Path, steps: int = 300) -> dict:
    """`work/decoder_init.pt`: the regression-initialized adapter (made once)."""
    from blsp_demo.train.decoder_states import load_decoder_store
    from blsp_demo.train.params import adapter_state

    path = work / "decoder_init.pt"
    if path.is_file():
        return torch.load(path, weights_only=False)["report"]
    t0 = time.monotonic()
    model, tok, _ = decoder_model()
    states, tokens = load_decoder_store(work / "decoder_states")
    train_ids = {r["id"] for name in ("questions", "corpus") for r in read_manifest(work / name / "train.jsonl")}
    x, y = regression_pairs({k: v for k, v in states.items() if k in train_ids}, tokens, tok,
                            model.llama_model.get_input_embeddings().weight.detach())
    report = init_by_regression(model.decoder_adapter, x, y, steps=steps)
    report["wall_s"] = time.monotonic() - t0
    torch.save({"adapter": adapter_state(model), "report": report}, path)
    return report


def stage_train(work: Path, steps: int, batch_size: int, lr: float, kd_weight: float, repeat_rows: int,
                checkpoint_every_s: float = 300.0, llm_dtype: str = "bfloat16") -> None:
    from blsp_demo.train.decoder_states import load_decoder_store
    from blsp_demo.train.step2 import Step2Trainer, TrainConfig

    init = torch.load(work / "decoder_init.pt", weights_only=False)["adapter"]
    model, tok, _ = decoder_model(init)
    states, _ = load_decoder_store(work / "decoder_states")
    rows = examples(work, states, repeat_rows)
    print(f"step 2 (whisper-decoder) rows: {len(rows)} ({sum(e.kind == 'repeat' for e in rows)} repetition pairs)")
    cfg = TrainConfig(steps=steps, batch_size=batch_size, kd_weight=kd_weight, lr=lr, warmup=20,
                      max_target_tokens=32, eval_every=0, checkpoint_every_s=checkpoint_every_s,
                      llm_dtype=llm_dtype)
    trainer = Step2Trainer(model, tok, rows, states, cfg, work / "step2-decoder")
    trainer.resume()
    trainer.train()
