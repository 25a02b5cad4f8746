"""Peak memory of a process serving a registered model as the app does (`load_engine(model)`, the LLM
runtime by $BLSP_LLM_RUNTIME, default llama.cpp on a CPU): load, then one spoken 5 s question and
three typed follow-ups in one conversation. Prints the peak RSS after loading and after serving
(Linux VmHWM, the whole process: weights, KV caches, Whisper, Python) and the turns' TTFT and decode.

    python -m evaluations.benchmarks.serving [--model micro-cascade] [--threads 2] [--json]

The full benchmark runs this in a fresh process per model (`serving_stage`): its `peak_rss_gb` is
the default model's peak here, the memory a user's app process needs for the model.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

from blsp_demo.conversation import Conversation
from blsp_demo.options import GenerationOptions
from blsp_demo.weights.devices import set_threads

from .machine import peak_rss_bytes
from .speech import TEXT_TURNS, five_second_clip

QUESTION = "Could you tell me what the capital of France is, and why it matters?"


def serve(model: str, new_tokens: int = 32) -> dict:
    from blsp_demo.engine.loading import load_engine

    engine = load_engine(model)
    loaded = peak_rss_bytes()
    opts = GenerationOptions(max_new_tokens=new_tokens, temperature=0.0)
    turns = []
    with tempfile.TemporaryDirectory(prefix="blsp-serve-") as tmp:
        clip = five_second_clip(QUESTION, Path(tmp) / "q.wav")
        conv = Conversation(id="serving").add_speech(str(clip), transcript=QUESTION)  # the text system reads it
        for k in range(4):
            r = engine.respond(conv, opts)
            turns.append((r.ttft_s, r.tokens_per_s))
            conv = conv.add_reply(r.text).add_text(TEXT_TURNS[k])
    return {"model": model, "runtime": engine.runtime.kind, "peak_rss_loading_gb": loaded / 1e9,
            "peak_rss_serving_gb": peak_rss_bytes() / 1e9, "turns": turns}


def serving_stage(models: list[str], threads: int, timeout_s: float = 600) -> list[dict]:
    """`serve` in a fresh Python process per model (so that nothing else this process loaded counts);
    a model that fails gives a row with its error."""
    rows = []
    for model in models:
        cmd = [sys.executable, "-m", "evaluations.benchmarks.serving", "--model", model, "--threads", str(threads),
               "--json"]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
        last = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
        rows.append(json.loads(last[0]) if last else
                    {"model": model, "error": (done.stderr.strip().splitlines() or ["no output"])[-1]})
    return rows


def serving_lines(rows: list[dict]) -> list[str]:
    lines = ["Serving process (a fresh process per model: load, one 5 s spoken question and 3 typed turns)"]
    for r in rows:
        if "error" in r:
            lines.append(f"  {r['model']}: failed: {r['error']}")
            continue
        turns = ", ".join(f"{t * 1e3:.0f} ms/{d:.1f}" for t, d in r["turns"])
        lines.append(f"  {r['model']} ({r['runtime']}): peak RSS {r['peak_rss_serving_gb']:.2f} GB "
                     f"({r['peak_rss_loading_gb']:.2f} GB after loading); TTFT/decode tok/s per turn: {turns}")
    return lines


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(prog="python -m evaluations.benchmarks.serving", description=__doc__)
    p.add_argument("--model", default="micro-cascade")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--json", action="store_true", help="print the figures as one JSON line")
    args = p.parse_args(argv)
    set_threads(args.threads)
    out = serve(args.model, args.new_tokens)
    if args.json:
        print(json.dumps(out))
        return out
    print(f"{out['model']} ({out['runtime']}): peak RSS {out['peak_rss_loading_gb']:.2f} GB after loading, "
          f"{out['peak_rss_serving_gb']:.2f} GB after serving 4 turns; TTFT ms / decode tok/s per turn: "
          + ", ".join(f"{t * 1e3:.0f}/{d:.1f}" for t, d in out["turns"]))
    return out


if __name__ == "__main__":
    main()
