"""Running the Whisper encoder in one of two windows.

- `full`: features padded to 30 s (3000 mel frames), as the official checkpoint was trained;
  the output is cut to the real length afterwards.
- `trimmed`: only the real frames go through the encoder, with the positional embeddings
  sliced to match. 3-6x cheaper for short clips, but the features differ from the full ones
  (per-frame cosine 0.92-0.97), so an adapter must be run the way it was trained.
"""

from __future__ import annotations

import torch
from torch import nn

WINDOWS = ("full", "trimmed")
N_FRAMES = 3000  # mel frames in 30 s (hop 160 at 16 kHz)


def log_mel(extractor, samples, window: str = "full") -> tuple["torch.Tensor", "torch.Tensor"]:
    """16 kHz samples (<= 30 s) -> features (1, n_mels, T) and real-frame counts (1,).

    `full` pads to 30 s as the official code does; `trimmed` computes only the real frames
    (3.5x cheaper; the last frame or two differ slightly from the padded computation)."""
    padding = "max_length" if window == "full" else "longest"
    feats = extractor(samples, sampling_rate=16000, return_attention_mask=True, return_tensors="pt", padding=padding)
    return feats["input_features"], feats["attention_mask"].sum(-1)


def output_lengths(frames: torch.Tensor) -> torch.Tensor:
    """Mel frames -> encoder states (conv2 has stride 2)."""
    return torch.div(frames - 1, 2, rounding_mode="floor") + 1


def _layers(encoder, x: torch.Tensor) -> torch.Tensor:
    for layer in encoder.layers:
        out = layer(x, None)
        x = out[0] if isinstance(out, tuple) else out
    return encoder.layer_norm(x)


def encode_trimmed(encoder, features: torch.Tensor) -> torch.Tensor:
    """One clip's real frames (1, n_mels, T) -> (1, ceil(T/2), d_enc), positions sliced."""
    x = nn.functional.gelu(encoder.conv1(features))
    x = nn.functional.gelu(encoder.conv2(x)).permute(0, 2, 1)  # (1, T/2, d_enc)
    x = x + encoder.embed_positions.weight[: x.shape[1]]
    return _layers(encoder, x)


def encode_features(encoder, features: torch.Tensor, frames: torch.Tensor,
                    window: str = "full") -> tuple[torch.Tensor, torch.Tensor]:
    """Features (B, n_mels, 3000) + real-frame counts (B,) -> states (B, T', d_enc), lengths (B,)."""
    if window not in WINDOWS:
        raise ValueError(f"encoder window must be one of {WINDOWS}, not {window!r}")
    lengths = output_lengths(frames)
    if window == "full":
        states = encoder(features).last_hidden_state  # (B, 1500, d_enc)
        return states[:, : int(lengths.max())], lengths
    # Each clip alone: padding frames would otherwise take part in attention.
    outs = [encode_trimmed(encoder, features[b: b + 1, :, : int(frames[b])]) for b in range(features.shape[0])]
    width = int(lengths.max())
    states = outs[0].new_zeros(len(outs), width, outs[0].shape[-1])
    for b, o in enumerate(outs):
        states[b, : o.shape[1]] = o[0]
    return states, lengths
