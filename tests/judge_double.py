"""A tiny OpenAI-compatible chat-completions server for tests: the boundary double of a paid judge
API. It answers every POST .../chat/completions with a verdict chosen by `decide(answer_text)`
(default: accept unless the answer contains "wrong") and counts the requests it saw."""

from __future__ import annotations

import json
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JudgeDouble:
    def __init__(self, decide=None):
        self.decide = decide or (lambda answer: "unacceptable" if "wrong" in answer.lower() else "acceptable")
        self.requests: list[dict] = []
        self.times: list[float] = []
        double = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 - http.server's name
                body = json.loads(self.rfile.read(int(self.headers.get("content-length") or 0)) or b"{}")
                double.requests.append(body)
                double.times.append(time.monotonic())
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": "not found"}})
                user = body["messages"][-1]["content"]
                answer = re.search(r"<answer>\n?(.*?)\n?</answer>", user, re.S)
                verdict = double.decide(answer.group(1) if answer else "")
                reply = f"The answer was checked.\nVerdict: {verdict}"
                self._send(200, {"id": "chatcmpl-test", "object": "chat.completion", "created": int(time.time()),
                                 "model": body.get("model", "test-judge"),
                                 "choices": [{"index": 0, "finish_reason": "stop",
                                              "message": {"role": "assistant", "content": reply}}],
                                 "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

            def _send(self, status, obj):
                data = json.dumps(obj).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> "JudgeDouble":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
