"""The app's settings, from the environment (and the command line's overrides)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

from blsp_demo.engine.registry import DEFAULT_MODEL
from blsp_demo.options import GenerationOptions


def _env(name: str, default: str | None = None) -> str | None:
    value = os.environ.get(name)
    return value if value not in (None, "") else default


PERSISTENT_STORAGE = Path("/data")  # where a Space's persistent storage is mounted, when it has one


def default_data_dir(environ=os.environ, persistent: Path = PERSISTENT_STORAGE) -> Path:
    """BLSP_DATA_DIR; else on a Space (SPACE_ID set) with writable persistent storage, a folder in
    it (it survives restarts); else ./data (on a Space without persistent storage it lives only as
    long as the container: the dataset push keeps it, see hub_push)."""
    if environ.get("BLSP_DATA_DIR"):
        return Path(environ["BLSP_DATA_DIR"])
    if environ.get("SPACE_ID") and persistent.is_dir() and os.access(persistent, os.W_OK | os.X_OK):
        return persistent / "blsp-demo"
    return Path("data")


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
    push_every_minutes: float = 5.0  # how often the data dir is pushed to HF_DATASET_REPO

    @classmethod
    def from_env(cls, **overrides) -> "AppSettings":
        base = cls(
            model=_env("BLSP_MODEL", DEFAULT_MODEL),
            data_dir=default_data_dir(),
            host=_env("BLSP_HOST", "127.0.0.1"),
            port=int(_env("BLSP_PORT", _env("GRADIO_SERVER_PORT", "7860"))),
            hf_dataset_repo=_env("HF_DATASET_REPO"),
            judge_model=_env("JUDGE_MODEL"),
            openai_base_url=_env("OPENAI_BASE_URL"),
            extra_models=tuple(s.strip() for s in _env("BLSP_COMPARE_MODELS", "").split(",") if s.strip()),
            max_new_tokens=int(_env("BLSP_MAX_NEW_TOKENS", str(GenerationOptions.max_new_tokens))),
            turns_per_minute=int(_env("BLSP_TURNS_PER_MINUTE", "20")),
            max_file_size=_env("BLSP_MAX_FILE_SIZE", "50mb"),
            push_every_minutes=float(_env("BLSP_PUSH_EVERY_MINUTES", "5")),
        )
        return replace(base, **{k: v for k, v in overrides.items() if v is not None})
