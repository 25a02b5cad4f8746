"""Build the evaluation sets the project ships: TTS manifests for every task, plus real speech.

    python -m evaluations.data.make_sets [--out evaluations/data] [--seed 0] [--workers 1]
        [--pocketsphinx-sdist PATH]

Writes `asr.jsonl`, `st.jsonl`, `slu.jsonl`, `qa.jsonl` (and `real.jsonl` with real recordings)
in --out, with audio made here by espeak-ng under `audio/<task>/` (16 kHz FLAC, not committed:
the texts and the manifests are, and the audio is deterministic, so this rebuilds it). Rows follow
the manifest format of DESIGN.md (`audio` relative to the manifest, `reference`, `transcript`,
`task`, `target_lang`) plus `id`, `dataset`, `labels` (SLU), `answers` (QA) and the voice.

The texts (`text/`), written for this project:
- `st_en_de.tsv`: 100 everyday English sentences with German translations. The translations were
  written by the project's engineer (an AI model) and checked once by reading, not by a
  professional translator: a single reference, good enough to rank systems, not to compare BLEU
  with published numbers. The same English sentences, spoken by other voices, are the ASR set.
- `intents.tsv`: 7 SNIPS intents x 15 utterances, written in the style of SNIPS (not SNIPS data).
- `sentiment.tsv`: 35 positive / 35 negative / 35 neutral sentences (SLUE-style labels).
- `qa_extra.jsonl` + `blsp_demo/train/data/spoken_questions.jsonl`: 105 factual questions with
  accepted short answers.

Voices: espeak-ng's English voices with the held-out variants the training corpus never uses
(`corpus.HELDOUT_VARIANTS`), random rate and pitch, no added noise; every item's parameters come
from a generator seeded by (seed, task, index).

Real speech (--pocketsphinx-sdist, the `pocketsphinx==5.1.1` source archive, BSD licence, sha256
675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355; get it with
`pip download --no-deps --no-binary :all: pocketsphinx==5.1.1`): `test/data/cards` (5 card names),
`goforward.raw` ("go forward ten meters") and `test/data/librivox` (5 public-domain LibriVox
utterances of Sense and Sensibility), as an ASR manifest `real.jsonl`.
"""

from __future__ import annotations

import argparse
import json
import re
import tarfile
from pathlib import Path

import numpy as np
import soundfile as sf

from blsp_demo.train import corpus

HERE = Path(__file__).resolve().parent
TEXT = HERE / "text"
TASK_SEEDS = {"asr": "eval-asr", "st": "eval-st", "intent": "eval-intent", "sentiment": "eval-sentiment",
              "qa": "eval-qa"}
POCKETSPHINX_SHA256 = "675778b309a22dfc9b7d37f7621976bba491d2a5f8c59696bd77fd6d07271355"
DATASETS = {"cards": "real-commands", "librivox": "real-librivox"}  # short commands; read book sentences


# ---- texts --------------------------------------------------------------------------------------
def read_tsv(path: Path) -> list[tuple[str, str]]:
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.startswith("#"):
            a, b = line.split("\t")
            rows.append((a.strip(), b.strip()))
    return rows


def qa_questions() -> list[dict]:
    shipped = [dict(q, source="spoken_questions") for q in corpus.load_questions()]
    extra = [dict(json.loads(x), source="qa_extra") for x in (TEXT / "qa_extra.jsonl").read_text().splitlines() if x.strip()]
    return shipped + extra


def task_rows() -> dict[str, list[dict]]:
    """Per task, the text of each item and its manifest fields (before audio)."""
    pairs = read_tsv(TEXT / "st_en_de.tsv")
    intents = read_tsv(TEXT / "intents.tsv")
    labels = sorted({label for label, _ in intents})
    return {
        "asr": [{"text": en, "reference": en, "dataset": "tts-en"} for en, _ in pairs],
        "st": [{"text": en, "reference": de, "target_lang": "de", "dataset": "tts-en-de"} for en, de in pairs],
        "intent": [{"text": u, "reference": label, "labels": labels, "dataset": "snips-style-tts"} for label, u in intents],
        "sentiment": [{"text": t, "reference": label, "dataset": "sentiment-tts"}
                      for label, t in read_tsv(TEXT / "sentiment.tsv")],
        "qa": [{"text": q["question"], "reference": q["answers"][0], "answers": q["answers"], "dataset": "questions-tts",
                "source": q["source"]} for q in qa_questions()],
    }


# ---- TTS sets -------------------------------------------------------------------------------------
def plan(task: str, rows: list[dict], seed: int) -> list[corpus.Item]:
    return [corpus.Item(task, i, r["text"], corpus.sample_params(corpus.item_rng(seed, TASK_SEEDS[task], i),
                                                                    corpus.HELDOUT_VARIANTS, noise_prob=0.0))
            for i, r in enumerate(rows)]


def manifest_row(task: str, item: corpus.Item, row: dict, path: Path, out: Path) -> dict:
    fields = {k: v for k, v in row.items() if k != "text"}
    return {"id": item.id, "audio": path.relative_to(out).as_posix(), "transcript": item.text, "task": task,
            **fields, "voice": item.params.espeak_voice, "rate": item.params.rate, "pitch": item.params.pitch,
            "duration_s": round(sf.info(str(path)).frames / corpus.SAMPLE_RATE, 3)}


MANIFESTS = {"asr": ("asr",), "st": ("st",), "slu": ("intent", "sentiment"), "qa": ("qa",)}


def build_tts_sets(out: Path, seed: int = 0, workers: int = 1, only: tuple[str, ...] | None = None,
                   limit: int | None = None) -> dict[str, int]:
    """Synthesize what is missing and write one manifest per --task of evaluations.run."""
    rows = task_rows()
    counts = {}
    for name, tasks in MANIFESTS.items():
        if only and name not in only:
            continue
        records = []
        for task in tasks:
            items = plan(task, rows[task], seed)[:limit]
            paths = [corpus.audio_path(out, item, "flac") for item in items]
            corpus.synthesize_all([(p, i.text, i.params) for p, i in zip(paths, items)], workers)
            records += [manifest_row(task, i, r, p, out) for i, r, p in zip(items, rows[task], paths)]
        corpus.write_jsonl(out / f"{name}.jsonl", records)
        counts[name] = len(records)
    return counts


# ---- real speech from the pocketsphinx source archive ----------------------------------------------------
_TRANSCRIPTION = re.compile(r"^\s*(?:<s>)?\s*(.*?)\s*(?:</s>)?\s*\(([^)]+)\)\s*$")


def parse_transcription(text: str) -> dict[str, str]:
    """Sphinx `transcription` files: '<s> words </s> (utterance id)' per line."""
    out = {}
    for line in text.splitlines():
        m = _TRANSCRIPTION.match(line)
        if m:
            out[m.group(2)] = " ".join(m.group(1).split())
    return out


def _members(sdist: Path) -> dict[str, bytes]:
    """test/data files of the archive (or of an unpacked tree), by path under test/data/."""
    wanted = re.compile(r"test/data/(cards/[^/]+|librivox/[^/]+|goforward\.raw)$")
    files = {}
    if sdist.is_dir():
        for p in sdist.rglob("*"):
            m = wanted.search(p.as_posix())
            if m and p.is_file():
                files[m.group(1)] = p.read_bytes()
        return files
    with tarfile.open(sdist) as tar:
        for member in tar.getmembers():
            m = wanted.search(member.name)
            if m and member.isfile():
                files[m.group(1)] = tar.extractfile(member).read()
    return files


def build_real_set(sdist: Path, out: Path) -> int:
    files = _members(sdist)
    if not files:
        raise ValueError(f"{sdist}: no test/data/cards or librivox files (is it the pocketsphinx 5.1.1 source archive?)")
    folder = out / "audio" / "real"
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for corpus_name in ("cards", "librivox"):
        refs = parse_transcription(files.get(f"{corpus_name}/{'cards.transcription' if corpus_name == 'cards' else 'transcription'}", b"").decode())
        for utt, text in sorted(refs.items()):
            data = files.get(f"{corpus_name}/{utt}.wav")
            if data is None:
                continue
            path = folder / f"{corpus_name}-{utt}.wav"
            path.write_bytes(data)
            rows.append(_real_row(f"{corpus_name}-{utt}", path, text, DATASETS[corpus_name], out))
    if "goforward.raw" in files:  # 16 kHz 16-bit little-endian mono, headerless
        samples = np.frombuffer(files["goforward.raw"], dtype="<i2").astype(np.float32) / 32768
        path = folder / "goforward.wav"
        sf.write(path, samples, corpus.SAMPLE_RATE, subtype="PCM_16")
        rows.append(_real_row("goforward", path, "go forward ten meters", DATASETS["cards"], out))
    corpus.write_jsonl(out / "real.jsonl", rows)
    return len(rows)


def _real_row(id_: str, path: Path, text: str, dataset: str, out: Path) -> dict:
    info = sf.info(str(path))
    return {"id": id_, "audio": path.relative_to(out).as_posix(), "reference": text, "transcript": text, "task": "asr",
            "dataset": dataset, "source": "pocketsphinx-5.1.1 test/data (BSD)", "duration_s": round(info.duration, 3)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m evaluations.data.make_sets", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--only", default=None, help="comma-separated: asr,st,slu,qa")
    p.add_argument("--limit", type=int, default=None, help="items per task (smoke runs)")
    p.add_argument("--pocketsphinx-sdist", type=Path, default=None,
                   help="pocketsphinx-5.1.1.tar.gz (or its unpacked folder): real recordings -> real.jsonl")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    counts = build_tts_sets(a.out, a.seed, a.workers, tuple(a.only.split(",")) if a.only else None, a.limit)
    if a.pocketsphinx_sdist:
        counts["real"] = build_real_set(a.pocketsphinx_sdist, a.out)
    print(json.dumps({"out": str(a.out), **counts}))


if __name__ == "__main__":
    main()
