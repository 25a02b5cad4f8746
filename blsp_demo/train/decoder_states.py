"""Cache of Whisper's greedy decoder states per clip (the `whisper-decoder` speech side), so that
training steps never run Whisper.

`python -m blsp_demo.train.decoder_states --manifest M.jsonl [...] --out DIR --prefix NAME`
writes `DIR/NAME-00000.pt` ... holding, per clip id, Whisper's greedy tokens and the decoder's
final hidden state for each (fp16, n x 512: ~1 kB a token). Resumable shard by shard.
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
from blsp_demo.model.whisper_reader import greedy_states
from blsp_demo.train.features import load_bundled_encoder, read_manifest


def load_bundled_decoder():
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperDecoder

    from blsp_demo.weights import sources
    from blsp_demo.weights.checkpoints import whisper_state

    hf_dir = sources.whisper_base().hf_dir
    decoder = WhisperDecoder(WhisperConfig.from_pretrained(hf_dir))
    decoder.load_state_dict(whisper_state(hf_dir, "model.decoder."))
    return decoder.eval()


@torch.inference_mode()
def read_clip(encoder, decoder, extractor, audio_path: str, window: str = "trimmed") -> tuple[list[int], torch.Tensor]:
    samples = load_audio(audio_path)[: 30 * 16000]
    features, frames = log_mel(extractor, samples, window)
    states, lengths = encode_features(encoder, features, frames, window)
    return greedy_states(decoder, states[:, : int(lengths[0])])


def cache_decoder_states(rows: list[dict], out: Path, prefix: str, shard_size: int = 250,
                         window: str = "trimmed") -> int:
    out.mkdir(parents=True, exist_ok=True)
    encoder, extractor = load_bundled_encoder()
    decoder = load_bundled_decoder()
    shards = [rows[i: i + shard_size] for i in range(0, len(rows), shard_size)]
    todo = [(k, s) for k, s in enumerate(shards) if not (out / f"{prefix}-{k:05d}.pt").is_file()]
    bar = tqdm(total=sum(len(s) for _, s in todo), desc="whisper decoder states", unit="clip")
    for k, shard in todo:
        blob = {"states": {}, "tokens": {}}
        for row in shard:
            tokens, states = read_clip(encoder, decoder, extractor, row["audio"], window)
            blob["states"][row["id"]] = states.half().clone()
            blob["tokens"][row["id"]] = tokens
            bar.update(1)
        tmp = out / f".{prefix}-{k:05d}.pt.tmp"
        torch.save(blob, tmp)
        os.replace(tmp, out / f"{prefix}-{k:05d}.pt")
    bar.close()
    return len(rows)


def load_decoder_store(out: Path) -> tuple[dict[str, torch.Tensor], dict[str, list[int]]]:
    """(clip id -> states (n, d_dec), clip id -> Whisper token ids) over every shard of `out`."""
    states, tokens = {}, {}
    for shard in sorted(Path(out).glob("*-[0-9][0-9][0-9][0-9][0-9].pt")):
        blob = torch.load(shard)
        states.update(blob["states"])
        tokens.update(blob["tokens"])
    return states, tokens


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--manifest", required=True, nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--prefix", default="shard")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows of each manifest")
    args = p.parse_args(argv)
    from blsp_demo.weights.devices import set_threads

    set_threads()
    rows = [r for m in args.manifest for r in read_manifest(Path(m))[: args.limit]]
    n = cache_decoder_states(rows, Path(args.out), args.prefix)
    print(json.dumps({"clips": n, "out": args.out}))


if __name__ == "__main__":
    main()
