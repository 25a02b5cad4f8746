"""Generation options and responses: frozen dataclasses, as whisper's DecodingOptions / DecodingResult."""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace

@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 128
    temperature: float = 0.0  # 0: greedy
    top_p: float = 1.0
    num_beams: int = 1  # > 1: beam search (no streaming, the answer comes at once)
    repetition_penalty: float = 1.0
    seed: int | None = None
    min_new_tokens: int = 1
    loop_guard: bool = True  # end the answer (finish_reason "loop") when it repeats one block 3+ times

    def replace(self, **changes) -> "GenerationOptions":
        return replace(self, **changes)

    def validate(self) -> "GenerationOptions":
        if self.max_new_tokens < 1:
            raise ValueError("max_new_tokens must be at least 1")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")
        if self.num_beams < 1:
            raise ValueError("num_beams must be at least 1")
        return self

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Response:
    text: str
    ttft_s: float  # request start -> first token
    total_s: float
    new_tokens: int
    options: GenerationOptions
    prefill_tokens: int = 0  # positions this turn actually ran through the LLM before decoding
    cached_tokens: int = 0  # positions not prefilled: the conversation's KV cache, or the shared system-prompt prefix
    transcript: str | None = None  # what the cascade engine heard
    notices: tuple[str, ...] = ()  # e.g. oldest turns dropped to fit the context
    finish_reason: str = "stop"  # one of vocab.FINISH_REASONS

    @property
    def tokens_per_s(self) -> float:
        decode = self.total_s - self.ttft_s
        return (self.new_tokens - 1) / decode if self.new_tokens > 1 and decode > 0 else 0.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tokens_per_s"] = self.tokens_per_s
        return d
