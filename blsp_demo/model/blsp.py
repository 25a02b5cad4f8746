"""BLSP: frozen Whisper encoder -> trained adapter -> frozen causal LM.

`BlspConfig` / `BlspModel` keep the official release's config fields and state-dict names
(`whisper_model.*`, `llama_model.*`, `subsampler.*`, `adapter.*`, `speech_ln.*`), so
`BlspModel.from_pretrained(<official folder>)` loads with no missing or unexpected keys. The
LLM may be any causal LM: its config dict keeps its own `model_type` (Llama by default, as in
the official release).

Speech enters the LLM like images enter LLaVA: the token sequence carries one placeholder id
(`SPEECH_PLACEHOLDER`) per speech frame, and the frames are scattered into those positions.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, PretrainedConfig, PreTrainedModel, WhisperConfig
from transformers.models.whisper.modeling_whisper import WhisperDecoder, WhisperEncoder

from blsp_demo.model.adapter import Adapter, Conv1dSubsampler, lengths_to_mask
from blsp_demo.model.ctc import CtcSelector
from blsp_demo.model.encoder import encode_features
from blsp_demo.model.tokens import SPEECH_PLACEHOLDER
from blsp_demo.model.whisper_reader import DecoderAdapter, greedy_states, llm_positions, soft_tokens, whisper_pieces

COMPRESSIONS = ("none", "ctc", "ctc-soft", "whisper-decoder", "whisper-decoder-soft")
READER_POSITIONS = ("whisper", "llm")  # whisper-decoder-soft: one speech position per Whisper / per LLM token


def llm_config_from_dict(d: dict) -> PretrainedConfig:
    """Any causal-LM config from its dict; official checkpoints hold a Llama config."""
    d = dict(d)
    model_type = d.pop("model_type", None) or "llama"
    return AutoConfig.for_model(model_type, **d)


def embed_with_placeholders(embedding: nn.Module, input_ids: torch.Tensor,
                            frames: torch.Tensor | None) -> torch.Tensor:
    """Token embeddings (B, L, d) with the `SPEECH_PLACEHOLDER` positions filled by `frames` (N, d)
    in row-major order; a ValueError when placeholders and frames differ in number."""
    is_speech = input_ids == SPEECH_PLACEHOLDER
    n_slots = int(is_speech.sum())
    n_frames = 0 if frames is None else frames.shape[0]
    if n_slots != n_frames:
        raise ValueError(f"{n_slots} speech placeholders but {n_frames} speech frames")
    embeds = embedding(input_ids.masked_fill(is_speech, 0))  # (B, L, d_llm)
    if n_slots:
        mask = is_speech.unsqueeze(-1).expand_as(embeds)
        embeds = embeds.masked_scatter(mask, frames.to(embeds.dtype))
    return embeds


class BlspConfig(PretrainedConfig):
    model_type = "blsp"

    def __init__(
        self,
        whisper_config: dict | None = None,
        llama_config: dict | None = None,
        conv_kernel_sizes: str = "5,5,5",
        adapter_inner_dim: int = 512,
        prompt_template: str = "blsp",  # not in official configs: they use the blsp template
        encoder_window: str = "full",  # official checkpoints were trained on 30 s windows
        speech_compression: str = "none",  # "ctc" / "ctc-soft": frames a CTC head reads as tokens (model/ctc.py);
        # "whisper-decoder": Whisper's own decoder states, one per greedy token (model/whisper_reader.py)
        ctc_vocab_size: int = 0,  # token ids the CTC head scores (0: the whole embedding table)
        ctc_sharpness: float = 1.0,  # ctc-soft: logits x this before the softmax over tokens
        reader_positions: str = "whisper",  # whisper-decoder-soft: "llm" re-tokenizes Whisper's reading (llm_positions)
        reader_sharpness: float = 1.0,  # whisper-decoder-soft: Whisper's logits x this before its softmax
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.whisper_config = WhisperConfig(**(whisper_config or {})).to_dict()
        self.llama_config = llm_config_from_dict(llama_config or {}).to_dict()
        self.conv_kernel_sizes = conv_kernel_sizes
        self.adapter_inner_dim = adapter_inner_dim
        self.prompt_template = prompt_template
        self.encoder_window = encoder_window
        if speech_compression not in COMPRESSIONS:
            raise ValueError(f"speech_compression must be one of {COMPRESSIONS}, not {speech_compression!r}")
        self.speech_compression = speech_compression
        self.ctc_vocab_size = ctc_vocab_size
        self.ctc_sharpness = ctc_sharpness
        if reader_positions not in READER_POSITIONS:
            raise ValueError(f"reader_positions must be one of {READER_POSITIONS}, not {reader_positions!r}")
        if reader_positions == "llm" and speech_compression != "whisper-decoder-soft":
            raise ValueError("reader_positions 'llm' needs speech_compression 'whisper-decoder-soft'")
        self.reader_positions = reader_positions
        self.reader_sharpness = reader_sharpness

    @property
    def kernel_sizes(self) -> list[int]:
        return [int(k) for k in str(self.conv_kernel_sizes).split(",")]


class BlspModel(PreTrainedModel):
    config_class = BlspConfig
    base_model_prefix = "blsp"
    main_input_name = "input_ids"
    _supports_sdpa = True

    def __init__(self, config: BlspConfig):
        super().__init__(config)
        whisper_config = WhisperConfig(**config.whisper_config)
        llm_config = llm_config_from_dict(config.llama_config)
        self.whisper_model = WhisperEncoder(whisper_config)
        self.llama_model = AutoModelForCausalLM.from_config(llm_config)
        d_enc, d_llm = whisper_config.d_model, llm_config.hidden_size
        self.reads_decoder = config.speech_compression.startswith("whisper-decoder")
        # whisper-decoder-soft: each state also becomes the expected LLM embedding of the Whisper
        # token it chose (softmax over Whisper's own table x `token_map`, set at assembly).
        self.token_map = None
        self.llm_tokenize = None  # reader_positions "llm": text -> (LLM ids, character spans), set at assembly
        if self.reads_decoder:  # DiVA-style: Whisper's decoder reads the speech, a small map adapts it
            self.whisper_decoder = WhisperDecoder(whisper_config)
            self.decoder_adapter = DecoderAdapter(whisper_config.d_model, d_llm, config.adapter_inner_dim)
            self.subsampler = self.adapter = self.speech_ln = self.ctc = None
        else:
            self.subsampler = Conv1dSubsampler(d_enc, 2 * d_enc, d_llm, config.kernel_sizes)
            self.adapter = Adapter(d_llm, config.adapter_inner_dim)
            self.speech_ln = nn.LayerNorm(d_llm, eps=1e-5)
            self.ctc = CtcSelector(d_llm, config.ctc_vocab_size) if config.speech_compression != "none" else None
        self.post_init()

    def _init_weights(self, module):
        # Only the adapter's own modules start fresh; the encoder and LLM are always loaded.
        if isinstance(module, nn.LayerNorm) and module is self.speech_ln:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)

    # ---- speech path -------------------------------------------------------------------
    def adapt(self, encoded: torch.Tensor, lengths: torch.Tensor,
              compress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, d_enc) -> speech embeddings (B, T/8, d_llm) and their lengths
        (with CTC selection: (B, S', d_llm), S' about one frame per spoken token)."""
        if self.reads_decoder:  # `encoded`: Whisper decoder states, one per token (B, n, d_dec)
            out = self.decoder_adapter(encoded)
            if self.token_map is not None:
                out = out + soft_tokens(encoded, self.whisper_decoder.embed_tokens.weight, self.token_map,
                                        self.config.reader_sharpness).to(out.dtype)
            return out, lengths
        x = self.subsampler(encoded)  # (B, T/8, d_llm)
        x = self.speech_ln(self.adapter(x))
        out_len = self.subsampler.output_lengths(lengths)
        return self.select(x, out_len) if compress else (x, out_len)

    def select(self, frames: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The configured CTC frame selection (identity without a CTC head): (B, S, d) -> (B, S', d)."""
        if self.ctc is None:
            return frames, lengths
        return self.ctc.compress(frames, lengths, self.llama_model.get_input_embeddings().weight,
                                 soft=self.config.speech_compression == "ctc-soft",
                                 sharpness=self.config.ctc_sharpness)

    def speech_embeddings(self, features: torch.Tensor, frames: torch.Tensor, window: str | None = None,
                          compress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Log-mel features (B, n_mels, 3000) with real-frame counts (B,) -> (B, S, d_llm), (B,)."""
        window = window or self.config.encoder_window
        if self.reads_decoder and window == "full":  # Whisper's decoder reads all 30 s of states, as in Whisper
            encoded = self.whisper_model(features).last_hidden_state  # (B, 1500, d_enc)
            lengths = torch.full_like(frames, encoded.shape[1])
        else:
            encoded, lengths = encode_features(self.whisper_model, features, frames, window)
        if self.reads_decoder and self.config.reader_positions == "llm":
            return self.read_llm_positions(encoded, lengths)
        if self.reads_decoder:
            encoded, lengths = self.read_tokens(encoded, lengths)
        return self.adapt(encoded, lengths, compress)

    def read_llm_positions(self, encoded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, d_enc) -> one vector per LLM token of Whisper's greedy reading (B, m, d_llm), (B,)."""
        if self.token_map is None or self.llm_tokenize is None:
            raise ValueError("reader_positions 'llm' needs the token map and the LLM tokenizer (set at assembly)")
        table = self.whisper_decoder.embed_tokens.weight
        rows = []
        for b, n in enumerate(lengths):
            tokens, states = greedy_states(self.whisper_decoder, encoded[b: b + 1, : int(n)])  # (n_tok,), (n_tok, d_dec)
            rows.append(llm_positions(tokens, states, whisper_pieces(tokens), self.llm_tokenize,
                                      self.llama_model.get_input_embeddings().weight, table, self.token_map,
                                      extra=self.decoder_adapter(states),
                                      sharpness=self.config.reader_sharpness))  # (m, d_llm)
        out_len = torch.tensor([r.shape[0] for r in rows], device=lengths.device)
        dtype = self.llama_model.get_input_embeddings().weight.dtype
        return torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(dtype), out_len

    def read_tokens(self, encoded: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoder states (B, T, d_enc) -> Whisper's greedy decoder states (B, n, d_dec), (B,)."""
        rows = [greedy_states(self.whisper_decoder, encoded[b: b + 1, : int(n)])[1] for b, n in enumerate(lengths)]
        out_len = torch.tensor([r.shape[0] for r in rows], device=lengths.device)
        padded = torch.nn.utils.rnn.pad_sequence(rows, batch_first=True).to(encoded.dtype)
        return padded, out_len

    # ---- LLM inputs ----------------------------------------------------------------------
    def embed_with_speech(self, input_ids: torch.Tensor, speech_frames: torch.Tensor | None) -> torch.Tensor:
        """Token embeddings with placeholder positions filled by `speech_frames` (N, d_llm) in order."""
        return embed_with_placeholders(self.llama_model.get_input_embeddings(), input_ids, speech_frames)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        speech_features: torch.Tensor | None = None,
        speech_frames: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **llm_kwargs,
    ):
        """Placeholders in `input_ids` take the speech of each row in order; returns the LLM output
        (with `.loss` over positions where `labels != -100` when labels are given)."""
        frames = None
        if speech_features is not None:
            speech, lengths = self.speech_embeddings(speech_features, speech_frames)
            frames = speech[lengths_to_mask(lengths, speech.shape[1])]  # (sum S_b, d_llm)
            per_row = (input_ids == SPEECH_PLACEHOLDER).sum(-1)
            if not torch.equal(per_row.cpu(), lengths.cpu()):
                raise ValueError(f"speech placeholders per row {per_row.tolist()} != frames {lengths.tolist()}")
        embeds = self.embed_with_speech(input_ids, frames)
        return self.llama_model(inputs_embeds=embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)
