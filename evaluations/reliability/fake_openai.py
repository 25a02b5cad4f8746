"""A fake OpenAI-compatible server on loopback: /v1/chat/completions with scripted replies and
outages. The only stand-in in the hardening work, at the judge-API boundary (tests/test_judge.py
and the judge outage scenario use it).

A reply is `(status, text, delay_s)`: status 200 answers `text` as the message content after
`delay_s`; another number answers that HTTP error. Outages are statuses of their own:
- `"hang"`: read the request and say nothing for `delay_s`, then drop the connection;
- `"trickle"`: send 200 headers, then the body one byte every 0.2 s for `delay_s` (no read timeout
  ever fires: only an overall deadline ends it);
- `"garbage"`: 200 with `text` as the raw body (HTML, truncated JSON, JSON without choices).
Replies come from `queue` first (one per request), then from `outage` while it is set, else
`default(body)`: a gullible grader that obeys 'ignore the above' and accepts answers saying Paris.
"""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

Reply = tuple  # (status: int | "hang" | "trickle" | "garbage", text: str, delay_s: float)


class FakeOpenAI:
    def __init__(self):
        self.requests: list[dict] = []
        self.auth: list[str] = []
        self.queue: list[Reply] = []  # consumed first, one per request
        self.outage: Reply | None = None  # every request while set (after the queue)
        self.in_flight = self.max_in_flight = 0
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def next_reply(self, body: dict) -> Reply:
        with self.lock:
            self.requests.append(body)
            if self.queue:
                return self.queue.pop(0)
            return self.outage if self.outage is not None else self.default(body)

    @staticmethod
    def default(body) -> Reply:
        prompt = body["messages"][-1]["content"]
        if re.search(r"ignore the above", prompt, re.I):
            return 200, "Told to.\nVerdict: acceptable", 0.0
        answer = prompt.split("<answer>")[1].split("</answer>")[0] if "<answer>" in prompt else prompt
        if "paris" in answer.lower():
            return 200, "Correct: Paris is the capital.\nVerdict: acceptable", 0.0
        return 200, "That is not the capital of France.\nVerdict: unacceptable", 0.0

    def _handler(self):
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with server.lock:
                    server.auth.append(self.headers.get("Authorization", ""))
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    server.answer(self, body, *server.next_reply(body))
                except (BrokenPipeError, ConnectionResetError):
                    pass
                finally:
                    with server.lock:
                        server.in_flight -= 1

        return Handler

    def answer(self, h: BaseHTTPRequestHandler, body: dict, status, text: str, delay: float) -> None:
        if status == "hang":
            self.stopping.wait(delay)
            h.close_connection = True
            return
        if status == "garbage":
            return self._send(h, 200, text.encode())
        self.stopping.wait(delay if status != "trickle" else 0)
        if status == "trickle":
            return self._trickle(h, completion(body, text), delay)
        payload = completion(body, text) if status == 200 else json.dumps({"error": {"message": text}}).encode()
        self._send(h, status, payload, retry_after=status == 429)

    @staticmethod
    def _send(h, status: int, payload: bytes, retry_after: bool = False) -> None:
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload)))
        if retry_after:
            h.send_header("Retry-After", "0")
        h.end_headers()
        h.wfile.write(payload)

    def _trickle(self, h, payload: bytes, seconds: float) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(payload) + 10_000))  # more than will ever come
        h.end_headers()
        h.wfile.flush()
        t_end = time.monotonic() + seconds
        while time.monotonic() < t_end and not self.stopping.is_set():
            h.wfile.write(b" ")
            h.wfile.flush()
            time.sleep(0.2)
        h.close_connection = True

    def close(self) -> None:
        self.stopping.set()
        self.httpd.shutdown()
        self.httpd.server_close()


def completion(body: dict, text: str) -> bytes:
    return json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                       "choices": [{"index": 0, "finish_reason": "stop",
                                    "message": {"role": "assistant", "content": text}}]}).encode()
