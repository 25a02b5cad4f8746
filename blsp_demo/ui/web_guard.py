"""Two small ASGI middlewares around the Gradio app (passed to `launch` as `app_kwargs`).

- `SecurityHeaders`: a Content-Security-Policy that keeps text from rendering as live content.
  Gradio's Markdown sanitizer already drops scripts and event handlers from messages, but keeps
  `<img>`, `<audio>`, `<video>`, `<source>` (with `src`) and `<form action>`: a question or an
  answer holding one would make every later viewer's browser call that host. So everything the
  page loads, plays, connects to or submits may only come from the app itself (`default-src
  'self'`, plus data:/blob: media; Gradio needs inline scripts and styles; its fonts are local).
- `RejectedUploads`: an upload over the size limit is refused by Gradio before any session sees
  it; this writes a `rejected` record for it, so the attempt is in the data dir like any other.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "; ".join([
    "default-src 'self'",
    "script-src 'self' 'unsafe-inline' 'unsafe-eval' blob:",  # Gradio's inline config and its bundles
    "style-src 'self' 'unsafe-inline'",
    "img-src 'self' data: blob:",
    "media-src 'self' data: blob:",  # recordings and players: the app's own files or the page's blobs
    "font-src 'self' data:",
    "connect-src 'self' blob: data:",  # the audio player fetches the page's own blobs (never another host)
    "worker-src 'self' blob:",
    "frame-src 'self'",
    "object-src 'none'",
    "base-uri 'self'",
    "form-action 'self'",
])


class SecurityHeaders:
    def __init__(self, app, policy: str = CONTENT_SECURITY_POLICY):
        self.app, self.policy = app, policy

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_headers(message):
            if message["type"] == "http.response.start":
                from starlette.datastructures import MutableHeaders

                headers = MutableHeaders(scope=message)
                headers["Content-Security-Policy"] = self.policy
                headers["X-Content-Type-Options"] = "nosniff"
            await send(message)

        await self.app(scope, receive, send_with_headers)


class RejectedUploads:
    def __init__(self, app, store):
        self.app, self.store = app, store

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or not scope["path"].rstrip("/").endswith("/upload"):
            return await self.app(scope, receive, send)

        async def send_watching(message):
            if message["type"] == "http.response.start" and message["status"] == 413:
                self._log(scope)
            await send(message)

        await self.app(scope, receive, send_watching)

    def _log(self, scope) -> None:
        size = dict(scope.get("headers") or ()).get(b"content-length", b"")
        try:  # no session: the upload came before any event of one
            self.store.append("rejected", "", what="upload", status=413, path=scope["path"],
                              bytes=int(size) if size.isdigit() else None,
                              reason="over the upload size limit")
        except OSError:
            log.exception("could not log a rejected upload")
