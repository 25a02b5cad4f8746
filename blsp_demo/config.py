"""Options and settings as dataclasses: generation options, responses, app settings from env."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

DEFAULT_MODEL = "micro-cascade"  # becomes micro-blsp once it answers as many dev questions (README)


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_beams: int = 1  # > 1: beam search (no streaming, the answer comes at once)
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 1

    def replace(self, **changes) -> "GenerationOptions":
        return replace(self, **changes)

    def validate(self) -> "GenerationOptions":
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Response:
    text: str
    ttft_s: float  # request start -> first token
    total_s: float
    new_tokens: int
    options: GenerationOptions
    prefill_tokens: int = 0  # positions this turn actually ran through the LLM before decoding
    cached_tokens: int = 0  # positions not prefilled: the conversation's KV cache, or the shared system-prompt prefix
    transcript: str | None = None  # what the cascade engine heard
    notices: tuple[str, ...] = ()  # e.g. oldest turns dropped to fit the context
    finish_reason: str = "stop"  # stop | length

    @property
    def tokens_per_s(self) -> float:
        decode = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


@dataclass(frozen=True)
class AppSettings:
    model: str = DEFAULT_MODEL
    data_dir: Path = Path("data")
    host: str = "127.0.0.1"
    port: int = 7860
    hf_dataset_repo: str | None = None
    judge_model: str | None = None
    openai_base_url: str | None = None
    extra_models: tuple[str, ...] = field(default_factory=tuple)  # more specs for the model menu and Compare
    max_new_tokens: int = GenerationOptions.max_new_tokens  # a session's default until it moves the slider
    turns_per_minute: int = 20  # per session (Chat and Compare together): one client cannot starve the queue
    max_file_size: str = "50mb"  # uploads above this are refused before they reach the app

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        base = cls(
            model=_env("BLSP_MODEL", DEFAULT_MODEL),
            data_dir=Path(_env("BLSP_DATA_DIR", "data")),
            host=_env("BLSP_HOST", "127.0.0.1"),
            port=int(_env("BLSP_PORT", _env("GRADIO_SERVER_PORT", "7860"))),
            hf_dataset_repo=_env("HF_DATASET_REPO"),
            judge_model=_env("JUDGE_MODEL"),
            openai_base_url=_env("OPENAI_BASE_URL"),
            extra_models=tuple(s.strip() for s in _env("BLSP_COMPARE_MODELS", "").split(",") if s.strip()),
            max_new_tokens=int(_env("BLSP_MAX_NEW_TOKENS", str(GenerationOptions.max_new_tokens))),
            turns_per_minute=int(_env("BLSP_TURNS_PER_MINUTE", "20")),
            max_file_size=_env("BLSP_MAX_FILE_SIZE", "50mb"),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
