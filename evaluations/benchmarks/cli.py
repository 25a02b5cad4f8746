"""`python -m evaluations.benchmarks [--quick]`: run every stage, print the table, end with the one
summary line; the full run also writes RESULTS.md, results.json and the TTFT plot."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch

from blsp_demo.weights.devices import Placement, set_threads

from . import machine
from .llamacpp import llamacpp_lines, run_llamacpp
from .official import OfficialPath
from .profiling import profile_turns
from .serving import serving_stage
from .report import Results, batch_lines, final_line, from_json, text_table, write_results
from .speech import QUESTION_SECONDS, chat_script, five_second_clip, question_clips
from .stages import FULL, QUICK, BatchResult, Limit, Settings, describe_limit, log, measure_bandwidth, run_batch, \
    run_chat, run_question, warm_up
from .subjects import engine_for, load_subject

HERE = Path(__file__).resolve().parent
QUESTION = "Could you tell me what the capital of France is, and why it matters?"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m evaluations.benchmarks", description=__doc__)
    p.add_argument("--quick", action="store_true", help="one repetition, short replies, 8 questions in one batch (a minute or two)")
    p.add_argument("--model", default="micro-blsp", help="micro-blsp (default), paper-shape, or a BLSP folder / Hub id")
    p.add_argument("--device", default=None, help="cpu, cuda, mps (default: the best there is)")
    p.add_argument("--dtype", default=None, help="float32, bfloat16, float16 (default: by device)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: $BLSP_THREADS or all cores)")
    p.add_argument("--reps", type=int, default=None, help="repetitions of the conversation")
    p.add_argument("--batch-n", type=int, default=None, help="spoken questions in the batch stage")
    p.add_argument("--batch-size", type=int, default=None, help="the engine's batch size in the batch stage")
    p.add_argument("--batch-only", action="store_true",
                   help="only the batch stage (prints its lines and speedup_batch=X; writes nothing)")
    p.add_argument("--llamacpp-only", action="store_true",
                   help="only the decode comparison with llama.cpp, on every bundled LLM (prints its lines and "
                        "decode_vs_llamacpp=X for the micro models' SmolLM2; loads no BLSP model; writes nothing)")
    p.add_argument("--out", type=Path, default=None,
                   help="write RESULTS.md, results.json and the plot here (full run default: evaluations/benchmarks)")
    p.add_argument("--no-profile", action="store_true", help="skip the profile (full run)")
    p.add_argument("--rewrite", action="store_true",
                   help="run nothing: rewrite RESULTS.md and the plot in --out from its results.json")
    return p.parse_args(argv)


def settings_from(args: argparse.Namespace) -> Settings:
    s = QUICK if args.quick else FULL
    given = {"reps": args.reps, "batch_n": args.batch_n, "batch_size": args.batch_size}
    changes = {k: v for k, v in given.items() if v is not None}
    if args.no_profile:
        changes["profile"] = False
    return replace(s, **changes)


def run_benchmark(engine, model: str, s: Settings, work: Path, threads: int) -> Results:
    """Every stage on one engine; the official path runs on the same model object."""
    t_start = time.perf_counter()
    official = OfficialPath.from_engine(engine)
    engines = {"engine": engine}
    if s.full_window_engine and engine.frontend.window != "full":  # turn 1: how much is the window, how much the rest
        engines["engine-full"] = engine_for(engine.frontend.model, engine.tokenizer, engine.frontend.feature_extractor,
                                            machine_place(engine), engine.model_id, window="full",
                                            runtime=None if engine.llm is not None else engine.runtime)
    load = {"loadavg_start": machine.load_average()}
    other = machine.OtherLoad()
    log(f"making speech with espeak-ng in {work}")
    clip = str(five_second_clip(QUESTION, work / "question5s.wav"))
    script = chat_script(work / "chat", s.turns)
    clips = [path for path, _ in question_clips(work / "questions", s.batch_n)]
    loading_peak = machine.peak_rss_bytes()  # model loading and the clips: read before the reset
    limit = Limit()
    measure_bandwidth(limit, engine.device, s, times=2)  # before and after the peak-memory window:
    machine.reset_peak_rss()  # the copy's buffers are not the model's memory
    warm_up(engines, official, clip)
    log(f"5 s question ({QUESTION_SECONDS:.0f} s clip)")
    questions = run_question(engines, official, clip, s)
    log("conversation")
    chats = run_chat(engine, official, script, s)
    log("batch")
    batch = run_batch(engine, official, clips, s)
    memory = {"peak_rss_serving": machine.peak_rss_bytes(), "peak_rss_loading": loading_peak,
              "device_peak": machine.device_peak_bytes(engine.device)}
    measure_bandwidth(limit, engine.device, s, times=2)
    llamacpp = []
    if engine.device.type == "cpu" and subject_llm(engine) is not None:  # after the memory window: it loads more
        log("decode vs llama.cpp")
        llamacpp = run_llamacpp(subject_llm(engine), threads, LLAMACPP_TOKENS, s.reps)
    serving = []
    if subject_llm(engine) is not None:  # a bundled model: the app's default is measured beside it
        log("serving process: " + ", ".join(serving_models(s)))
        serving = serving_stage(serving_models(s), threads)
    profile = None
    if s.profile:
        log("profile")
        profile = profile_turns(engine, official, script, s)
    load |= {"loadavg_end": machine.load_average(), "other_cores": other.cores()}
    described = machine.describe(engine.device, threads) | {"llm_runtime": engine.runtime.kind}
    return Results(settings=s, model=model, window=engine.frontend.window, machine=described,
                   samples=questions + chats, batch=batch, limit=describe_limit(engine, limit, questions),
                   memory=memory, load=load, wall_s=time.perf_counter() - t_start, profile=profile,
                   llamacpp=llamacpp, serving=serving)


def serving_models(s: Settings) -> list[str]:
    """The app's default model (its peak is `peak_rss_gb`), and in the full run SmolLM2's cascade beside it."""
    from blsp_demo.engine.registry import DEFAULT_MODEL

    return [DEFAULT_MODEL] + ([] if s.name == "quick" or DEFAULT_MODEL == "micro-cascade" else ["micro-cascade"])


LLAMACPP_TOKENS = 64  # new tokens of the decode comparison with llama.cpp (quick run too)


def subject_llm(engine) -> str | None:
    """The bundled LLM (a GGUF) of the benchmarked model, or None (paper shape, other folders)."""
    from blsp_demo.weights.llms import DEFAULT_LLM

    return DEFAULT_LLM if engine.model_id == "micro-blsp" else None


def run_batch_only(engine, s: Settings, work: Path) -> BatchResult:
    official = OfficialPath.from_engine(engine)
    log(f"making speech with espeak-ng in {work}")
    clips = [path for path, _ in question_clips(work / "questions", s.batch_n)]
    warm_up({"engine": engine}, official, clips[0])
    return run_batch(engine, official, clips, s)


def machine_place(engine) -> Placement:
    return Placement(engine.device, next(engine.frontend.model.parameters()).dtype)


def rewrite(folder: Path) -> Results:
    """RESULTS.md and the plot again from results.json (after editing the analysis or the report code)."""
    data = json.loads((folder / "results.json").read_text())
    results = from_json(data)
    write_results(results, folder, data.get("command", "python -m evaluations.benchmarks"))
    return results


def main(argv: list[str] | None = None) -> Results | BatchResult:
    args = parse_args(argv)
    if args.rewrite:
        results = rewrite(args.out or HERE)
        print(text_table(results))
        print(final_line(results))
        return results
    threads = set_threads(args.threads)
    s = settings_from(args)
    if args.llamacpp_only:
        from blsp_demo.weights.llms import BUNDLED_LLMS, DEFAULT_LLM

        rows = run_llamacpp(DEFAULT_LLM, threads, LLAMACPP_TOKENS, s.reps, also=tuple(BUNDLED_LLMS))
        print("\n".join(llamacpp_lines(rows)))
        print(f"decode_vs_llamacpp={rows[0].ratio:.2f}")
        return rows
    log(f"loading {args.model} ({threads} thread(s))")
    engine, model = load_subject(args.model, args.device, args.dtype)
    with tempfile.TemporaryDirectory(prefix="blsp-bench-") as tmp:
        if args.batch_only:
            batch = run_batch_only(engine, s, Path(tmp))
            print("\n".join([f"model {model} - {engine.device} - {threads} thread(s)", *batch_lines(batch)]))
            print(f"speedup_batch={batch.engine_per_s / batch.official_per_s:.2f}")
            return batch
        results = run_benchmark(engine, model, s, Path(tmp), threads)
    if engine.device.type == "cpu" and not torch.cuda.is_available():
        results.notes.append("no GPU on this machine: CPU only (the code takes --device cuda unchanged)")
    out = args.out or (None if args.quick else HERE)
    if out is not None:
        command = "python -m evaluations.benchmarks " + " ".join(shlex.quote(a) for a in (argv or sys.argv[1:]))
        log(f"wrote {write_results(results, out, command.strip())}")
    print(text_table(results))
    print(final_line(results))
    return results
