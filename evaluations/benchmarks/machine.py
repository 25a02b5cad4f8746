"""The machine the benchmark runs on: memory bandwidth, peak memory, what else is using the CPU,
and the bytes a decode step must read. Works on CPU and CUDA (elsewhere: what can be measured)."""

from __future__ import annotations

import os
import platform
import re
import resource
import time
from pathlib import Path

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work, so a wall-clock reading covers it."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def copy_bandwidth(device: torch.device, mib: int = 512, repeats: int = 5) -> tuple[float, float]:
    """Bytes per second of a large device copy, counting the bytes read plus the bytes written (the
    STREAM convention), best of `repeats`: per second of wall time, and per second this process
    spent on a CPU (the same on a machine of its own; higher when other processes take turns on
    the cores). `mib` is the size copied: far larger than the caches. On a GPU both are wall time."""
    n = mib * (1 << 20) // 4
    src = torch.ones(n, dtype=torch.float32, device=device)
    dst = torch.empty_like(src)
    dst.copy_(src)  # touch every page before timing
    wall = cpu = float("inf")
    for _ in range(repeats):
        sync(device)
        t0, c0 = time.perf_counter(), time.process_time()
        dst.copy_(src)
        sync(device)
        wall, cpu = min(wall, time.perf_counter() - t0), min(cpu, time.process_time() - c0)
    moved = 2 * src.numel() * src.element_size()
    return moved / wall, moved / (cpu if device.type == "cpu" and cpu > 0 else wall)


def weight_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, each storage once (tied embeddings are one matrix)."""
    seen, total = set(), 0
    for p in module.parameters():
        key = p.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += p.untyped_storage().nbytes()
    return total


def kv_bytes_per_position(config, dtype: torch.dtype) -> int:
    """KV-cache bytes one position adds (keys and values of every layer)."""
    heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    return 2 * config.num_hidden_layers * heads * head_dim * torch.finfo(dtype).bits // 8


# ---- memory ----------------------------------------------------------------------------------
_STATUS = Path("/proc/self/status")


def reset_peak_rss() -> bool:
    """Start a new peak-RSS window (Linux: writing 5 to clear_refs resets VmHWM). False if impossible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def peak_rss_bytes() -> int:
    """Peak resident memory since the last `reset_peak_rss` (or since the start). The reset also
    clears what `getrusage` reports, so read the lifetime peak before resetting."""
    if _STATUS.is_file():
        m = re.search(r"VmHWM:\s+(\d+) kB", _STATUS.read_text())
        if m:
            return int(m.group(1)) * 1024
    return lifetime_peak_rss_bytes()


def lifetime_peak_rss_bytes() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss if platform.system() == "Darwin" else rss * 1024  # macOS counts bytes, Linux kB


def device_peak_bytes(device: torch.device) -> int | None:
    return torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None


# ---- other load on the machine -----------------------------------------------------------------
def _busy_seconds() -> float | None:
    """CPU seconds all processes have spent busy since boot (Linux /proc/stat), or None."""
    try:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Average number of cores kept busy by other processes over a window (this process excluded)."""

    def __init__(self):
        self.t0, self.busy0, self.own0 = time.perf_counter(), _busy_seconds(), _own_seconds()

    def cores(self) -> float | None:
        busy = _busy_seconds()
        if busy is None or self.busy0 is None:
            return None
        wall = time.perf_counter() - self.t0
        return max(0.0, (busy - self.busy0 - (_own_seconds() - self.own0)) / wall) if wall > 0 else None


def load_average() -> tuple[float, float, float] | None:
    try:
        return os.getloadavg()
    except OSError:
        return None


# ---- description -------------------------------------------------------------------------------
def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_bytes() -> int | None:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        return None


def describe(device: torch.device, threads: int) -> dict:
    import transformers

    info = {
        "cpu": cpu_name(), "cores": os.cpu_count(), "memory_gib": round((memory_total_bytes() or 0) / 2**30, 1),
        "os": f"{platform.system()} {platform.release()}", "python": platform.python_version(),
        "torch": torch.__version__, "transformers": transformers.__version__, "device": str(device),
        "torch_threads": threads,
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
