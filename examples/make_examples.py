"""Make the spoken examples with espeak-ng: 16 kHz mono 16-bit WAV, plus examples.jsonl.

    python examples/make_examples.py

Deterministic: the same espeak-ng and ffmpeg give byte-identical files (fixed voice, speed and
pitch; ffmpeg writes no metadata).
"""

from __future__ import annotations

import json
import subprocess
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
VOICE, SPEED, PITCH = "en-us", 120, 50  # espeak-ng -v, -s (words per minute), -p

# (file stem, what is said, instruction placed before the speech)
EXAMPLES = [
    ("capital_of_france", "What is the capital of France?", ""),
    ("spider_legs", "How many legs does a spider have?", ""),
    ("largest_planet", "What is the largest planet in our solar system?", ""),
    ("sky_blue", "Why is the sky blue?", ""),
    ("cat_name", "Can you suggest a name for a black cat?", ""),
    ("repeat_fox", "The quick brown fox jumps over the lazy dog.", "Please repeat the following words."),
    ("translate_morning", "Good morning, how are you today?",
     "Please translate the following English text into German text."),
    ("sentiment_movie", "I really loved this movie, it was wonderful.",
     "Is the sentiment of the following text positive, negative, or neutral? Answer with one word."),
]


def speak(text: str, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "raw.wav"
        subprocess.run(["espeak-ng", "-v", VOICE, "-s", str(SPEED), "-p", str(PITCH), "-w", str(raw), text],
                       check=True)
        subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-y", "-i", str(raw), "-ar", "16000", "-ac", "1",
                        "-c:a", "pcm_s16le", "-map_metadata", "-1", "-fflags", "+bitexact", "-flags:a", "+bitexact",
                        str(out)], check=True)


def main() -> None:
    lines = []
    for stem, text, instruction in EXAMPLES:
        speak(text, HERE / f"{stem}.wav")
        item = {"audio": f"{stem}.wav", "text": text}
        if instruction:
            item["instruction"] = instruction
        lines.append(json.dumps(item, ensure_ascii=False))
    (HERE / "examples.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    print(f"wrote {len(EXAMPLES)} examples to {HERE}")


if __name__ == "__main__":
    main()
