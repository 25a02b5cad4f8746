"""Judge backends: anything with `model` and `complete(messages) -> str` (and optionally
`choose(messages, options)`); replies cached on disk by the exact request."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import random
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, Sequence

log = logging.getLogger(__name__)

DEFAULT_CACHE_DIR = Path(os.environ.get("BLSP_JUDGE_CACHE", Path.home() / ".cache" / "blsp-demo" / "judge"))


class JudgeError(RuntimeError):
    """The backend gave no usable reply; the message is the reason recorded on the row."""


# ---- backends ---------------------------------------------------------------------------------
class Backend(Protocol):
    model: str  # recorded on every judgement

    def complete(self, messages: list[dict]) -> str: ...


class OpenAIBackend:
    """Any OpenAI-compatible chat completions server, through the `openai` SDK.

    Each request has a timeout; failures that may pass (429, 5xx, timeouts, dropped connections,
    replies that are not a chat completion) are retried at most `max_retries` times with
    exponential backoff (or the server's Retry-After); and a row never takes longer than
    `deadline_s` in all, whatever the server does (a reply trickling in byte by byte never trips a
    read timeout: the request runs in a thread that is given up on at the deadline).
    """

    RETRY_STATUS = (408, 409, 429, 500, 502, 503, 504)

    def __init__(self, model: str | None = None, base_url: str | None = None, *, api_key: str | None = None,
                 timeout_s: float = 60.0, max_retries: int = 4, backoff_s: float = 1.0, max_backoff_s: float = 30.0,
                 deadline_s: float = 180.0, max_tokens: int = 200, temperature: float = 0.0):
        from openai import OpenAI

        self.model = model or os.environ.get("JUDGE_MODEL") or "gpt-4o-mini"
        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = api_key or os.environ.get("OPENAI_API_KEY")
        if not key and not base_url:
            raise JudgeError("no judge configured: set OPENAI_API_KEY (and OPENAI_BASE_URL for another server)")
        # Local servers (llama.cpp, vLLM, Ollama) accept any key; the SDK insists on one.
        self._client = OpenAI(api_key=key or "none", base_url=base_url, timeout=timeout_s, max_retries=0)
        self.base_url = str(self._client.base_url)
        self.max_retries, self.backoff_s, self.max_backoff_s = max_retries, backoff_s, max_backoff_s
        self.timeout_s, self.deadline_s = timeout_s, deadline_s
        self.params = {"temperature": temperature, "max_tokens": max_tokens}

    def __repr__(self) -> str:  # no key in any repr
        return f"OpenAIBackend(model={self.model!r}, base_url={self.base_url!r})"

    def complete(self, messages: list[dict]) -> str:
        t_end = time.monotonic() + self.deadline_s
        for attempt in range(self.max_retries + 1):
            left = t_end - time.monotonic()
            try:
                return call_within(left, self._request, messages, min(self.timeout_s, left))
            except _Retryable as err:
                why, wait = str(err), err.wait_s
            except TimeoutError:
                raise JudgeError(f"no reply within the deadline of {self.deadline_s:g} s "
                                 f"({attempt + 1} {'try' if attempt == 0 else 'tries'})") from None
            if attempt == self.max_retries:
                raise JudgeError(f"{why} after {attempt + 1} tries")
            delay = min(self.max_backoff_s, wait if wait is not None else self.backoff_s * 2 ** attempt)
            delay *= 1 + 0.1 * random.random()
            if time.monotonic() + delay >= t_end:
                raise JudgeError(f"{why} after {attempt + 1} tries; no time left before the deadline "
                                 f"of {self.deadline_s:g} s")
            log.info("judge: %s, retrying in %.1f s (%d/%d)", why, delay, attempt + 1, self.max_retries)
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _request(self, messages: list[dict], timeout_s: float) -> str:
        """One request: the reply's text, JudgeError (do not retry) or _Retryable."""
        import openai

        try:
            out = self._client.chat.completions.create(model=self.model, messages=messages, timeout=timeout_s,
                                                       **self.params)
        except openai.APIStatusError as err:
            if err.status_code not in self.RETRY_STATUS:
                raise JudgeError(f"HTTP {err.status_code} from the judge server: {_short(err.message)}") from None
            raise _Retryable(f"HTTP {err.status_code}", _retry_after(err)) from None
        except openai.APITimeoutError:
            raise _Retryable("timeout") from None
        except openai.APIConnectionError:
            raise _Retryable("connection error") from None
        except (openai.APIResponseValidationError, ValueError) as err:  # not JSON, not a completion
            raise _Retryable(f"unusable reply ({type(err).__name__})") from None
        return completion_text(out)


class _Retryable(Exception):
    def __init__(self, why: str, wait_s: float | None = None):
        super().__init__(why)
        self.wait_s = wait_s


def completion_text(out) -> str:
    """The message text of a chat completion; _Retryable when the reply is not one."""
    choices = getattr(out, "choices", None)
    message = getattr(choices[0], "message", None) if isinstance(choices, list) and choices else None
    content = getattr(message, "content", None)
    if not isinstance(content, str):
        raise _Retryable("unusable reply (no message text)")
    return content


def call_within(seconds: float, fn, *args):
    """`fn(*args)`, or TimeoutError when it has not returned within `seconds`. It runs in a daemon
    thread, which is left to end on its own then: a blocking socket read cannot be interrupted."""
    if seconds <= 0:
        raise TimeoutError
    box: dict = {}

    def run():
        try:
            box["value"] = fn(*args)
        except BaseException as err:  # noqa: BLE001 - handed to the caller
            box["error"] = err

    thread = threading.Thread(target=run, name="judge-request", daemon=True)
    thread.start()
    thread.join(seconds)
    if thread.is_alive():
        raise TimeoutError
    if "error" in box:
        raise box["error"]
    return box["value"]


def _retry_after(err) -> float | None:
    try:
        return max(0.0, float(err.response.headers.get("retry-after")))
    except (TypeError, ValueError, AttributeError):
        return None


def _short(text: str, n: int = 200) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n] + "…"


class LocalBackend:
    """A transformers causal LM (default: the bundled SmolLM2-135M-Instruct), offline.

    For verdicts it does not sample: it compares the log-probabilities of the two possible last
    lines ('Verdict: acceptable' / 'Verdict: unacceptable') after the prompt, so even a small
    model always yields a well-formed verdict (whether a good one is what agreement measures).
    """

    def __init__(self, model=None, tokenizer=None, name: str | None = None, max_new_tokens: int = 96):
        self._model, self._tokenizer = model, tokenizer
        self.model = name or ("local:smollm2-135m-instruct" if model is None else f"local:{type(model).__name__}")
        self.max_new_tokens = max_new_tokens
        self._lock = threading.Lock()  # one forward at a time: the model is shared

    def _load(self):
        if self._model is None:
            from blsp_demo.weights.checkpoints import bundled_llm

            self._model, self._tokenizer = bundled_llm()
            self._model.eval()
        return self._model, self._tokenizer

    def _prompt_ids(self, messages: list[dict]) -> list[int]:
        _, tok = self._load()
        ids = tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        return list(ids["input_ids"] if isinstance(ids, dict) or hasattr(ids, "keys") else ids)

    def complete(self, messages: list[dict]) -> str:
        import torch

        model, tok = self._load()
        with self._lock, torch.inference_mode():
            ids = torch.tensor([self._prompt_ids(messages)])
            out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                 do_sample=False, pad_token_id=tok.eos_token_id)
        return tok.decode(out[0, ids.shape[1]:], skip_special_tokens=True)

    def choose(self, messages: list[dict], options: Sequence[str]) -> tuple[int, str]:
        """The option the model finds likeliest as its reply; (index, raw text with the scores)."""
        import torch

        model, tok = self._load()
        prompt = self._prompt_ids(messages)
        scores = []
        with self._lock, torch.inference_mode():
            for option in options:
                cont = tok(option, add_special_tokens=False)["input_ids"]
                ids = torch.tensor([prompt + cont])
                logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), -1)
                scores.append(float(logp.gather(1, torch.tensor(cont)[:, None]).sum()))
        best = max(range(len(options)), key=scores.__getitem__)
        detail = ", ".join(f"{o!r}: {s:.3f}" for o, s in zip(options, scores))
        return best, f"{options[best]}\n(log-probabilities {detail})"


# ---- cache --------------------------------------------------------------------------------------
@dataclass
class ReplyCache:
    """Replies on disk, one JSON file per exact request (sha256 of model + messages + params)."""

    folder: Path | None = DEFAULT_CACHE_DIR

    @staticmethod
    def key(model: str, messages: list[dict], params: dict) -> str:
        blob = json.dumps({"model": model, "messages": messages, "params": params}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def get(self, key: str) -> str | None:
        if self.folder is None:
            return None
        try:
            return json.loads((Path(self.folder) / f"{key}.json").read_text(encoding="utf-8"))["raw"]
        except (OSError, ValueError, KeyError):
            return None

    def put(self, key: str, raw: str) -> None:
        if self.folder is None:
            return
        folder = Path(self.folder)
        folder.mkdir(parents=True, exist_ok=True)
        tmp = folder / f".{key}.{os.getpid()}.{threading.get_ident()}.tmp"
        tmp.write_text(json.dumps({"raw": raw, "ts": time.time()}, ensure_ascii=False), encoding="utf-8")
        os.replace(tmp, folder / f"{key}.json")
