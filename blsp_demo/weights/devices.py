"""Device and dtype choice: cuda > mps > cpu unless told otherwise; bf16/fp16 on GPU, fp32 on CPU."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Placement:
    device: torch.device
    dtype: torch.dtype


def pick_device(preference: str | None = None) -> torch.device:
    pref = preference or os.environ.get("BLSP_DEVICE") or "auto"
    if pref != "auto":
        return torch.device(pref)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def pick_dtype(device: torch.device, preference: str | None = None) -> torch.dtype:
    pref = preference or os.environ.get("BLSP_DTYPE") or "auto"
    if pref != "auto":
        return {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16,
                "bf16": torch.bfloat16, "float16": torch.float16, "fp16": torch.float16}[pref]
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if device.type == "mps":
        return torch.float16
    return torch.float32


def placement(device: str | None = None, dtype: str | None = None) -> Placement:
    dev = pick_device(device)
    return Placement(dev, pick_dtype(dev, dtype))


def set_threads(n: int | None = None) -> int:
    """Use the cores deliberately (BLSP_THREADS); two torch jobs on two cores slow each other ~10x."""
    n = n or int(os.environ.get("BLSP_THREADS", "0") or 0) or (os.cpu_count() or 1)
    torch.set_num_threads(n)
    return n


def fast_bf16(device: torch.device) -> bool:
    """Whether bf16 matmuls are fast here: CUDA with bf16, or a CPU with AVX512-BF16 / AMX (about
    2x faster than fp32 for the adapter's convolutions on this project's 2-core machine)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def autocast(device: torch.device, enabled: bool = True):
    """bf16 autocast where it is fast (see `fast_bf16`), else a no-op context."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled and fast_bf16(device))
