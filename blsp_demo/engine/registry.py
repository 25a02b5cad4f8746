"""The registered model names: data, not code. Each says its system, its folder (a micro-layout
BLSP folder, or None for a bundled LLM alone), and what it is made of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parents[1]
MICRO_BLSP = PACKAGE_DIR / "weights" / "micro-blsp"
MICRO_BLSP_V2 = PACKAGE_DIR / "weights" / "micro-blsp-v2"  # whisper-decoder speech side (issue 15)
MICRO_BLSP_V2_SOFT = PACKAGE_DIR / "weights" / "micro-blsp-v2-soft"  # its soft-token variant
MICRO_BLSP_V3 = PACKAGE_DIR / "weights" / "micro-blsp-v3"  # the soft reader, full window, LLM positions (untrained)
DEFAULT_MODEL = "qwen-cascade"  # chosen by measurement on the spoken dev questions (README)

SYSTEMS = ("blsp", "cascade", "text", "ctc")


@dataclass(frozen=True)
class RegisteredModel:
    system: str
    folder: Path | None  # a BLSP folder (micro layout) or None for the bundled LLM alone
    description: str
    llm: str = "smollm2-135m-instruct"  # a key of weights.llms.BUNDLED_LLMS (for folder None)


REGISTRY: dict[str, RegisteredModel] = {
    "micro-blsp": RegisteredModel("blsp", MICRO_BLSP,
                                  "Whisper base encoder + trained adapter + SmolLM2-135M-Instruct (BLSP)"),
    "micro-blsp-v2": RegisteredModel("blsp", MICRO_BLSP_V2,
                                     "Whisper base encoder + decoder states + trained adapter + SmolLM2-135M-Instruct "
                                     "(BLSP, DiVA-style)"),
    "micro-blsp-v2-soft": RegisteredModel("blsp", MICRO_BLSP_V2_SOFT,
                                          "Whisper base decoder states as soft SmolLM2 token embeddings "
                                          "(Whisper's own distribution) -> SmolLM2-135M-Instruct"),
    "micro-blsp-v3": RegisteredModel("blsp", MICRO_BLSP_V3,
                                     "Whisper base reads the whole 30 s window; its reading, re-tokenized by SmolLM2, "
                                     "as soft embeddings (no trained parameters) -> SmolLM2-135M-Instruct"),
    "micro-cascade": RegisteredModel("cascade", None, "Whisper base ASR -> SmolLM2-135M-Instruct (Whisper+LLM)"),
    "micro-text": RegisteredModel("text", None, "known transcript -> SmolLM2-135M-Instruct (Text+LLM)"),
    "micro-ctc": RegisteredModel("ctc", MICRO_BLSP,
                                 "micro-blsp's CTC head transcribes -> SmolLM2-135M-Instruct (CTC+LLM)"),
    "qwen-cascade": RegisteredModel("cascade", None,
                                    "Whisper base ASR -> Qwen2.5-Coder-0.5B-Instruct (Whisper+LLM)",
                                    llm="qwen2.5-coder-0.5b-instruct"),
    "qwen-text": RegisteredModel("text", None, "known transcript -> Qwen2.5-Coder-0.5B-Instruct (Text+LLM)",
                                 llm="qwen2.5-coder-0.5b-instruct"),
}
