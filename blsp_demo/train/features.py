"""Cache of frozen Whisper encoder states, so each training step only runs the adapter and LLM.

`python -m blsp_demo.train.features --manifest train.jsonl --out DIR [--window trimmed]`
writes `DIR/shard-00000.pt` ... (fp16 states per clip id) and is resumable shard by shard.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path

import torch
from tqdm import tqdm

from blsp_demo.audio import load_audio
from blsp_demo.model.encoder import encode_features, log_mel


def read_manifest(path: Path) -> list[dict]:
    """Manifest rows with `audio` made absolute (paths in a manifest are relative to its folder)."""
    path = Path(path)
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for row in rows:
        if row.get("audio"):
            row["audio"] = str((path.parent / row["audio"]).resolve())
    return rows


def load_bundled_encoder(dtype: torch.dtype = torch.float32):
    """Whisper base encoder + its feature extractor from the bundled weights."""
    from transformers import WhisperConfig, WhisperFeatureExtractor
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from blsp_demo.weights import sources
    from blsp_demo.weights.checkpoints import whisper_encoder_state

    weights = sources.whisper_base()
    encoder = WhisperEncoder(WhisperConfig.from_pretrained(weights.hf_dir))
    encoder.load_state_dict(whisper_encoder_state(weights.hf_dir))
    return encoder.eval().to(dtype), WhisperFeatureExtractor.from_pretrained(weights.hf_dir)


@torch.inference_mode()
def encode_clip(encoder, extractor, audio_path: str, window: str) -> torch.Tensor:
    """One clip (<= 30 s) -> encoder states (T', d_enc)."""
    samples = load_audio(audio_path)[: 30 * 16000]
    features, frames = log_mel(extractor, samples, window)
    states, lengths = encode_features(encoder, features, frames, window)
    return states[0, : int(lengths[0])]


def cache_features(rows: list[dict], out: Path, *, window: str = "trimmed", shard_size: int = 500,
                   encoder=None, extractor=None, prefix: str = "shard") -> int:
    """Encode every row's audio into fp16 shards `out/PREFIX-00000.pt` ...; existing shards are
    kept (resume). A different `prefix` adds clips to a store without touching its shards."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"meta-{prefix}.json").write_text(json.dumps({"window": window, "clips": len(rows)}))
    if encoder is None:
        encoder, extractor = load_bundled_encoder()
    shards = [rows[i: i + shard_size] for i in range(0, len(rows), shard_size)]
    todo = [(k, s) for k, s in enumerate(shards) if not (out / f"{prefix}-{k:05d}.pt").is_file()]
    bar = tqdm(total=sum(len(s) for _, s in todo), desc=f"encoder ({window})", unit="clip")
    for k, shard in todo:
        states = {}
        for row in shard:
            states[row["id"]] = encode_clip(encoder, extractor, row["audio"], window).half().clone()
            bar.update(1)
        tmp = out / f".{prefix}-{k:05d}.pt.tmp"
        torch.save(states, tmp)
        os.replace(tmp, out / f"{prefix}-{k:05d}.pt")  # a killed run never leaves a half shard
    bar.close()
    return len(rows)


def load_feature_store(out: Path) -> dict[str, torch.Tensor]:
    store: dict[str, torch.Tensor] = {}
    for shard in sorted(Path(out).glob("*-[0-9][0-9][0-9][0-9][0-9].pt")):
        store.update(torch.load(shard))
    return store


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--window", default="trimmed", choices=["trimmed", "full"])
    p.add_argument("--shard-size", type=int, default=500)
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each manifest")
    p.add_argument("--skip", type=int, default=0, help="leave out the first N rows of each manifest")
    p.add_argument("--prefix", default="shard", help="shard file prefix (a new one adds clips to a store)")
    args = p.parse_args(argv)
    from blsp_demo.weights.devices import set_threads

    set_threads()
    rows = [r for m in args.manifest for r in read_manifest(Path(m))[args.skip: args.limit]]
    n = cache_features(rows, Path(args.out), window=args.window, shard_size=args.shard_size, prefix=args.prefix)
    print(f"cached {n} clips in {args.out}")


if __name__ == "__main__":
    main()
