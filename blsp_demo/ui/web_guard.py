"""Two small ASGI middlewares around the Gradio app (passed to `launch` as `app_kwargs`).

- `SecurityHeaders`: a Content-Security-Policy that keeps text from rendering as live content.
  Gradio's Markdown sanitizer already drops scripts and event handlers from messages; a markdown
  image in a question or an answer (`![x](https://tracker/?q=...)`) would still make every viewer's
  browser fetch that URL, so images may only come from the app itself (or data:/blob: URLs).
- `RejectedUploads`: an upload over the size limit is refused by Gradio before any session sees
  it; this writes a `rejected` record for it, so the attempt is in the data dir like any other.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)

CONTENT_SECURITY_POLICY = "img-src 'self' data: blob:; object-src 'none'; base-uri 'self'"


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
