"""The BLSP modality adapter: conv subsampler -> bottleneck -> LayerNorm.

Module and parameter names match the official release exactly (`subsampler.conv_layers.N`,
`adapter.fc1/fc2`, `speech_ln`), so official checkpoints load with no missing keys.
"""

from __future__ import annotations

import torch
from torch import nn


class Conv1dSubsampler(nn.Module):
    """A stack of stride-2 Conv1d + GLU layers: 8x fewer frames with 3 layers."""

    def __init__(self, in_channels: int, mid_channels: int, out_channels: int, kernel_sizes: list[int]):
        super().__init__()
        n = len(kernel_sizes)
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(
                in_channels if i == 0 else mid_channels // 2,
                mid_channels if i < n - 1 else out_channels * 2,  # GLU halves the channels
                k, stride=2, padding=k // 2,
            )
            for i, k in enumerate(kernel_sizes)
        )

    def output_lengths(self, lengths: torch.Tensor) -> torch.Tensor:
        for _ in self.conv_layers:
            lengths = torch.div(lengths - 1, 2, rounding_mode="floor") + 1
        return lengths

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)  # (B, T, d_enc) -> (B, d_enc, T)
        for conv in self.conv_layers:
            x = nn.functional.glu(conv(x), dim=1)  # (B, C, T) -> (B, C_out/2, ceil(T/2))
        return x.transpose(1, 2)  # (B, T/8, d_llm)


class Adapter(nn.Module):
    """Bias-free bottleneck with a residual connection."""

    def __init__(self, dim: int, inner_dim: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, inner_dim, bias=False)
        self.fc2 = nn.Linear(inner_dim, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(nn.functional.gelu(self.fc1(x)))


def lengths_to_mask(lengths: torch.Tensor, max_len: int | None = None) -> torch.Tensor:
    """(B,) lengths -> (B, T) bool mask, True on real positions."""
    max_len = int(lengths.max()) if max_len is None else max_len
    return torch.arange(max_len, device=lengths.device)[None, :] < lengths[:, None]
