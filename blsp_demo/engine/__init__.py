"""Engines: a conversation in, a streamed answer out.

    from blsp_demo.engine import load_engine
    engine = load_engine("micro-cascade")          # a registered name, a folder or a Hub id
    for chunk in engine.stream(conv, options): ...  # or engine.respond(conv), engine.respond_batch(convs)

Anything with `name`, `model_id`, `stream`, `respond` and `forget` is an `Engine` to the app
(the test doubles of the app's tests are).
"""

from __future__ import annotations

from typing import Iterator, Protocol

from blsp_demo.conversation import Conversation
from blsp_demo.engine.chat import ChatEngine, EngineLimits, StreamChunk
from blsp_demo.engine.loading import load_engine
from blsp_demo.options import GenerationOptions, Response


class Engine(Protocol):
    name: str  # the system: blsp | llasm | cascade | ctc | text
    model_id: str

    def stream(self, conv: Conversation, options: GenerationOptions) -> Iterator[StreamChunk]: ...

    def respond(self, conv: Conversation, options: GenerationOptions) -> Response: ...

    def forget(self, conv_id: str) -> None: ...


__all__ = ["ChatEngine", "Engine", "EngineLimits", "StreamChunk", "load_engine"]
