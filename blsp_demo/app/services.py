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
from blsp_demo.app.limits import RateLimits, SessionGate

log = logging.getLogger(__name__)

EXAMPLES_DIR = Path(__file__).resolve().parents[2] / "examples"


class EnginePool:
    """Engines by model spec, loaded on first use and shared by all sessions.

    Each conversation's KV cache lives inside the engine under the conversation's id, so sharing
    an engine between sessions shares weights, never conversations.
    """

    def __init__(self, loader: Callable | None = None):
        if loader is None:
            from blsp_demo.engine.loading import load_engine as loader
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

    @classmethod
    def create(cls, settings: AppSettings, pool: EnginePool | None = None, hf_api=None) -> "Services":
        from blsp_demo.app.hub_push import make_scheduler
        from blsp_demo.engine.registry import REGISTRY

        data_dir = Path(settings.data_dir).expanduser().resolve()
        try:
            scheduler = make_scheduler(settings.hf_dataset_repo, data_dir, hf_api=hf_api)
        except Exception as err:  # noqa: BLE001 - a demo that logs locally beats no demo
            log.error("not pushing to the Hub dataset %s (logs stay in %s): %s",
                      settings.hf_dataset_repo, data_dir, err)
            scheduler = None
        store = Store(data_dir, lock=scheduler.lock if scheduler is not None else None)
        choices = list(dict.fromkeys([settings.model, *REGISTRY, *settings.extra_models]))
        gate = SessionGate(RateLimits(turns_per_minute=settings.turns_per_minute))
        return cls(settings, pool or EnginePool(), store, load_examples(), choices, scheduler, gate)

    def allowed_paths(self) -> list[str]:
        """Folders whose files the UI may serve: stored audio and the examples."""
        return [str(self.store.audio_dir), str(EXAMPLES_DIR)]


def gpu(fn):
    """`@spaces.GPU` on a Hugging Face ZeroGPU Space (the `spaces` package); unchanged elsewhere."""
    try:
        import spaces
    except ImportError:
        return fn
    return spaces.GPU(fn)
