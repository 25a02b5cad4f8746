"""Build the offline micro-BLSP model from scratch, resumably, with one command:

    python -m blsp_demo.train.micro run --work runs/micro

Stages (each skipped when its output exists, each resumable when interrupted):
corpus (espeak-ng TTS) -> encoder feature cache -> step 1 targets -> CTC warm start ->
step 2 (behavior alignment) -> export to blsp_demo/weights/micro-blsp (with --export).
`--tiny` runs the same pipeline at toy size (the test suite uses it).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import torch

from blsp_demo.weights.devices import Placement, set_threads
from blsp_demo.train.batches import Example
from blsp_demo.train.params import adapter_state
from blsp_demo.train.features import load_feature_store, read_manifest


def init_adapter(model) -> None:
    """Speech frames start at the scale of the LLM's token embeddings (LayerNorm gain = their RMS)."""
    rms = model.llama_model.get_input_embeddings().weight.detach().float().pow(2).mean().sqrt()
    with torch.no_grad():
        model.speech_ln.weight.fill_(float(rms))
        model.speech_ln.bias.zero_()


def load_examples(targets: Path, keep_ids: set[str] | None = None) -> list[Example]:
    rows = [json.loads(l) for l in targets.read_text().splitlines() if l.strip()]
    return [Example(r["id"], r["instruction"], r["transcript"], r["target"], r["kind"], not r.get("truncated", False))
            for r in rows if not r.get("filtered") and (keep_ids is None or r["id"] in keep_ids)]


def export_micro(model, cfg: dict, folder: Path, card: str | None = None) -> Path:
    """Write the micro layout: adapter.safetensors + config.json (with its sha256) [+ README.md]."""
    from safetensors.torch import save_file

    from blsp_demo.files import content_sha256

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / cfg["components"]["adapter"]["file"]
    # fp16 on disk (17 MB instead of 35 MB); loading casts to the run's dtype.
    state = {k: (v.half() if v.is_floating_point() else v).contiguous() for k, v in adapter_state(model).items()}
    save_file(state, str(path), metadata={"format": "pt"})  # integer buffers (CTC token ids) stay exact
    cfg = json.loads(json.dumps(cfg))
    cfg["components"]["adapter"]["sha256"] = content_sha256(path)
    (folder / "config.json").write_text(json.dumps(cfg, indent=1))
    if card:
        (folder / "README.md").write_text(card)
    return folder


def run_stage(argv: list[str]) -> None:
    """Each heavy stage runs in its own process, so memory is freed between stages."""
    subprocess.run([sys.executable, "-m", *argv], check=True)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("command", choices=["run", "step2", "warmstart", "export", "decoder-init", "decoder-step2",
                                        "decoder-export"])
    p.add_argument("--recipe", choices=["ctc-soft", "whisper-decoder"], default="ctc-soft",
                   help="run: the speech side to build (whisper-decoder: micro_decoder.py)")
    p.add_argument("--questions", type=int, default=1500, help="whisper-decoder: spoken training questions")
    p.add_argument("--repeat-rows", type=int, default=400, help="whisper-decoder: corpus repetition pairs")
    p.add_argument("--work", default="runs/micro")
    p.add_argument("--clips", type=int, default=12000)
    p.add_argument("--train-clips", type=int, default=6000, help="train clips to encode and train on")
    p.add_argument("--generate", type=int, default=3000, help="rows that get LLM-generated targets in step 1")
    p.add_argument("--ctc-steps", type=int, default=700)
    p.add_argument("--steps", type=int, default=3000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--kd-weight", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--repeat-share", type=float, default=None,
                   help="step 2: at most this share of repetition pairs (default: every encoded clip not in step 1)")
    p.add_argument("--ctc-weight", type=float, default=0.2, help="step 2: weight of the CTC terms that keep frame selection right")
    p.add_argument("--export", default=None, help="folder to export the adapter to (e.g. blsp_demo/weights/micro-blsp)")
    p.add_argument("--tiny", action="store_true", help="toy sizes, for tests")
    args = p.parse_args(argv)
    set_threads()
    work = Path(args.work)
    if args.command == "run":
        return (run_decoder if args.recipe == "whisper-decoder" else run_all)(args, work)
    {"warmstart": stage_warmstart, "step2": stage_step2, "export": stage_export, "decoder-init": stage_decoder_init,
     "decoder-step2": stage_decoder_step2, "decoder-export": stage_decoder_export}[args.command](args, work)


def run_decoder(args, work: Path) -> None:
    """The whisper-decoder recipe: corpus, spoken questions, step 1 answers, decoder states, regression
    init, behavior alignment, export; every stage skipped when done and resumable when cut."""
    corpus, questions = work / "corpus", work / "questions"
    if not (corpus / "train.jsonl").is_file():
        run_stage(["blsp_demo.train.corpus", "--out", str(corpus), "--num", str(args.clips), "--dev-num",
                   "200" if not args.tiny else "4", "--test-num", "300" if not args.tiny else "4", "--max-words", "25",
                   *(["--source", "builtin"] if args.tiny else [])])
    if not (questions / "train.jsonl").is_file():
        run_stage(["blsp_demo.train.questions", "--out", str(questions), "--num", str(args.questions)])
    run_stage(["blsp_demo.train.step1", "--manifest", str(questions / "train.jsonl"), "--out",
               str(work / "targets.jsonl"), "--limit", str(args.generate), "--kinds", "respond:1",
               "--max-new-tokens", "32", "--batch-size", "32"])
    for name, limit in (("questions", args.questions), ("corpus", args.repeat_rows)):
        run_stage(["blsp_demo.train.decoder_states", "--manifest", str(work / name / "train.jsonl"),
                   "--out", str(work / "decoder_states"), "--prefix", name, "--limit", str(limit)])
    common = ["--work", str(work), *(["--tiny"] if args.tiny else [])]
    run_stage(["blsp_demo.train.micro", "decoder-init", *common])
    run_stage(["blsp_demo.train.micro", "decoder-step2", *common, "--steps", str(args.steps), "--batch-size",
               str(args.batch_size), "--kd-weight", str(args.kd_weight), "--lr", str(args.lr),
               "--repeat-rows", str(args.repeat_rows)])
    if args.export:
        run_stage(["blsp_demo.train.micro", "decoder-export", "--work", str(work), "--export", args.export])


def stage_decoder_init(args, work: Path) -> None:
    from blsp_demo.train.micro_decoder import stage_init

    print(json.dumps(stage_init(work, steps=20 if args.tiny else 300)))


def stage_decoder_step2(args, work: Path) -> None:
    from blsp_demo.train.micro_decoder import stage_train

    stage_train(work, args.steps, args.batch_size, args.lr, args.kd_weight, args.repeat_rows,
                checkpoint_every_s=120.0, llm_dtype="float32" if args.tiny else "bfloat16")


def stage_decoder_export(args, work: Path) -> None:
    from blsp_demo.train.micro_decoder import decoder_model

    blob = torch.load(work / "step2-decoder" / "last.pt", weights_only=False)
    model, _, cfg = decoder_model(blob["adapter"])
    print(f"exported to {export_micro(model, cfg, Path(args.export))}")


def run_all(args, work: Path) -> None:
    corpus = work / "corpus"
    if not (corpus / "train.jsonl").is_file():
        run_stage(["blsp_demo.train.corpus", "--out", str(corpus), "--num", str(args.clips), "--dev-num",
                   "200" if not args.tiny else "4", "--test-num", "300" if not args.tiny else "4", "--max-words", "25",
                   *(["--source", "builtin"] if args.tiny else [])])
    for split in ("train", "dev", "test"):  # one shard prefix per split: more train clips later just add shards
        run_stage(["blsp_demo.train.features", "--manifest", str(corpus / f"{split}.jsonl"), "--out",
                   str(work / "features"), "--prefix", split,
                   *(["--limit", str(args.train_clips)] if split == "train" else [])])
    run_stage(["blsp_demo.train.step1", "--manifest", str(corpus / "train.jsonl"), "--out",
               str(work / "targets.jsonl"), "--limit", str(args.generate)])
    tiny = ["--tiny"] if args.tiny else []
    run_stage(["blsp_demo.train.micro", "warmstart", "--work", str(work), "--ctc-steps", str(args.ctc_steps), *tiny])
    run_stage(["blsp_demo.train.micro", "step2", "--work", str(work), "--steps", str(args.steps),
               "--batch-size", str(args.batch_size), "--kd-weight", str(args.kd_weight), "--lr", str(args.lr),
               "--ctc-weight", str(args.ctc_weight),
               *(["--repeat-share", str(args.repeat_share)] if args.repeat_share is not None else []), *tiny])
    if args.export:
        run_stage(["blsp_demo.train.micro", "export", "--work", str(work), "--export", args.export])


def _micro_model(adapter: dict | None = None, vocab: list[int] | None = None):
    """The micro model; `vocab`: the CTC head's token ids (their count fixes the config)."""
    from blsp_demo.weights.checkpoints import assemble_micro, micro_config

    cfg = micro_config(ctc_vocab_size=len(vocab or []))
    model, tok, fx = assemble_micro(cfg, Placement(torch.device("cpu"), torch.float32))
    init_adapter(model)
    if vocab:
        model.ctc.set_vocab(vocab)
    if adapter is not None:
        model.load_state_dict(adapter, strict=False)
    return model, tok, cfg


def _vocab(work: Path, tokenizer=None) -> list[int]:
    """The CTC head's classes: every token of the train transcripts (made once, then read)."""
    from blsp_demo.train.warmstart import ctc_vocab

    path = work / "ctc_vocab.json"
    if not path.is_file():
        texts = [r["transcript"] for r in read_manifest(work / "corpus" / "train.jsonl")]
        path.write_text(json.dumps(ctc_vocab(tokenizer, texts)))
    return json.loads(path.read_text())


def _train_examples(work: Path, repeat_share: float | None = None) -> tuple[list[Example], dict]:
    """Step-1 rows plus repetition pairs for every other encoded clip; with `repeat_share`, a
    seeded sample of the repetition pairs so that they make up at most that share of the rows."""
    features = load_feature_store(work / "features")
    examples = [e for e in load_examples(work / "targets.jsonl") if e.id in features]
    # Rows beyond the step-1 limit are repetition pairs: they need no generation.
    have = {e.id for e in examples}
    for row in read_manifest(work / "corpus" / "train.jsonl"):
        if row["id"] not in have and row["id"] in features:
            examples.append(Example(row["id"], "Please repeat the following words.", row["transcript"], row["transcript"]))
    return limit_repeats(examples, repeat_share), features


def limit_repeats(examples: list[Example], share: float | None, seed: int = 0) -> list[Example]:
    if share is None:
        return examples
    import random

    other = [e for e in examples if e.kind != "repeat"]
    repeats = [e for e in examples if e.kind == "repeat"]
    keep = min(len(repeats), int(share / (1 - share) * len(other))) if share < 1 else len(repeats)
    return other + random.Random(seed).sample(repeats, keep)


def stage_warmstart(args, work: Path) -> None:
    from blsp_demo.train.warmstart import CtcConfig, train_ctc

    from blsp_demo.weights import sources

    vocab = _vocab(work, sources.load_gguf_tokenizer(*sources.smollm2_gguf()))
    model, tok, _ = _micro_model(vocab=vocab)
    examples, features = _train_examples(work)
    cfg = CtcConfig(steps=args.ctc_steps, batch_size=8 if args.tiny else 32)
    train_ctc(model, tok, examples, features, cfg, work / "warmstart")


def stage_step2(args, work: Path) -> None:
    from blsp_demo.train.step2 import Step2Trainer, TrainConfig

    warm = work / "warmstart" / "last.pt"
    adapter = torch.load(warm, weights_only=False)["adapter"] if warm.is_file() else None
    model, tok, _ = _micro_model(adapter, _vocab(work))
    examples, features = _train_examples(work, args.repeat_share)
    print(f"step 2 rows: {len(examples)} ({sum(e.kind == 'repeat' for e in examples)} repetition pairs)")
    dev_rows = read_manifest(work / "corpus" / "dev.jsonl")[:64]
    dev = [Example(r["id"], "Please repeat the following words.", r["transcript"], r["transcript"])
           for r in dev_rows if r["id"] in features]
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, kd_weight=args.kd_weight, lr=args.lr,
                      ctc_weight=args.ctc_weight,
                      eval_every=0 if args.tiny else 200, checkpoint_every_s=300.0,
                      llm_dtype="float32" if args.tiny else "bfloat16")
    trainer = Step2Trainer(model, tok, examples, features, cfg, work / "step2", dev=dev)
    trainer.resume()
    trainer.train()


def stage_export(args, work: Path) -> None:
    blob = torch.load(work / "step2" / "last.pt", weights_only=False)
    model, _, cfg = _micro_model(blob["adapter"], _vocab(work))
    folder = export_micro(model, cfg, Path(args.export))
    print(f"exported to {folder}")


if __name__ == "__main__":
    main()
