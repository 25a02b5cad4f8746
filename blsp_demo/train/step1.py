"""BLSP step 1: the frozen LLM answers each transcript; those answers become step 2's targets.

Kinds of pairs (speech clip -> target text):
- `continue`: the LLM continues the transcript under the paper's continuation instruction;
- `respond`: the LLM's own reply to the transcript as a plain user turn (what a chat user does);
- `repeat`: the transcript itself under the repetition instruction (no generation needed).

`python -m blsp_demo.train.step1 --manifest train.jsonl --out targets.jsonl [--kinds continue:0.3,...]`
is batched, seeded, sharded (`--shard i/n`) and resumable (finished ids are skipped).
"""

from __future__ import annotations

import argparse
import json
import random
import re
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from blsp_demo.options import GenerationOptions
from blsp_demo.conversation import Conversation
from blsp_demo.prompts import INSTRUCTIONS
from blsp_demo.train.features import read_manifest

KIND_INSTRUCTION = {"continue": INSTRUCTIONS["continue"], "respond": "", "repeat": INSTRUCTIONS["repeat"]}


@dataclass(frozen=True)
class StepOneConfig:
    kinds: dict[str, float]  # kind -> share of the rows
    max_new_tokens: int = 48
    batch_size: int = 16
    seed: int = 0


def parse_kinds(text: str) -> dict[str, float]:
    kinds = {}
    for part in text.split(","):
        name, _, share = part.partition(":")
        if name not in KIND_INSTRUCTION:
            raise ValueError(f"unknown kind {name!r}; choose from {sorted(KIND_INSTRUCTION)}")
        kinds[name] = float(share or 1)
    total = sum(kinds.values())
    return {k: v / total for k, v in kinds.items()}


def assign_kinds(ids: list[str], kinds: dict[str, float], seed: int) -> dict[str, str]:
    """A fixed kind per clip id: the same id always gets the same kind for a given seed."""
    names, weights = list(kinds), list(kinds.values())
    return {i: random.Random(f"{seed}:{i}").choices(names, weights)[0] for i in ids}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def filter_reason(transcript: str, target: str, new_tokens: int, max_new_tokens: int, kind: str) -> str | None:
    """Why a generated target is unusable (None: keep it)."""
    if not target.strip():
        return "empty"
    if new_tokens >= max_new_tokens and kind != "respond":  # a reply cut short still teaches its start
        return "over-long"
    if kind == "continue":
        src, out = _words(transcript), _words(target)
        if out[: len(src)] == src and len(out) - len(src) < 3 or out == src:
            return "echo-only"
    return None


def generate_targets(rows: list[dict], engine, cfg: StepOneConfig, out: Path) -> dict[str, int]:
    """Append one JSON line per row to `out` (skipping ids already there); returns counts."""
    done = {json.loads(l)["id"] for l in out.read_text().splitlines() if l.strip()} if out.exists() else set()
    kinds = assign_kinds([r["id"] for r in rows], cfg.kinds, cfg.seed)
    todo = [r for r in rows if r["id"] not in done]
    counts: dict[str, int] = {}
    options = GenerationOptions(max_new_tokens=cfg.max_new_tokens)
    with out.open("a") as f, tqdm(total=len(todo), desc="step 1 targets", unit="clip") as bar:
        for start in range(0, len(todo), cfg.batch_size):
            batch = todo[start: start + cfg.batch_size]
            gen = [r for r in batch if kinds[r["id"]] != "repeat"]
            convs = [Conversation().add_text(_prompt(kinds[r["id"]], r["transcript"])) for r in gen]
            answers = dict(zip((r["id"] for r in gen), engine.respond_batch(convs, options, batch_size=len(convs)))) if gen else {}
            for r in batch:
                kind = kinds[r["id"]]
                resp = answers.get(r["id"])
                target = r["transcript"] if kind == "repeat" else resp.text
                reason = None if kind == "repeat" else filter_reason(r["transcript"], target, resp.new_tokens,
                                                                    cfg.max_new_tokens, kind)
                counts[reason or f"kept:{kind}"] = counts.get(reason or f"kept:{kind}", 0) + 1
                f.write(json.dumps({"id": r["id"], "kind": kind, "instruction": KIND_INSTRUCTION[kind],
                                    "transcript": r["transcript"], "target": target, "filtered": reason,
                                    "truncated": bool(resp and resp.new_tokens >= cfg.max_new_tokens)}) + "\n")
            f.flush()
            bar.update(len(batch))
    return counts


def _prompt(kind: str, transcript: str) -> str:
    instruction = KIND_INSTRUCTION[kind]
    return f"{instruction}\n{transcript}" if instruction else transcript


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="BLSP step 1: LLM targets for each transcript")
    p.add_argument("--manifest", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--kinds", default="continue:0.35,respond:0.25,repeat:0.4")
    p.add_argument("--max-new-tokens", type=int, default=48)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--shard", default="0/1", help="i/n: this process handles every n-th row")
    p.add_argument("--limit", type=int, default=None, help="only the first N rows")
    p.add_argument("--model", default="micro-text", help="whose LLM answers: any model spec (its text system)")
    args = p.parse_args(argv)
    from blsp_demo.weights.devices import set_threads
    from blsp_demo.engine.loading import load_engine

    set_threads()
    i, n = (int(x) for x in args.shard.split("/"))
    rows = read_manifest(Path(args.manifest))[: args.limit][i::n]
    engine = load_engine(args.model, "text", dtype="bfloat16" if args.batch_size > 1 else None)
    cfg = StepOneConfig(parse_kinds(args.kinds), args.max_new_tokens, args.batch_size, args.seed)
    counts = generate_targets(rows, engine, cfg, Path(args.out))
    print(json.dumps({"rows": len(rows), "counts": counts}))


if __name__ == "__main__":
    main()
