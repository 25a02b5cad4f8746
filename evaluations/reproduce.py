"""All the tables on the shipped sets in one command (the paper's Table 2 / Table 3 layout).

    python -m evaluations.data.make_sets [--pocketsphinx-sdist pocketsphinx-5.1.1.tar.gz]
    python -m evaluations.reproduce --model micro-blsp --out evaluations/results [--judge llama-server]

Runs `evaluations.run` on each manifest of evaluations/data (asr, real, st, slu, qa; a missing one
is skipped) into OUT/<set>/, then joins the tables into OUT/README.md. Resumable like each run.
Wall-clock times go to OUT/timings.json (they vary; the tables do not).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from blsp_demo.judge import BACKENDS

from . import run as R

DATA = Path(__file__).resolve().parent / "data"
SETS = (("asr", "asr"), ("real", "asr"), ("st", "st"), ("slu", "slu"), ("qa", "qa"))  # (manifest, --task)
HEADINGS = {"asr": "Table 2 (left): ASR by repetition, TTS speech", "real": "Table 2 (left): ASR by repetition, real speech",
            "st": "Table 2 (right): speech translation English -> German", "slu": "Table 3: intent and sentiment",
            "qa": "Spoken questions: answer match and acceptability"}


def table_of(results_md: Path) -> list[str]:
    """The table lines and the notes under it, without the file's title and command."""
    body = results_md.read_text(encoding="utf-8").splitlines()[2:]
    return body[:body.index("Made with:")] if "Made with:" in body else body


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.reproduce", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="micro-blsp")
    p.add_argument("--systems", default="blsp,cascade,text")
    p.add_argument("--data", type=Path, default=DATA)
    p.add_argument("--out", type=Path, default=Path("evaluations/results"))
    p.add_argument("--sets", default=",".join(name for name, _ in SETS))
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--judge", choices=("auto", *BACKENDS, "none"), default="auto")
    a = p.parse_args(argv)
    wanted = a.sets.split(",")
    timings = {}
    for name, task in SETS:
        manifest = a.data / f"{name}.jsonl"
        if name not in wanted or not manifest.is_file():
            continue
        t0 = time.perf_counter()
        args = R.parser().parse_args(["--manifest", str(manifest), "--task", task, "--systems", a.systems,
                                      "--model", a.model, "--out", str(a.out / name), "--batch-size", str(a.batch_size),
                                      "--judge", a.judge] + (["--limit", str(a.limit)] if a.limit else []))
        R.evaluate(args)
        timings[name] = round(time.perf_counter() - t0, 1)
    write_readme(a, wanted)
    (a.out / "timings.json").write_text(json.dumps(timings, indent=1))
    print((a.out / "README.md").read_text(encoding="utf-8"))


def write_readme(a, wanted: list[str]) -> None:
    command = (f"python -m evaluations.reproduce --model {a.model} --systems {a.systems} --out {a.out} "
               f"--judge {a.judge}" + (f" --limit {a.limit}" if a.limit else ""))
    lines = [f"# Results: {a.model} and its baselines on the shipped evaluation sets", "",
             "Made with `python -m evaluations.data.make_sets` (espeak-ng audio, deterministic) and:", "",
             "```", command, "```", "",
             "Systems: Text+LLM = the known transcript to the LLM; Whisper+LLM = Whisper base ASR, then the LLM; "
             "BLSP = speech embeddings through the trained adapter. Per-set predictions, CSVs and commands are in "
             "the folders beside this file.", ""]
    for name, _ in SETS:
        md = a.out / name / "results.md"
        if name in wanted and md.is_file():
            lines += [f"## {HEADINGS[name]}", "", *table_of(md), ""]
    (a.out / "README.md").write_text("\n".join(lines), encoding="utf-8")


if __name__ == "__main__":
    main()
