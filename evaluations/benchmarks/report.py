"""Medians and ratios, the printed table, the final summary line, RESULTS.md and the TTFT plot."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from statistics import median

from .llamacpp import DecodeVsLlamaCpp, llamacpp_lines
from .serving import serving_lines
from .stages import BatchResult, Limit, Sample, Settings

ANALYSIS_START, ANALYSIS_END = "<!-- analysis:start -->", "<!-- analysis:end -->"
PLOT_NAME = "ttft_per_turn.png"
GB = 1e9


@dataclass
class Results:
    settings: Settings
    model: str
    window: str  # the engine's encoder window
    machine: dict
    samples: list[Sample]
    batch: BatchResult
    limit: Limit
    memory: dict  # peak_rss_serving, peak_rss_loading, device_peak (bytes or None)
    load: dict  # loadavg_start, loadavg_end, other_cores
    wall_s: float = 0.0
    profile: dict | None = None
    notes: list[str] = field(default_factory=list)
    llamacpp: list[DecodeVsLlamaCpp] = field(default_factory=list)  # benchmarked model's LLM first
    serving: list[dict] = field(default_factory=list)  # `serving.serve` per model, the app's default first


# ---- summaries ---------------------------------------------------------------------------------
def pick(samples: list[Sample], stage: str, system: str, turn: int | None = None) -> list[Sample]:
    return [x for x in samples if x.stage == stage and x.system == system and (turn is None or x.turn == turn)]


def med(samples: list[Sample], attr: str) -> float:
    return median(getattr(x, attr) for x in samples) if samples else float("nan")


def ratio(a: float, b: float) -> float:
    return a / b if b else float("nan")


def chat_speedup(r: Results, turn: int) -> float:
    official, engine = pick(r.samples, "chat", "official", turn), pick(r.samples, "chat", "engine", turn)
    return ratio(med(official, "ttft_s"), med(engine, "ttft_s"))


def decode_vs_bound(r: Results, system: str = "engine", clock: str = "cpu") -> float:
    """Median decode rate over the bandwidth bound. `cpu`: both per second this process spent on a CPU
    (equal to wall time on a machine of its own); `wall`: both per wall-clock second."""
    if clock == "cpu":
        return ratio(med(pick(r.samples, "question", system), "tokens_per_cpu_s"), r.limit.cpu_bound_tokens_per_s)
    return ratio(med(pick(r.samples, "question", system), "tokens_per_s"), r.limit.bound_tokens_per_s)


def headline(r: Results) -> dict[str, float]:
    return {"speedup_ttft_turn1": chat_speedup(r, 1), "speedup_ttft_turn10": chat_speedup(r, r.settings.turns),
            "speedup_batch": ratio(r.batch.engine_per_s, r.batch.official_per_s),
            "decode_vs_bound": decode_vs_bound(r),
            "decode_vs_llamacpp": r.llamacpp[0].ratio if r.llamacpp else float("nan"),
            "peak_rss_gb": serving_peak_gb(r)}


def serving_peak_gb(r: Results) -> float:
    """The peak RSS of a process serving the app's default model (the serving stage), in GB; results
    from before that stage existed: the benchmark process's own peak."""
    if r.serving:
        return r.serving[0].get("peak_rss_serving_gb", float("nan"))
    return r.memory["peak_rss_serving"] / GB


def final_line(r: Results) -> str:
    return " ".join(f"{k}={v:.2f}" for k, v in headline(r).items())


# ---- the table ---------------------------------------------------------------------------------
def question_rows(r: Results) -> list[list[str]]:
    rows = []
    base = med(pick(r.samples, "question", "official"), "ttft_s")
    for system in sorted({x.system for x in r.samples if x.stage == "question"}, key=SYSTEM_ORDER.index):
        xs = pick(r.samples, "question", system)
        rows.append([system, f"{med(xs, 'ttft_s') * 1e3:.0f}", f"{min(x.ttft_s for x in xs) * 1e3:.0f}",
                     f"{med(xs, 'tokens_per_s'):.1f}", f"{med(xs, 'tokens_per_cpu_s'):.1f}",
                     f"{med(xs, 'prefill_tokens'):.0f}", f"{med(xs, 'prompt_tokens'):.0f}",
                     f"{ratio(base, med(xs, 'ttft_s')):.2f}x"])
    return rows


SYSTEM_ORDER = ["engine", "engine-full", "official"]
# prefill: positions run through the LLM before the first token (the engine takes the system prompt's
# positions from its shared cache); prompt: all positions
QUESTION_HEADER = ["system", "TTFT ms", "best ms", "decode tok/s", "per CPU s", "prefill", "prompt", "TTFT speedup"]
CHAT_HEADER = ["turn", "kind", "engine ms", "prefill", "prompt", "official ms", "prompt", "speedup"]


def chat_rows(r: Results) -> list[list[str]]:
    rows = []
    for k in range(1, r.settings.turns + 1):
        e, o = pick(r.samples, "chat", "engine", k), pick(r.samples, "chat", "official", k)
        kind = "speech" if k % 2 else "text"
        off = [f"{med(o, 'ttft_s') * 1e3:.0f}", f"{med(o, 'prompt_tokens'):.0f}", f"{chat_speedup(r, k):.1f}x"] \
            if o else ["-", "-", "-"]
        rows.append([str(k), kind, f"{med(e, 'ttft_s') * 1e3:.0f}", f"{med(e, 'prefill_tokens'):.0f}",
                     f"{med(e, 'prompt_tokens'):.0f}", *off])
    return rows


def format_table(header: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]
    fmt = lambda cells: "  ".join(str(c).rjust(w) for c, w in zip(cells, widths))  # noqa: E731
    return [fmt(header), fmt(["-" * w for w in widths]), *map(fmt, rows)]


def batch_lines(b: BatchResult) -> list[str]:
    return [f"Batch: {b.n} spoken questions, {b.new_tokens} new tokens each",
            f"  engine, batches of {b.batch_size}: {b.engine_s:.1f} s = {b.engine_per_s:.2f} utterances/s",
            f"  official, one at a time:  {b.official_s:.1f} s = {b.official_per_s:.2f} utterances/s",
            f"  speedup {ratio(b.engine_per_s, b.official_per_s):.2f}x"]


def text_table(r: Results) -> str:
    s = r.settings
    out = [f"BLSP benchmarks ({s.name}) - model {r.model} - {r.machine.get('device')} - "
           f"{r.machine.get('torch_threads')} thread(s)", "",
           f"5 s spoken question ({s.question_reps} reps, {s.question_tokens} new tokens, greedy, forced length)"]
    out += format_table(QUESTION_HEADER, question_rows(r))
    out += ["", f"Conversation, speech on odd turns, text on even ({s.reps} reps, {s.chat_tokens} new tokens a turn; "
                "medians)"]
    out += format_table(CHAT_HEADER, chat_rows(r))
    out += ["", *batch_lines(r.batch), "", *limit_lines(r)]
    if r.llamacpp:
        out += ["", *llamacpp_lines(r.llamacpp)]
    if r.serving:
        out += ["", *serving_lines(r.serving)]
    return "\n".join(out)


def limit_lines(r: Results) -> list[str]:
    lim, mem = r.limit, r.memory
    engine = pick(r.samples, "question", "engine")
    bws = ", ".join(f"{w / GB:.2f}/{c / GB:.2f}" for w, c in lim.bandwidth_samples)
    lines = [f"Limit: LLM weights {lim.weight_bytes / 1e6:.0f} MB read per decoded token "
             f"(+{lim.kv_share:.1%} KV cache at {lim.context} positions)",
             f"  copy bandwidth, per wall second / per CPU second of this process: {bws} GB/s",
             f"  per CPU second: bound {lim.cpu_bound_tokens_per_s:.1f} tok/s; engine decode "
             f"{med(engine, 'tokens_per_cpu_s'):.1f} tok/s = {decode_vs_bound(r):.2f} of it; "
             f"official (HF generate) {decode_vs_bound(r, 'official'):.2f}",
             f"  per wall second:  bound {lim.bound_tokens_per_s:.1f} tok/s; engine decode "
             f"{med(engine, 'tokens_per_s'):.1f} tok/s = {decode_vs_bound(r, clock='wall'):.2f} of it; "
             f"official {decode_vs_bound(r, 'official', 'wall'):.2f}",
             f"  peak RSS while benchmarking {mem['peak_rss_serving'] / 2**30:.2f} GiB; "
             f"while loading the model {mem['peak_rss_loading'] / 2**30:.2f} GiB"]
    if mem.get("device_peak"):
        lines.append(f"  peak device memory {mem['device_peak'] / 2**30:.2f} GiB")
    return lines


# ---- files -------------------------------------------------------------------------------------
def plot_ttft(r: Results, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=120)
    turns = list(range(1, r.settings.turns + 1))
    for k in turns[::2]:
        ax.axvspan(k - 0.5, k + 0.5, color="0.93", lw=0)
    for system, color, label in (("official", "tab:red", "official path (30 s windows, no cache)"),
                                 ("engine", "tab:blue", f"engine ({r.window} window, KV cache)")):
        ks = [k for k in turns if pick(r.samples, "chat", system, k)]
        ys = [med(pick(r.samples, "chat", system, k), "ttft_s") * 1e3 for k in ks]
        lo = [y - min(x.ttft_s for x in pick(r.samples, "chat", system, k)) * 1e3 for k, y in zip(ks, ys)]
        hi = [max(x.ttft_s for x in pick(r.samples, "chat", system, k)) * 1e3 - y for k, y in zip(ks, ys)]
        ax.errorbar(ks, ys, yerr=[lo, hi], color=color, marker="o", capsize=3, label=label)
    ax.set_yscale("log")
    ax.set_xticks(turns)
    ax.set_xlabel("turn (shaded: spoken 5 s question; white: text)")
    ax.set_ylabel("time to first token, ms (log scale)")
    ax.set_title(f"Time to first token per turn: {r.model}\n{r.machine.get('device')}, "
                 f"{r.machine.get('torch_threads')} thread(s); median and min-max of {r.settings.reps} conversations",
                 fontsize=9)
    ax.grid(True, which="both", axis="y", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def to_json(r: Results) -> dict:
    d = asdict(r)
    d["headline"] = headline(r)
    d["limit"] |= {"bound_tokens_per_s": r.limit.bound_tokens_per_s,
                   "cpu_bound_tokens_per_s": r.limit.cpu_bound_tokens_per_s}
    if r.profile:
        d["profile"] = {**r.profile, "stages": {k: asdict(v) for k, v in r.profile["stages"].items()}}
    return d


def from_json(d: dict) -> Results:
    """`Results` back from `results.json` (to rewrite RESULTS.md and the plot without running again)."""
    from .profiling import Stages

    profile = d.get("profile")
    if profile:
        profile = {**profile, "stages": {k: Stages(**v) for k, v in profile["stages"].items()}}
    settings = d["settings"] | {"official_turns": tuple(d["settings"]["official_turns"] or ()) or None}
    limit = {k: v for k, v in d["limit"].items() if k in Limit.__dataclass_fields__}
    limit["bandwidth_samples"] = [tuple(x) for x in limit["bandwidth_samples"]]
    return Results(settings=Settings(**settings), model=d["model"], window=d["window"], machine=d["machine"],
                   samples=[Sample(**x) for x in d["samples"]], batch=BatchResult(**d["batch"]),
                   limit=Limit(**limit), memory=d["memory"], load=d["load"], wall_s=d["wall_s"],
                   profile=profile, notes=d.get("notes", []),
                   llamacpp=[DecodeVsLlamaCpp(**x) for x in d.get("llamacpp", [])],
                   serving=d.get("serving", []))


def kept_analysis(path: Path) -> str:
    """The hand-written analysis of an earlier RESULTS.md, kept when the tables are regenerated."""
    if not path.is_file():
        return f"{ANALYSIS_START}\n(analysis to be written after the run)\n{ANALYSIS_END}"
    m = re.search(re.escape(ANALYSIS_START) + ".*?" + re.escape(ANALYSIS_END), path.read_text(), re.S)
    return m.group(0) if m else f"{ANALYSIS_START}\n{ANALYSIS_END}"


def write_results(r: Results, folder: Path, command: str) -> Path:
    """RESULTS.md (the analysis block of an earlier one kept), results.json and the plot."""
    folder.mkdir(parents=True, exist_ok=True)
    plot_ttft(r, folder / PLOT_NAME)
    (folder / "results.json").write_text(json.dumps(to_json(r) | {"command": command}, indent=1, default=str))
    path = folder / "RESULTS.md"
    path.write_text(results_markdown(r, command, kept_analysis(path)))
    return path


def results_markdown(r: Results, command: str, analysis: str) -> str:
    m, ld = r.machine, r.load
    machine = "\n".join(f"- {k}: {v}" for k, v in m.items())
    load = (f"- load average at start {fmt_load(ld.get('loadavg_start'))}, at end {fmt_load(ld.get('loadavg_end'))}\n"
            f"- other processes kept {ld['other_cores']:.2f} of {m.get('cores')} cores busy on average during the run"
            if ld.get("other_cores") is not None else "- other load: not measurable here")
    parts = [
        "# Benchmarks: engine vs the official BLSP code path", "",
        f"Generated by `{command}` ({r.wall_s / 60:.1f} min). Raw numbers: `results.json`.", "",
        analysis, "",
        "## Headline", "", "```", final_line(r), "```", "",
        "## Machine", "", machine, load, *[f"- {n}" for n in r.notes], "",
        "## Tables", "", "```", text_table(r), "```", "",
        f"![TTFT per turn]({PLOT_NAME})", "",
    ]
    if r.profile:
        parts += profile_markdown(r.profile)
    return "\n".join(parts) + "\n"


def fmt_load(x) -> str:
    return " / ".join(f"{v:.2f}" for v in x) if x else "n/a"


def profile_markdown(profile: dict) -> list[str]:
    lines = ["## Profile: where a turn's time goes", "",
             "Stage times from forward hooks (one run each, separate from the timed repetitions):", "",
             "| run | TTFT ms | encoder ms (calls) | LLM prefill ms (positions) | other ms | decode ms/token |",
             "|---|---|---|---|---|---|"]
    for name, st in profile["stages"].items():
        per_tok = st.decode_s / st.decode_steps * 1e3 if st.decode_steps else float("nan")
        lines.append(f"| {name} | {st.ttft_s * 1e3:.0f} | {st.encoder_s * 1e3:.0f} ({st.encoder_calls}) | "
                     f"{st.prefill_s * 1e3:.0f} ({st.prefill_positions}) | {st.other_s * 1e3:.0f} | {per_tok:.1f} |")
    lines += ["", "Reading a 5 s WAV clip (median of 5): " + ", ".join(
        f"{name} {ms:.0f} ms" for name, ms in profile.get("audio_ms", {}).items()) + ".", ""]
    lines += ["torch.profiler, operators by self time (whole turn, decode included):", ""]
    for name, ops in profile["ops"].items():
        lines += [f"**{name}**", "", "| operator | calls | self ms | share |", "|---|---|---|---|"]
        lines += [f"| `{o['op']}` | {o['calls']} | {o['self_ms']:.0f} | {o['share']:.0%} |" for o in ops]
        lines.append("")
    return lines
