"""A speech corpus made with espeak-ng: (audio, transcript) pairs for ASR and adapter training.

    python -m blsp_demo.train.corpus --out data/tts --num 5000 [--source wordnet,austen]
        [--seed 0] [--dev-num 200 | --dev-frac 0.04] [--test-num 200] [--workers 1]
        [--shard i/n] [--format flac|wav] [--min-words 5] [--max-words 40]
    python -m blsp_demo.train.corpus questions --out data/questions [--voices 3] [--seed 0]

Layout of DIR: `{train,dev,test}.jsonl` manifests, audio in `audio/<split>/<id>.flac` (16 kHz mono
16-bit; FLAC is 62 MB per hour of audio, WAV 115 MB), `SOURCES.txt` with the text sources'
licences (keep it with copies of the corpus). A manifest's `audio` path is relative to the
manifest's own folder, so DIR can be moved. Each line: `id, audio, reference, transcript
(= reference), task ("asr"), split, source, voice ("en-gb+m3"), rate (words/min), pitch (0-99),
gain_db, noise ("white" | "pink" | null), snr_db (null without noise), duration_s`.

Splits are by text: the shuffled sentences go test first, then dev, then train, so no sentence is
in two splits, and a larger --num only adds train items. Test is also spoken by voice variants
that train and dev never use (`HELDOUT_VARIANTS`). Every random choice of an item comes from a
generator seeded by (seed, split, index), and its file name carries a hash of its text and
parameters: runs are deterministic (whatever --workers), resume by skipping files that exist and
read as 16 kHz mono, and can be sharded: `--shard i/n` makes every n-th item and writes
`<split>.shard-i-of-n.jsonl`; a last run without --shard finds all audio made and writes the
full manifests.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import random
import subprocess
import sys
from dataclasses import asdict, dataclass
from multiprocessing import Pool
from pathlib import Path
from typing import Callable

import numpy as np
import soundfile as sf
from scipy.fft import next_fast_len
from scipy.signal import resample_poly
from tqdm import tqdm

from blsp_demo.files import read_jsonl
from blsp_demo.train import text_sources

SAMPLE_RATE = 16000  # what the Whisper encoder takes
ESPEAK_RATE = 22050  # espeak-ng's own output rate
RESAMPLE_UP, RESAMPLE_DOWN = 320, 441  # 22050 * 320 / 441 = 16000
PEAK = 10 ** (-1 / 20)  # -1 dBFS: speech is peak-normalized here before the random gain

# espeak-ng's English voices (mbrola ones left out: not free, not installed). Weights favour the
# two standard accents without drowning the regional ones.
VOICES = {"en-us": 3, "en-gb": 2, "en-gb-x-rp": 2, "en-gb-scotland": 1, "en-gb-x-gbclan": 1,
          "en-gb-x-gbcwmd": 1, "en-us-nyc": 1, "en-029": 1}
# Variants change pitch range and formants. Train and dev use these; test uses only the held-out
# ones, so test voices are unseen (the micro-training note held out variants the same way).
TRAIN_VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "f1", "f2", "f3", "f5",
                  "linda", "paul", "quincy", "max", "Annie", "travis")
HELDOUT_VARIANTS = ("m7", "f4", "robert", "belinda")
RATE_WPM = (130, 190)
PITCH = (30, 70)
GAIN_DB = (-12.0, 0.0)
NOISE_PROB = 0.5
SNR_DB = (25.0, 45.0)
SILENCE_S = (0.05, 0.5)  # added before and after the speech, each drawn separately
SPLITS = ("test", "dev", "train")  # the order sentences are dealt in
QUESTIONS_FILE = Path(__file__).parent / "data" / "spoken_questions.jsonl"


@dataclass(frozen=True)
class SynthParams:
    voice: str
    variant: str
    rate: int
    pitch: int
    gain_db: float
    noise: str | None
    snr_db: float | None
    lead_s: float
    trail_s: float
    noise_seed: int

    @property
    def espeak_voice(self) -> str:
        return f"{self.voice}+{self.variant}"


@dataclass(frozen=True)
class Item:
    split: str
    index: int
    text: str
    params: SynthParams

    @property
    def id(self) -> str:
        digest = hashlib.sha1(json.dumps([self.text, asdict(self.params)]).encode()).hexdigest()
        return f"{self.split}-{self.index:06d}-{digest[:8]}"


def item_rng(seed: int, split: str, index: int) -> random.Random:
    """The generator of one item: independent of every other item, so runs can be sharded."""
    return random.Random(f"{seed}/{split}/{index}")  # str seeds hash with sha512: portable


def sample_params(rng: random.Random, variants: tuple[str, ...],
                  noise_prob: float = NOISE_PROB) -> SynthParams:
    noisy = rng.random() < noise_prob
    return SynthParams(
        voice=rng.choices(list(VOICES), weights=list(VOICES.values()))[0],
        variant=rng.choice(variants),
        rate=rng.randint(*RATE_WPM),
        pitch=rng.randint(*PITCH),
        gain_db=round(rng.uniform(*GAIN_DB), 1),
        noise=rng.choice(("white", "pink")) if noisy else None,
        snr_db=round(rng.uniform(*SNR_DB), 1) if noisy else None,
        lead_s=round(rng.uniform(*SILENCE_S), 3),
        trail_s=round(rng.uniform(*SILENCE_S), 3),
        noise_seed=rng.getrandbits(32))


def plan_items(sentences: list[str], seed: int, num: int, dev_num: int,
               test_num: int) -> list[Item]:
    """Deal the (already shuffled) sentences: test first, then dev, then the rest to train."""
    if num > len(sentences):
        raise ValueError(f"asked for {num} clips but the source has {len(sentences)} sentences")
    if dev_num + test_num > num:
        raise ValueError(f"dev ({dev_num}) + test ({test_num}) exceed --num ({num})")
    counts = {"test": test_num, "dev": dev_num, "train": num - dev_num - test_num}
    items, start = [], 0
    for split in SPLITS:
        variants = HELDOUT_VARIANTS if split == "test" else TRAIN_VARIANTS
        for index, text in enumerate(sentences[start:start + counts[split]]):
            items.append(Item(split, index, text, sample_params(item_rng(seed, split, index),
                                                                variants)))
        start += counts[split]
    return items


# ---------------------------------------------------------------------------------------------
# Audio

def espeak(text: str, voice: str, rate: int, pitch: int) -> np.ndarray:
    """espeak-ng's speech as float32 at ESPEAK_RATE (the text goes in by stdin: no arg parsing)."""
    command = ["espeak-ng", "-v", voice, "-s", str(rate), "-p", str(pitch), "--stdout"]
    try:
        wav = subprocess.run(command, input=text.encode(), capture_output=True, check=True).stdout
    except FileNotFoundError:
        raise RuntimeError("espeak-ng is not installed: apt-get install espeak-ng") from None
    # Streamed WAV: the header's sizes are placeholders, so read the samples after 'data'.
    data_at = wav.index(b"data") + 8
    rate_in = int.from_bytes(wav[24:28], "little")
    if rate_in != ESPEAK_RATE:
        raise RuntimeError(f"espeak-ng wrote {rate_in} Hz, expected {ESPEAK_RATE}")
    usable = (len(wav) - data_at) // 2 * 2
    return np.frombuffer(wav[data_at:data_at + usable], dtype="<i2").astype(np.float32) / 32768


def pink_noise(rng: np.random.Generator, n: int) -> np.ndarray:
    """1/f noise: white noise with its spectrum scaled by 1/sqrt(f)."""
    size = next_fast_len(n, real=True)  # an awkward (say, prime) length makes the FFT 20x slower
    spectrum = np.fft.rfft(rng.standard_normal(size))
    spectrum[1:] /= np.sqrt(np.arange(1, len(spectrum)))
    spectrum[0] = 0
    return np.fft.irfft(spectrum, size)[:n]


def augment(speech: np.ndarray, params: SynthParams) -> np.ndarray:
    """Peak-normalize, apply the gain, pad with silence, add noise at the drawn SNR."""
    speech = speech * (PEAK / max(float(np.abs(speech).max()), 1e-6))
    speech = speech * 10 ** (params.gain_db / 20)
    speech_rms = float(np.sqrt(np.mean(speech ** 2)))
    lead, trail = (np.zeros(int(s * SAMPLE_RATE), np.float32)
                   for s in (params.lead_s, params.trail_s))
    audio = np.concatenate([lead, speech, trail])
    if params.noise:
        rng = np.random.default_rng(params.noise_seed)
        noise = rng.standard_normal(len(audio)) if params.noise == "white" else pink_noise(
            rng, len(audio))
        noise *= speech_rms / (float(np.sqrt(np.mean(noise ** 2))) * 10 ** (params.snr_db / 20))
        audio = audio + noise
    return np.clip(audio, -1.0, 1.0).astype(np.float32)


def synthesize(text: str, params: SynthParams) -> np.ndarray:
    """16 kHz mono float32 speech for `text`, deterministic given the parameters."""
    speech = espeak(text, params.espeak_voice, params.rate, params.pitch)
    speech = resample_poly(speech, RESAMPLE_UP, RESAMPLE_DOWN).astype(np.float32)
    return augment(speech, params)


def is_valid_audio(path: Path) -> bool:
    """A finished file: readable, 16 kHz mono, not empty (writes are atomic, so no partial ones)."""
    try:
        info = sf.info(str(path))
    except (RuntimeError, OSError):  # soundfile's LibsndfileError is a RuntimeError
        return False
    return info.samplerate == SAMPLE_RATE and info.channels == 1 and info.frames > 0


def write_audio(path: Path, audio: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    sf.write(str(tmp), audio, SAMPLE_RATE, subtype="PCM_16", format=path.suffix[1:].upper())
    os.replace(tmp, path)


def audio_path(out: Path, item: Item, fmt: str) -> Path:
    return out / "audio" / item.split / f"{item.id}.{fmt}"


def _synthesize_to(job: tuple[Path, str, SynthParams]) -> str:
    path, text, params = job
    write_audio(path, synthesize(text, params))
    return path.name


def synthesize_all(jobs: list[tuple[Path, str, SynthParams]], workers: int = 1) -> int:
    """Write every job's audio that is not there yet; returns how many were synthesized."""
    todo = [job for job in jobs if not is_valid_audio(job[0])]
    progress = tqdm(total=len(todo), unit="clip", desc="espeak-ng", disable=not todo)
    if workers <= 1:
        for job in todo:
            _synthesize_to(job)
            progress.update()
    else:
        with Pool(workers) as pool:
            for _ in pool.imap_unordered(_synthesize_to, todo, chunksize=8):
                progress.update()
    progress.close()
    return len(todo)


# ---------------------------------------------------------------------------------------------
# Manifests

def manifest_record(item: Item, path: Path, out: Path, source: str) -> dict:
    p = item.params
    return {"id": item.id, "audio": path.relative_to(out).as_posix(), "reference": item.text,
            "transcript": item.text, "task": "asr", "split": item.split, "source": source,
            "voice": p.espeak_voice, "rate": p.rate, "pitch": p.pitch, "gain_db": p.gain_db,
            "noise": p.noise, "snr_db": p.snr_db,
            "duration_s": round(sf.info(str(path)).frames / SAMPLE_RATE, 3)}


def write_jsonl(path: Path, records: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
    os.replace(tmp, path)


def parse_shard(text: str) -> tuple[int, int]:
    index, count = (int(x) for x in text.split("/"))
    if not 0 <= index < count:
        raise argparse.ArgumentTypeError(f"shard must be i/n with 0 <= i < n, got {text}")
    return index, count


def write_attribution(out: Path, source: str) -> None:
    """`DIR/SOURCES.txt`: where the text came from and its licence, which asks to travel along."""
    parts = [f"Transcripts of this corpus come from: {source}. Audio synthesized by espeak-ng.\n"]
    for name in filter(None, source.split(",")):
        src = text_sources.SOURCES[name]
        licence = Path(src.licence_file)
        parts.append(f"== {name}: {src.description}\nLicence: {src.licence}\n"
                     + (licence.read_text(encoding="utf-8", errors="replace")
                        if licence.is_file() else f"(see {src.licence_file})\n"))
    (out / "SOURCES.txt").write_text("\n".join(parts), encoding="utf-8")


def synthesize_and_list(out: Path, items: list[Item], fmt: str, workers: int,
                        record: Callable[[Item, Path], dict], suffix: str = "") -> dict[str, int]:
    """Make the items' missing audio, then write one manifest per split; returns their sizes."""
    paths = [audio_path(out, item, fmt) for item in items]
    synthesize_all([(p, i.text, i.params) for p, i in zip(paths, items, strict=True)], workers)
    counts = {}
    for split in dict.fromkeys(i.split for i in items):  # splits in order of appearance
        write_jsonl(out / f"{split}{suffix}.jsonl", [
            record(i, p) for i, p in zip(items, paths, strict=True) if i.split == split])
        counts[split] = sum(i.split == split for i in items)
    return counts


def build_corpus(out: Path, sentences: list[str], *, seed: int, num: int, dev_num: int,
                 test_num: int, source: str = "", shard: tuple[int, int] = (0, 1),
                 workers: int = 1, fmt: str = "flac") -> dict[str, int]:
    """Synthesize this shard's items and write its manifests; returns clips per split."""
    out.mkdir(parents=True, exist_ok=True)
    write_attribution(out, source)
    items = plan_items(sentences, seed, num, dev_num, test_num)
    items = [item for position, item in enumerate(items) if position % shard[1] == shard[0]]
    suffix = "" if shard[1] == 1 else f".shard-{shard[0]}-of-{shard[1]}"
    counts = synthesize_and_list(out, items, fmt, workers, suffix=suffix,
                                 record=lambda i, p: manifest_record(i, p, out, source))
    for split in SPLITS:  # an empty split still gets its (empty) manifest
        if split not in counts:
            write_jsonl(out / f"{split}{suffix}.jsonl", [])
    return {split: counts.get(split, 0) for split in SPLITS}


# ---------------------------------------------------------------------------------------------
# Spoken questions (a small QA evaluation set)

def load_questions(path: Path = QUESTIONS_FILE) -> list[dict]:
    return read_jsonl(path)


def build_questions(out: Path, questions: list[dict], *, voices: int = 3, seed: int = 0,
                    fmt: str = "flac", workers: int = 1) -> dict[str, int]:
    """Each question spoken by `voices` voices, clean (no noise); `DIR/{dev,test}.jsonl`.

    Dev questions use train variants, test questions the held-out ones, as in the corpus.
    """
    out.mkdir(parents=True, exist_ok=True)
    items = [Item(q["split"], qi * voices + j, q["question"], sample_params(
                 item_rng(seed, f"question-{q['split']}", qi * voices + j),
                 HELDOUT_VARIANTS if q["split"] == "test" else TRAIN_VARIANTS, noise_prob=0.0))
             for qi, q in enumerate(questions) for j in range(voices)]
    answers = {q["question"]: q["answers"] for q in questions}

    def record(item: Item, path: Path) -> dict:
        accepted = answers[item.text]
        return manifest_record(item, path, out, "spoken_questions") | {
            "reference": accepted[0], "answers": accepted, "task": "qa"}

    return synthesize_and_list(out, items, fmt, workers, record)


# ---------------------------------------------------------------------------------------------
# CLI

def corpus_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blsp_demo.train.corpus",
                                description="Synthesize a TTS corpus with espeak-ng "
                                            "(subcommand 'questions': the spoken QA set).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--source", default=text_sources.DEFAULT_SOURCE,
                   help=f"comma-separated text sources: {', '.join(text_sources.SOURCES)}")
    p.add_argument("--num", type=int, default=2000, help="clips in all splits together")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dev-num", type=int, default=100)
    p.add_argument("--dev-frac", type=float, help="dev size as a fraction of --num (overrides)")
    p.add_argument("--test-num", type=int, default=100)
    p.add_argument("--min-words", type=int, default=text_sources.MIN_WORDS)
    p.add_argument("--max-words", type=int, default=text_sources.MAX_WORDS)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--shard", type=parse_shard, default=(0, 1), help="i/n: every n-th item")
    p.add_argument("--format", choices=("flac", "wav"), default="flac")
    return p


def questions_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m blsp_demo.train.corpus questions",
                                description="Synthesize the spoken questions (dev/test).")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    p.add_argument("--voices", type=int, default=3, help="voices per question")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--format", choices=("flac", "wav"), default="flac")
    return p


def main(argv: list[str] | None = None) -> None:
    try:
        run(sys.argv[1:] if argv is None else argv)
    except (KeyError, ValueError, RuntimeError) as e:  # SourceUnavailable is a RuntimeError
        raise SystemExit(f"error: {e.args[0] if e.args else e}") from None


def run(argv: list[str]) -> None:
    if argv[:1] == ["questions"]:
        a = questions_parser().parse_args(argv[1:])
        counts = build_questions(a.out, load_questions(a.questions), voices=a.voices,
                                 seed=a.seed, fmt=a.format, workers=a.workers)
    else:
        a = corpus_parser().parse_args(argv)
        sentences = text_sources.load_sentences(a.source, seed=a.seed, min_words=a.min_words,
                                                max_words=a.max_words)
        dev_num = round(a.num * a.dev_frac) if a.dev_frac is not None else a.dev_num
        counts = build_corpus(a.out, sentences, seed=a.seed, num=a.num, dev_num=dev_num,
                              test_num=a.test_num, source=a.source, shard=a.shard,
                              workers=a.workers, fmt=a.format)
    print(json.dumps({"out": str(a.out), **counts}))


if __name__ == "__main__":
    main()
