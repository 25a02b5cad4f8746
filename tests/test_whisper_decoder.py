"""The `whisper-decoder` speech side (micro-BLSP v2) on tiny random models."""

from __future__ import annotations

import torch

from blsp_demo.model.blsp import BlspConfig, BlspModel
from blsp_demo.model.whisper_reader import DecoderAdapter, greedy_states, repeated_tail
from blsp_demo.train.micro_decoder import init_by_regression
from blsp_demo.train.params import adapter_state
from tests.tiny import llama_config, whisper_config


def tiny_decoder_model(seed: int = 0) -> BlspModel:
    torch.manual_seed(seed)
    cfg = BlspConfig(whisper_config={**whisper_config(), "vocab_size": 51865, "max_target_positions": 64},
                     llama_config=llama_config(100), speech_compression="whisper-decoder",
                     adapter_inner_dim=16, encoder_window="trimmed")
    return BlspModel(cfg).eval()


def test_repeated_tail_finds_a_decoding_loop():
    assert repeated_tail([1, 2, 3, 4, 5, 6]) == 0
    assert repeated_tail([9, 1, 2, 3, 1, 2, 3]) == 3
    assert repeated_tail([7, 7]) == 0  # shorter than the minimal period: a word may repeat
    assert repeated_tail([5, 1, 2, 3, 4, 1, 2, 3, 4]) == 4


def test_greedy_states_one_state_per_token_and_bounded():
    model = tiny_decoder_model()
    encoded = torch.randn(1, 50, 32)  # one second of encoder states
    tokens, states = greedy_states(model.whisper_decoder, encoded)
    assert states.shape == (max(1, len(tokens)), 32)
    assert len(tokens) <= 50 * 8 // 50 + 8  # the per-second cap
    assert all(t < 50258 for t in tokens)  # no special, language or timestamp token is ever read


def test_speech_embeddings_come_from_the_decoder_and_only_the_adapter_is_saved():
    model = tiny_decoder_model()
    features, frames = torch.randn(2, 80, 3000), torch.tensor([100, 60])
    emb, lengths = model.speech_embeddings(features, frames)
    assert emb.shape[0] == 2 and emb.shape[2] == 64 and int(lengths.max()) == emb.shape[1]
    assert model.subsampler is None and model.ctc is None
    assert set(k.split(".")[0] for k in adapter_state(model)) == {"decoder_adapter"}
    # The adapter is what maps: the same decoder states through it are the embeddings.
    encoded, n = model.read_tokens(*__import__("blsp_demo.model.encoder", fromlist=["x"]).encode_features(
        model.whisper_model, features, frames, "trimmed"))
    assert torch.allclose(model.decoder_adapter(encoded[0, : int(n[0])]), emb[0, : int(lengths[0])], atol=1e-5)


def test_regression_init_recovers_a_linear_map():
    torch.manual_seed(0)
    x = torch.randn(4000, 12)
    w = torch.randn(12, 8)
    y = x @ w + 0.5
    adapter = DecoderAdapter(12, 8, inner_dim=16)
    report = init_by_regression(adapter, x, y, ridge=1e-6, steps=5)
    assert report["linear"]["cosine"] > 0.999 and report["mlp"]["mse"] < 1e-3


def test_soft_tokens_follow_whispers_own_distribution():
    from blsp_demo.model.whisper_reader import soft_tokens

    table = torch.eye(4) * 50  # Whisper's table: 4 text tokens, sharply separated
    token_map = torch.arange(8.0).reshape(4, 2)  # each Whisper token -> an LLM embedding (2-d)
    states = torch.eye(4)[[2, 0]]  # states pointing at tokens 2 and 0 (logits 50 against 0)
    out = soft_tokens(states, table, token_map)
    assert torch.allclose(out, token_map[[2, 0]], atol=1e-4)


def test_llm_positions_retokenize_whispers_reading():
    """Whisper's pieces " Par" + "is" + " now" read with certainty become the LLM's own tokens of
    "Paris now" (one position per LLM token, not per Whisper token); an uncertain Whisper position
    moves only the LLM tokens that overlap it, by its soft-minus-chosen drift."""
    from blsp_demo.model.whisper_reader import llm_positions, overlaps, token_spans

    pieces = [" Par", "is", " now"]
    assert token_spans(pieces) == [(0, 4), (4, 6), (6, 10)]
    assert overlaps([(0, 5), (5, 9)], [(0, 3), (3, 5), (5, 9)]) == [[0, 1], [2]]

    def llm_tokenize(text):  # a toy LLM tokenizer: "Paris" is one token, " now" another
        assert text == "Paris now"  # the stripped transcript, as the cascade passes it
        return [7, 3], [(0, 5), (5, 9)]

    table = torch.eye(3) * 50  # Whisper's table over its 3 text tokens (ids 0, 1, 2 = the pieces)
    token_map = torch.arange(6.0).reshape(3, 2)
    llm_table = torch.arange(20.0).reshape(10, 2)
    sure = torch.eye(3)  # each state points at its own token
    out = llm_positions([0, 1, 2], sure, pieces, llm_tokenize, llm_table, table, token_map)
    assert torch.allclose(out, llm_table[[7, 3]], atol=1e-4)
    unsure = sure.clone()
    unsure[2] = torch.tensor([1.0, 0.0, 1.0]) / 1.0  # " now": tokens 0 and 2 equally likely
    out = llm_positions([0, 1, 2], unsure, pieces, llm_tokenize, llm_table, table, token_map)
    drift = 0.5 * (token_map[0] + token_map[2]) - token_map[2]
    assert torch.allclose(out[0], llm_table[7], atol=1e-4)
    assert torch.allclose(out[1], llm_table[3] + drift, atol=1e-4)
    extra = torch.ones(3, 2)  # a trained adapter's output per Whisper position is averaged in too
    out = llm_positions([0, 1, 2], sure, pieces, llm_tokenize, llm_table, table, token_map, extra=extra)
    assert torch.allclose(out, llm_table[[7, 3]] + 1, atol=1e-4)
    silent = llm_positions([], sure[:1], [], lambda text: ([], []), llm_table, table, token_map, extra=extra[:1])
    assert torch.allclose(silent, token_map[:1] + 1, atol=1e-4)  # nothing read: one soft vector, the adapter's in it


def test_reader_positions_llm_needs_the_soft_reader():
    import pytest

    with pytest.raises(ValueError, match="whisper-decoder-soft"):
        BlspConfig(speech_compression="whisper-decoder", reader_positions="llm")
    with pytest.raises(ValueError, match="reader_positions"):
        BlspConfig(speech_compression="whisper-decoder-soft", reader_positions="bpe")


def test_full_window_reader_attends_to_all_30_seconds_as_whisper_does():
    """In the full window Whisper's decoder reads all 1500 encoder states (Whisper's own decoding
    does; cutting them to the clip's length made it misread "bees" as "these"); trimmed: the clip's."""
    seen = []
    for window in ("full", "trimmed"):
        model = tiny_decoder_model()
        hook = model.whisper_decoder.register_forward_pre_hook(
            lambda m, a, kw: seen.append((window, kw["encoder_hidden_states"].shape[1])), with_kwargs=True)
        model.speech_embeddings(torch.randn(1, 80, 3000), torch.tensor([100]), window=window)
        hook.remove()
    assert {n for w, n in seen if w == "full"} == {1500} and {n for w, n in seen if w == "trimmed"} == {50}
