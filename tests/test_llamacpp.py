"""The LLM runtimes: the choice of runtime, beams and batches without `generate` (on the tiny torch
model), and llama.cpp over the real SmolLM2 GGUF (slow): streaming, per-conversation sequences,
speech positions as an embedding batch, shared prompt starts, eviction, beams and sampling."""

from __future__ import annotations

import pytest
import torch

from blsp_demo.conversation import Conversation
from blsp_demo.engine.cache import ChatCache
from blsp_demo.engine.llamacpp import _runs
from blsp_demo.engine.runtime import TorchRuntime, runtime_choice
from blsp_demo.engine.search import beam_search, decode_rows
from blsp_demo.options import GenerationOptions

GREEDY = GenerationOptions(max_new_tokens=12)


def test_runs_split_speech_slots_from_tokens():
    assert _runs([1, 2, -200, -200, 3], -200) == [(0, 2, False), (2, 4, True), (4, 5, False)]
    assert _runs([-200], -200) == [(0, 1, True)]
    assert _runs([5, 6], None) == [(0, 2, False)]


def test_runtime_choice(monkeypatch):
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    monkeypatch.delenv("BLSP_LLM_RUNTIME", raising=False)
    assert runtime_choice(cpu, True) == "llama.cpp"  # llama-cpp-python is installed here
    assert runtime_choice(gpu, True) == "torch" and runtime_choice(cpu, False) == "torch"
    assert runtime_choice(cpu, True, "torch") == "torch"
    monkeypatch.setenv("BLSP_LLM_RUNTIME", "torch")
    assert runtime_choice(cpu, True) == "torch"
    with pytest.raises(ValueError, match="GGUF LLM on the CPU"):
        runtime_choice(gpu, True, "llama.cpp")
    with pytest.raises(ValueError, match="choose from"):
        runtime_choice(cpu, True, "onnx")


@pytest.fixture(scope="module")
def tiny(official_checkpoint):
    from transformers import AutoTokenizer

    from blsp_demo.engine.build import text_engine
    from blsp_demo.model.blsp import BlspModel
    from blsp_demo.prompts import get_template

    model = BlspModel.from_pretrained(official_checkpoint).eval()
    tok = AutoTokenizer.from_pretrained(official_checkpoint)
    return text_engine(model.llama_model, tok, get_template("blsp"), model_id="tiny")


class RowsTogether:
    """The torch runtime with llama.cpp's `forward_many` surface (one call for every row's next
    token, groups of `max_rows`), to test the batched loop of `decode_rows` against row by row."""

    max_rows = 2

    def __init__(self, runtime):
        self.inner, self.device, self.calls = runtime, runtime.device, []

    def new_cache(self):
        return self.inner.new_cache()

    def forward(self, ids, frames, past, start):
        return self.inner.forward(ids, frames, past, start)

    def forward_many(self, tokens, pasts):
        assert len(tokens) <= self.max_rows
        self.calls.append(len(tokens))
        return torch.cat([self.inner.forward([t], None, p, self.inner.held(p)) for t, p in zip(tokens, pasts)])


def test_search_matches_generate_on_the_torch_runtime(tiny):
    """decode_rows (greedy, forced length) gives `generate`'s answer; a one-beam search is greedy."""
    runtime = TorchRuntime(tiny.llm, tiny.frontend.embed)
    convs = [Conversation().add_text(t) for t in ("hello world", "the cat", "a b c d")]
    plans = [tiny.plan(c, ChatCache()) for c in convs]
    forced = GenerationOptions(max_new_tokens=8, min_new_tokens=8)
    mine = decode_rows(runtime, plans, forced, tiny.stop_ids)
    assert mine == [tiny._hf_generate([p], forced)[0] for p in plans]
    assert all(len(ids) == 8 for ids in mine)
    free = GenerationOptions(max_new_tokens=10)  # rows stop at different steps
    assert decode_rows(RowsTogether(runtime), plans, free, tiny.stop_ids) == \
        decode_rows(runtime, plans, free, tiny.stop_ids)
    one_beam = GenerationOptions(max_new_tokens=8, min_new_tokens=8, num_beams=1)
    assert beam_search(runtime, plans[0], one_beam, tiny.stop_ids) == mine[0]


# ---- llama.cpp on the real GGUF ------------------------------------------------------------------
@pytest.fixture(scope="module")
def fast():
    from blsp_demo.engine.loading import load_engine

    return load_engine("micro-text", runtime="llama.cpp")


@pytest.mark.slow
def test_llamacpp_engine_streams_and_reuses_its_sequence(fast):
    assert fast.runtime.kind == "llama.cpp" and fast.llm is None
    conv = Conversation(id="one").add_text("What is the capital of France?")
    chunks = list(fast.stream(conv, GREEDY))
    first = chunks[-1].response
    assert "".join(c.delta for c in chunks) == first.text and len(first.text) > 0
    conv = conv.add_reply(first.text).add_text("And of Italy?")
    second = fast.respond(conv, GREEDY)
    assert second.cached_tokens > 0 and second.prefill_tokens < 20  # the first turn stayed in its sequence
    again = fast.respond(Conversation(turns=conv.turns, id="fresh"), GREEDY)
    assert again.text == second.text  # a cached turn answers as a fresh prefill does
    assert fast.cache_for("one").nbytes() > 0
    fast.forget("one")
    fast.forget("fresh")


@pytest.mark.slow
def test_llamacpp_speech_positions_take_embeddings(fast):
    """Positions fed as an embedding batch (the way speech frames enter) give the logits the same
    positions give as tokens: here the embeddings are the GGUF's own token embeddings."""
    from blsp_demo.weights import sources

    rt = fast.runtime
    tok_emb = sources.load_gguf_causal_lm(*sources.smollm2_gguf()).get_input_embeddings()
    ids = fast.plan(Conversation().add_text("Name a colour."), ChatCache()).ids
    as_tokens = rt.forward(ids, None, rt.new_cache(), 0)
    with torch.no_grad():
        frames = tok_emb(torch.tensor(ids[5:12]))
    mixed = ids[:5] + [rt.slot_id] * 7 + ids[12:]
    as_speech = rt.forward(mixed, frames, rt.new_cache(), 0)
    torch.testing.assert_close(as_speech, as_tokens, atol=1e-3, rtol=1e-4)
    with pytest.raises(Exception, match="wide"):
        rt.forward([rt.slot_id], torch.zeros(1, 7), rt.new_cache(), 0)


@pytest.mark.slow
def test_a_speech_prompt_goes_in_as_one_embedding_batch(fast, monkeypatch):
    """`FramesAsEmbeddings`: a prompt of tokens and speech frames is one llama_decode of embeddings
    (the tokens embedded by the de-quantized GGUF's table, the frames scattered in), not one call per
    run, with the logits of the run-by-run path; prompts without frames still go in as ids."""
    from blsp_demo.engine.runtime import FramesAsEmbeddings, as_runtime
    from blsp_demo.weights import sources

    rt = fast.runtime
    table = sources.load_gguf_causal_lm(*sources.smollm2_gguf()).get_input_embeddings()

    def embed(ids, frames):  # (1, L) ids with placeholders -> (1, L, d), as BlspModel.embed_with_speech
        slots = ids == rt.slot_id
        rows = table(ids.masked_fill(slots, 0))
        assert int(slots.sum()) == frames.shape[0]
        return rows.masked_scatter(slots[..., None], frames.to(rows.dtype))

    whole = as_runtime(rt, embed, frames=True)
    assert isinstance(whole, FramesAsEmbeddings) and as_runtime(rt, embed) is rt
    ids = fast.plan(Conversation().add_text("Name a colour."), ChatCache()).ids
    with torch.no_grad():
        frames = table(torch.tensor(ids[5:12]))
    mixed = ids[:5] + [rt.slot_id] * 7 + ids[12:]
    calls = []
    decode = rt._decode
    monkeypatch.setattr(rt, "_decode", lambda batch, *p: calls.append(batch.n_tokens) or decode(batch, *p))
    by_runs = rt.forward(mixed, frames, rt.new_cache(), 0)
    assert calls == [5, 7, len(ids) - 12]
    calls.clear()
    together = whole.forward(mixed, frames, rt.new_cache(), 0)
    assert calls == [len(ids)]
    torch.testing.assert_close(together, by_runs, atol=1e-3, rtol=1e-4)
    calls.clear()
    whole.forward(ids, None, rt.new_cache(), 0)
    assert calls == [len(ids)] and whole.kind == "llama.cpp"  # tokens as ids; the rest is the runtime's


@pytest.mark.slow
def test_llamacpp_shared_start_and_eviction():
    """More conversations than sequences: the oldest one's sequence is taken over; that
    conversation prefills again and answers as before. The shared start is a sequence too."""
    from blsp_demo.engine.build import text_engine
    from blsp_demo.engine.llamacpp import LlamaCppRuntime
    from blsp_demo.prompts import get_template
    from blsp_demo.weights import sources

    folder, file = sources.smollm2_gguf()
    rt = LlamaCppRuntime(folder / file, threads=1, n_ctx=2048, n_seqs=3, slot_id=-200)
    engine = text_engine(rt, sources.load_gguf_tokenizer(folder, file), get_template("chatml"), model_id="t")
    convs = [Conversation(id=f"c{i}").add_text(q) for i, q in enumerate(("Hi!", "Name a fruit.", "Count to 3."))]
    first = [engine.respond(c, GREEDY) for c in convs]
    assert len(engine.prefixes) == 1 and all(r.cached_tokens > 0 for r in first[1:])  # the shared start
    again = engine.respond(convs[0].add_reply(first[0].text).add_text("Thanks."), GREEDY)
    fresh = engine.respond(Conversation(turns=convs[0].add_reply(first[0].text).add_text("Thanks.").turns,
                                        id="other"), GREEDY)
    assert again.text == fresh.text


@pytest.mark.slow
def test_llamacpp_beams_sampling_and_batches(fast):
    conv = Conversation().add_text("What is the capital of France?")
    beams = fast.respond(conv, GenerationOptions(max_new_tokens=12, num_beams=3))
    assert "Paris" in beams.text
    sample = GenerationOptions(max_new_tokens=12, temperature=0.8, seed=7)
    assert fast.respond(conv, sample).text == fast.respond(Conversation().add_text(conv.turns[0].text), sample).text
    rows = fast.respond_batch([conv, Conversation().add_text("Name a colour.")], GREEDY)
    assert rows[0].text == fast.respond(Conversation().add_text(conv.turns[0].text), GREEDY).text


@pytest.mark.slow
def test_llamacpp_rows_decode_together():
    """`forward_many` (one llama_decode for several sequences) gives each row the logits of its own
    forward; a batch of more rows than `max_rows` answers as row by row does. (Not as `respond` does to
    the last token: it prefills the shared system prompt apart, and other chunks round otherwise.)"""
    from blsp_demo.engine.build import text_engine
    from blsp_demo.engine.llamacpp import LlamaCppRuntime
    from blsp_demo.prompts import get_template
    from blsp_demo.weights import sources

    folder, file = sources.smollm2_gguf()
    rt = LlamaCppRuntime(folder / file, threads=1, n_ctx=2048, n_seqs=4, slot_id=-200)
    assert rt.max_rows == 2
    engine = text_engine(rt, sources.load_gguf_tokenizer(folder, file), get_template("chatml"), model_id="t")
    plans = [engine.plan(Conversation().add_text(q), ChatCache()) for q in ("Hi!", "Name a fruit.")]
    pasts = [rt.new_cache() for _ in plans]
    firsts = [rt.forward(p.ids, None, past, 0) for p, past in zip(plans, pasts)]
    toks = [int(f.argmax()) for f in firsts]
    together = rt.forward_many(toks, pasts)  # (2, V)
    assert together.shape == (2, rt.n_vocab) and [p.length for p in pasts] == [len(p.ids) + 1 for p in plans]
    for p, tok, row in zip(plans, toks, together):
        alone = rt.forward(p.ids + [tok], None, rt.new_cache(), 0)[0]
        torch.testing.assert_close(row, alone, atol=2e-2, rtol=1e-3)
    questions = ("What is the capital of France?", "Name a colour.", "Count to 3.", "Hi!", "What is 2+2?")
    convs = [Conversation().add_text(q) for q in questions]
    rows = engine.respond_batch(convs, GREEDY, batch_size=8)  # groups of 2, 2 and 1 rows
    singles = engine.respond_batch(convs, GREEDY, batch_size=1)  # one sequence in each llama_decode
    assert [r.text for r in rows] == [r.text for r in singles] and all(r.text for r in rows)


TOKENIZER_TEXTS = ("What is the capital of France?", "L'Étoile, la Marseillaise — «ça» 😀 日本語のテキスト",
                   "def f(x):\n\treturn x**2  # 2+2=4\n\n\n", "  leading and trailing  ", "ünïcödé ß ﬁ 3.14159",
                   "<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n", "\u200b zero width\r\n", "")


@pytest.mark.slow
@pytest.mark.parametrize("llm_name", ["smollm2-135m-instruct", "qwen2.5-coder-0.5b-instruct"])
def test_llama_vocab_tokenizes_as_the_transformers_tokenizer(llm_name):
    """The engine's tokenizer under llama.cpp (the GGUF's vocabulary inside llama.cpp) gives the ids,
    texts, special ids and stop ids the transformers tokenizer of the same GGUF gives."""
    from blsp_demo.engine.chat import stop_token_ids
    from blsp_demo.engine.llama_vocab import LlamaVocabTokenizer
    from blsp_demo.engine.llamacpp import LlamaCppRuntime
    from blsp_demo.weights import sources
    from blsp_demo.weights.llms import get_llm

    folder, file = get_llm(llm_name).gguf()
    hf = sources.load_gguf_tokenizer(folder, file)
    mine = LlamaVocabTokenizer(LlamaCppRuntime(folder / file, threads=1, n_ctx=256, n_seqs=1))
    for text in TOKENIZER_TEXTS:
        for plain in (False, True):
            ids = hf(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"]
            assert mine(text, add_special_tokens=False, split_special_tokens=plain)["input_ids"] == ids, (text, plain)
            for skip in (True, False):
                assert mine.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip)
    assert mine.decode(hf("é", add_special_tokens=False)["input_ids"][:1] or [0]) == hf.decode(
        hf("é", add_special_tokens=False)["input_ids"][:1] or [0])  # half a character, as transformers shows it
    assert (mine.eos_token_id, mine.bos_token_id, mine.pad_token_id) == (hf.eos_token_id, hf.bos_token_id,
                                                                          hf.pad_token_id)
    assert stop_token_ids(mine, ("<|im_end|>",)) == stop_token_ids(hf, ("<|im_end|>",))
    assert mine.convert_tokens_to_ids("<|im_end|>") == hf.convert_tokens_to_ids("<|im_end|>")
