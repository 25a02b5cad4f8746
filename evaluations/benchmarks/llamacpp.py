"""The engine's decode against llama.cpp's own, on the same GGUF and thread count: for the benchmarked
model's LLM and for the app's default model's LLM (side by side when they differ).

Each GGUF gets a text engine (`load_engine(<registered text model>)`, with the runtime the
benchmark runs under: llama.cpp by default on a CPU, transformers with BLSP_LLM_RUNTIME=torch), and
llama-cpp-python's `Llama` on the same file. Both decode the same prompt greedily for exactly
`question_tokens` new tokens (stop tokens blocked), repetitions interleaved; the rate counts the
tokens after the first over the time after the first (`Response.tokens_per_s`).
`decode_vs_llamacpp` is the engine's median rate over llama.cpp's, for the benchmarked model's GGUF.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from statistics import median

from blsp_demo.conversation import single_turn

from .official import forced_options

PROMPT = "Could you tell me what the capital of France is, and why it matters?"


@dataclass(frozen=True)
class DecodeVsLlamaCpp:
    llm: str  # the bundled LLM (its GGUF)
    runtime: str  # the engine's LLM runtime: llama.cpp | transformers
    threads: int
    new_tokens: int
    engine_tokens_per_s: list[float]
    llamacpp_tokens_per_s: list[float]

    @property
    def ratio(self) -> float:
        return median(self.engine_tokens_per_s) / median(self.llamacpp_tokens_per_s)


def text_model_for(llm_name: str) -> str:
    """A registered text model whose LLM is `llm_name`."""
    from blsp_demo.engine.registry import REGISTRY

    return next(name for name, e in REGISTRY.items() if e.folder is None and e.system == "text" and e.llm == llm_name)


def llamacpp_rate(model, ids: list[int], n: int) -> float:
    """llama.cpp's own greedy decode of exactly n tokens after the prompt `ids` (its KV cache reset)."""
    model.reset()
    times = []
    for _ in model.generate(ids, temp=0.0, reset=True):
        times.append(time.perf_counter())
        if len(times) == n:
            break
    return (len(times) - 1) / (times[-1] - times[0])


def compare(llm_name: str, threads: int, new_tokens: int, reps: int) -> DecodeVsLlamaCpp:
    import llama_cpp

    from blsp_demo.engine.loading import load_engine
    from blsp_demo.weights.llms import get_llm

    engine = load_engine(text_model_for(llm_name))
    folder, file = get_llm(llm_name).gguf()
    reference = llama_cpp.Llama(str(folder / file), n_ctx=512, n_threads=threads, n_threads_batch=threads,
                                verbose=False)
    opts = forced_options(new_tokens)
    conv = single_turn(text=PROMPT)
    ids = engine.plan(conv, engine.cache_for("probe")).ids
    engine.forget("probe")
    engine.respond(conv, forced_options(2))  # warm-up, both
    llamacpp_rate(reference, ids, 4)
    mine, theirs = [], []
    for rep in range(reps):
        mine.append(engine.respond(single_turn(text=PROMPT), opts).tokens_per_s)
        theirs.append(llamacpp_rate(reference, ids, new_tokens))
    kind = engine.runtime.kind
    del engine, reference
    return DecodeVsLlamaCpp(llm_name, kind, threads, new_tokens, mine, theirs)


def run_llamacpp(subject_llm: str, threads: int, new_tokens: int, reps: int,
                 also: tuple[str, ...] = ()) -> list[DecodeVsLlamaCpp]:
    """The benchmarked model's LLM first, then the default model's when it is another one (and `also`)."""
    from blsp_demo.engine.registry import DEFAULT_MODEL, REGISTRY

    names = [subject_llm]
    for name in (REGISTRY[DEFAULT_MODEL].llm, *also):
        if name not in names:
            names.append(name)
    return [compare(name, threads, new_tokens, reps) for name in names]


def llamacpp_lines(rows: list[DecodeVsLlamaCpp]) -> list[str]:
    lines = ["Decode vs llama.cpp (same GGUF, same threads, greedy, forced length; medians)"]
    for r in rows:
        lines.append(f"  {r.llm}: engine ({r.runtime}) {median(r.engine_tokens_per_s):.1f} tok/s, "
                     f"llama.cpp {median(r.llamacpp_tokens_per_s):.1f} tok/s = {r.ratio:.2f} "
                     f"({r.threads} thread(s), {r.new_tokens} tokens, {len(r.engine_tokens_per_s)} reps)")
    return lines
