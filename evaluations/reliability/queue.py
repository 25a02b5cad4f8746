"""Raw Gradio queue calls, as a browser or a hostile client sends them: by `fn_index`, in a session
hash the caller picks, with JSON written by hand. Shared by the reliability scenarios and the tests."""

from __future__ import annotations

import json

import httpx


def fn_index(config: dict, api_name: str | None = None, elem_id: str | None = None) -> int:
    """The dependency named `api_name`, or the one triggered by the component with `elem_id`."""
    ids = {c["id"]: c.get("props", {}).get("elem_id") for c in config["components"]}
    return next(d["id"] for d in config["dependencies"]
                if (api_name and d.get("api_name") == api_name)
                or (elem_id and any(ids.get(t[0]) == elem_id for t in d["targets"])))


def state_ids(config: dict) -> set[int]:
    return {c["id"] for c in config["components"] if c.get("type") == "state"}


def inputs_for(config: dict, fn: int, args: list) -> list:
    """The event's data: `args` in order for its components, None for its states (the server keeps
    those per session)."""
    dep = next(d for d in config["dependencies"] if d["id"] == fn)
    states, values = state_ids(config), iter(args)
    return [None if i in states else next(values, None) for i in dep["inputs"]]


def join(url: str, session_hash: str, fn: int, data: list) -> str | None:
    """Put an event in a session's queue without waiting for it; its event id. The body is sent in
    ASCII escapes, so a lone surrogate arrives as the server decodes it."""
    body = json.dumps({"data": data, "fn_index": fn, "session_hash": session_hash, "event_data": None,
                       "trigger_id": None}, ensure_ascii=True)
    joined = httpx.post(url.rstrip("/") + "/gradio_api/queue/join", content=body.encode("ascii"), timeout=30,
                        headers={"Content-Type": "application/json"})
    joined.raise_for_status()
    return joined.json().get("event_id")


def queue_call(url: str, session_hash: str, fn: int, data: list, timeout_s: float = 300) -> dict:
    """One event in a session; the `process_completed` message (`success`, `output`)."""
    event_id = join(url, session_hash, fn, data)
    with httpx.stream("GET", url.rstrip("/") + "/gradio_api/queue/data", params={"session_hash": session_hash},
                      timeout=timeout_s) as stream:
        for line in stream.iter_lines():
            if line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed" and msg.get("event_id", event_id) == event_id:
                    return msg
    return {"success": False, "output": {"error": "the event stream ended without a result"}}


def file_urls(value) -> list[str]:
    """Every file URL in an event's output."""
    if isinstance(value, dict):
        return [value["url"]] if value.get("url") else [u for v in value.values() for u in file_urls(v)]
    if isinstance(value, (list, tuple)):
        return [u for v in value for u in file_urls(v)]
    return []
