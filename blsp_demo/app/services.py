"""What every tab's handlers share: the engine pool, the store, the examples. Built once in app.py
and passed to the tabs (no module-level state)."""

from __future__ import annotations

import json
import logging
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from blsp_demo.app.settings import AppSettings
from blsp_demo.app.store import Store
from blsp_demo.speech_presence import SpeechDetector
from blsp_demo.app.limits import RateLimits, Retired, SessionGate
from blsp_demo.app.uploads import UploadCache
from blsp_demo.files import content_sha256

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


class EnginePool:
    """Engines by model spec, loaded on first use and shared by all sessions.

    Each conversation's KV cache lives inside the engine under the conversation's id, so sharing
    an engine between sessions shares weights, never conversations.
    """

    def __init__(self, loader: Callable | None = None):
        if loader is None:  # KV caches bounded by bytes as well as count (BLSP_MAX_CACHE_MB)
            from functools import partial

            from blsp_demo.app.limits import engine_limits_from_env
            from blsp_demo.engine.loading import load_engine

            loader = partial(load_engine, limits=engine_limits_from_env())
        self._loader = loader
        self._engines: dict[str, object] = {}
        self._load_locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()  # guards the two dicts; never held while loading

    def get(self, spec: str):
        """The engine for `spec`, loading it if needed (other sessions wait for the same load)."""
        with self._lock:
            if spec in self._engines:
                return self._engines[spec]
            load_lock = self._load_locks.setdefault(spec, threading.Lock())
        with load_lock:
            with self._lock:
                if spec in self._engines:
                    return self._engines[spec]
            engine = self._loader(spec)
            with self._lock:
                self._engines[spec] = engine
            return engine

    def is_loaded(self, spec: str) -> bool:
        with self._lock:
            return spec in self._engines

    def preload(self, spec: str) -> threading.Thread:
        """Load `spec` in the background: the page is up at once, the first question waits for it."""
        def run():
            try:
                self.get(spec)
                log.info("model %s loaded", spec)
            except Exception as err:  # noqa: BLE001 - shown to whoever asks this model next
                log.warning("could not preload %s: %s", spec, err)

        thread = threading.Thread(target=run, name=f"preload-{spec}", daemon=True)
        thread.start()
        return thread

    def forget(self, conversation_id: str) -> None:
        """Drop a conversation's KV cache from every loaded engine."""
        with self._lock:
            engines = list(self._engines.values())
        for engine in engines:
            engine.forget(conversation_id)


@dataclass(frozen=True)
class Example:
    audio: Path
    text: str  # what is said in the audio (its known transcript)
    instruction: str = ""  # placed before the speech

    @property
    def label(self) -> str:
        return f"{self.instruction} \u201c{self.text}\u201d" if self.instruction else self.text


def load_examples(folder: Path = EXAMPLES_DIR) -> list[Example]:
    """The spoken examples listed in `folder/examples.jsonl` whose audio exists."""
    index = folder / "examples.jsonl"
    if not index.is_file():
        return []
    out = []
    for line in index.read_text(encoding="utf-8").splitlines():
        if line.strip():
            item = json.loads(line)
            ex = Example(folder / item["audio"], item["text"], item.get("instruction", ""))
            if ex.audio.is_file():
                out.append(ex)
    return out


@dataclass
class Services:
    settings: AppSettings
    pool: EnginePool
    store: Store
    examples: list[Example] = field(default_factory=list)
    model_choices: list[str] = field(default_factory=list)
    scheduler: object | None = None  # hub_push.DataDirScheduler when pushing to the Hub
    gate: SessionGate = field(default_factory=SessionGate)  # per-session turn limits (Chat and Compare)
    speech: SpeechDetector | None = field(default_factory=SpeechDetector)  # None: no speech-presence check
    retired: Retired = field(default_factory=Retired)  # reset/deleted under a running answer: it stops
    uploads: UploadCache = field(default_factory=UploadCache)  # Gradio's copies of uploads (deletion)

    @classmethod
    def create(cls, settings: AppSettings, pool: EnginePool | None = None, hf_api=None) -> "Services":
        from blsp_demo.app.hub_push import make_scheduler
        from blsp_demo.engine.registry import REGISTRY

        data_dir = Path(settings.data_dir).expanduser().resolve()
        try:
            scheduler = make_scheduler(settings.hf_dataset_repo, data_dir, hf_api=hf_api,
                                       every=settings.push_every_minutes)
        except Exception as err:  # noqa: BLE001 - a demo that logs locally beats no demo
            log.error("not pushing to the Hub dataset %s (logs stay in %s): %s",
                      settings.hf_dataset_repo, data_dir, err)
            scheduler = None
        store = Store(data_dir, lock=scheduler.lock if scheduler is not None else None)
        choices = list(dict.fromkeys([settings.model, *REGISTRY, *settings.extra_models]))
        gate = SessionGate(RateLimits.from_env(turns_per_minute=settings.turns_per_minute))
        examples = load_examples()
        uploads = UploadCache(protected=frozenset(content_sha256(ex.audio) for ex in examples))
        return cls(settings, pool or EnginePool(), store, examples, choices, scheduler, gate, uploads=uploads)

    def allowed_paths(self) -> list[str]:
        """Folders whose files the UI may serve: stored audio and the examples."""
        return [str(self.store.audio_dir), str(EXAMPLES_DIR)]


# ZeroGPU's `duration` (seconds a request may hold the GPU; shorter requests are queued first, the
# default is 60). Estimates, not measured here (these machines have no GPU): a slot's start-up,
# prefill and the speech encoder as a base, then the worst case of the requested answer length.
GPU_BASE_SECONDS = 10.0
GPU_SECONDS_PER_NEW_TOKEN = 0.08  # a 7B model in bf16 decodes faster than 12.5 tokens/s on a ZeroGPU slice
GPU_SECONDS_PER_AUDIO_SECOND = 0.2  # Whisper encoder / ASR over the clip
GPU_MAX_SECONDS = 120.0


def gpu_duration(max_new_tokens: int, audio_seconds: float = 0.0) -> int:
    """Seconds to ask ZeroGPU for: grows with the answer length and the clip, capped."""
    seconds = (GPU_BASE_SECONDS + GPU_SECONDS_PER_NEW_TOKEN * max(0, int(max_new_tokens))
               + GPU_SECONDS_PER_AUDIO_SECOND * max(0.0, float(audio_seconds)))
    return int(min(GPU_MAX_SECONDS, seconds + 0.999))


def _max_new_tokens(settings) -> int:
    options = getattr(settings, "options", None)
    return getattr(options, "max_new_tokens", None) or 128


def _audio_seconds(path) -> float:
    """The clip's length from its container (0 when unknown: a browser's WebM; then the cap of
    `gpu_duration` and the token term still bound the request)."""
    from blsp_demo.audio import AudioError, probe

    try:
        return float(probe(path).duration_s or 0.0) if path else 0.0
    except (AudioError, OSError, ValueError):
        return 0.0


def text_turn_seconds(text, state, settings, request=None) -> int:
    """`duration` of a typed turn (called with the handler's own arguments)."""
    return gpu_duration(_max_new_tokens(settings))


def audio_turn_seconds(audio, instruction, state, settings, request=None) -> int:
    """`duration` of a spoken turn: the answer length and the clip's length."""
    return gpu_duration(_max_new_tokens(settings), _audio_seconds(audio))


def gpu(fn, duration=None):
    """`@spaces.GPU` (with `duration`: seconds, or a function of fn's arguments) on a Hugging Face
    ZeroGPU Space (the `spaces` package is importable there); `fn` unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn, duration=duration) if duration is not None else spaces.GPU(fn)
