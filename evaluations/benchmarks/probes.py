"""Probes of the LLM's decode step, in CPU seconds of this process (so other processes' share of a busy
machine does not count): what the matmuls alone cost, what a forward pass costs at several batch
sizes, and what int8 weights and a compiled static-cache step would change. Backs the analysis in
RESULTS.md; not part of the benchmark's timings.

    python -m evaluations.benchmarks.probes [--model micro-blsp] [--threads 1] [--compile]
"""

from __future__ import annotations

import argparse
import time
from statistics import median

import torch

from blsp_demo.weights.devices import set_threads

from .machine import copy_bandwidth, weight_bytes
from .subjects import load_subject

CONTEXT = 62  # positions in the cache: the 5 s question's prompt


def random_ids(llm, batch: int, positions: int) -> torch.Tensor:
    return torch.randint(0, min(1000, llm.config.vocab_size), (batch, positions))


def cpu_ms(fn, repeats: int = 5) -> float:
    """Median CPU milliseconds of `fn()`."""
    times = []
    for _ in range(repeats):
        c0 = time.process_time()
        fn()
        times.append(time.process_time() - c0)
    return median(times) * 1e3


def matmul_floor_ms(llm) -> float:
    """Every linear layer applied to one row: the decode step with nothing but its matmuls."""
    weights = [m.weight for m in llm.modules() if isinstance(m, torch.nn.Linear)]
    rows = {w.shape[1]: torch.randn(1, w.shape[1], dtype=w.dtype, device=w.device) for w in weights}
    with torch.inference_mode():
        return cpu_ms(lambda: [torch.nn.functional.linear(rows[w.shape[1]], w) for w in weights])


@torch.inference_mode()
def decode_step_ms(llm, batch: int = 1, context: int = CONTEXT) -> float:
    """One forward of `batch` new tokens over a DynamicCache of `context` positions."""
    from transformers import DynamicCache

    past = DynamicCache(config=llm.config)
    llm(input_ids=random_ids(llm, batch, context), past_key_values=past, use_cache=True)
    token = torch.full((batch, 1), 5)

    def step():
        llm(input_ids=token, past_key_values=past, use_cache=True)
        past.crop(-1)

    return cpu_ms(step)


@torch.inference_mode()
def prefill_ms(llm, positions: int) -> float:
    ids = random_ids(llm, 1, positions)
    return cpu_ms(lambda: llm(input_ids=ids), repeats=3)


@torch.inference_mode()
def static_step_ms(llm, compiled: bool) -> float:
    """A decode step over a preallocated StaticCache, eager or through torch.compile."""
    from transformers import StaticCache

    past = StaticCache(config=llm.config, max_cache_len=256)
    llm(input_ids=random_ids(llm, 1, CONTEXT), past_key_values=past, use_cache=True,
        cache_position=torch.arange(CONTEXT))
    token, position = torch.tensor([[5]]), torch.tensor([CONTEXT])
    forward = torch.compile(llm.forward, dynamic=False) if compiled else llm.forward
    step = lambda: forward(input_ids=token, past_key_values=past, use_cache=True, cache_position=position)  # noqa: E731
    step()  # compiles
    return cpu_ms(step)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.benchmarks.probes", description=__doc__)
    p.add_argument("--model", default="micro-blsp")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", action="store_true", help="also a compiled static-cache step (minutes to compile)")
    args = p.parse_args(argv)
    set_threads(args.threads)
    engine, model = load_subject(args.model, "cpu")
    llm = engine.llm
    _, per_cpu_s = copy_bandwidth(torch.device("cpu"), 512)
    floor_ms = weight_bytes(llm) / per_cpu_s * 1e3
    print(f"{model}: weights {weight_bytes(llm) / 1e6:.0f} MB; copy bandwidth {per_cpu_s / 1e9:.2f} GB per CPU second "
          f"-> bound {floor_ms:.0f} ms per token")
    print(f"matmuls alone, one row: {matmul_floor_ms(llm):.0f} ms")
    for batch in (1, 10, 25, 50):
        ms = decode_step_ms(llm, batch)
        print(f"decode step, batch {batch:>2}: {ms:.0f} ms ({ms / batch:.1f} ms per row)")
    print(f"prefill 24 positions: {prefill_ms(llm, 24):.0f} ms; 62 positions: {prefill_ms(llm, CONTEXT):.0f} ms")
    q8 = torch.ao.quantization.quantize_dynamic(llm, {torch.nn.Linear}, dtype=torch.qint8)
    print(f"int8 dynamic (other weights): decode step {decode_step_ms(q8):.0f} ms; "
          f"prefill 62 positions {prefill_ms(q8, CONTEXT):.0f} ms")
    del q8
    if args.compile:
        print(f"static cache, eager: {static_step_ms(llm, False):.0f} ms; compiled: {static_step_ms(llm, True):.0f} ms")


if __name__ == "__main__":
    main()
