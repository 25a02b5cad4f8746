"""From a model spec to an engine.

A spec is a registered name (`micro-blsp`, `micro-cascade`, `micro-text`), a local checkpoint
folder, or a Hugging Face Hub repo id. The family comes from the folder's config.json:
- BLSP: `whisper_config` + `llama_config` (the official layout; or the micro layout, whose
  config names bundled components and ships only the adapter);
- LLaSM: `model_type == "llaaa"` (its Whisper audio tower is a separate folder, see `load_llasm`);
- otherwise a plain causal LM, which hears speech through the cascade (Whisper ASR).
The `system` picks how speech reaches the LLM: `blsp`, `cascade` or `text` (LLaSM: `llasm`, its own).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .audio import sha256_bytes as sha256_file  # any file's content hash
from .devices import Placement, placement
from .engine import BlspEngine, CascadeEngine, ChatEngine, TextEngine
from .model.blsp import BlspConfig, BlspModel
from .prompts import get_template
from . import sources

PACKAGE_DIR = Path(__file__).resolve().parent
SYSTEMS = ("blsp", "cascade", "text", "ctc")


@dataclass(frozen=True)
class RegisteredModel:
    system: str
    folder: Path | None  # a BLSP folder (micro layout) or None for the bundled LLM alone
    description: str


REGISTRY: dict[str, RegisteredModel] = {
    "micro-blsp": RegisteredModel("blsp", PACKAGE_DIR / "weights" / "micro-blsp",
                                  "Whisper base encoder + trained adapter + SmolLM2-135M-Instruct (BLSP)"),
    "micro-cascade": RegisteredModel("cascade", None, "Whisper base ASR -> SmolLM2-135M-Instruct (Whisper+LLM)"),
    "micro-text": RegisteredModel("text", None, "known transcript -> SmolLM2-135M-Instruct (Text+LLM)"),
    "micro-ctc": RegisteredModel("ctc", PACKAGE_DIR / "weights" / "micro-blsp",
                                 "micro-blsp's CTC head transcribes -> SmolLM2-135M-Instruct (CTC+LLM)"),
}


def detect_family(config: dict) -> str:
    if "whisper_config" in config and "llama_config" in config:
        return "blsp"
    if config.get("model_type") == "llaaa":
        return "llasm"
    return "llm"


# ---- components ---------------------------------------------------------------------------
def bundled_llm(dtype: torch.dtype = torch.float32):
    """SmolLM2-135M-Instruct from the bundled GGUF: (model, tokenizer)."""
    folder, name = sources.smollm2_gguf()
    return sources.load_gguf_causal_lm(folder, name, dtype=dtype), sources.load_gguf_tokenizer(folder, name)


@dataclass
class WhisperAsr:
    """Bundled Whisper base as a callable: 16 kHz samples -> transcript (greedy, temperature 0).
    Clips up to 30 s take one decoding pass without timestamps, alone or many at once (`batch`:
    the same text either way); longer ones go through `transcribe`, window by window."""

    model: object
    language: str | None
    device: torch.device
    bf16_encoder: bool = False  # the 30 s encoder pass under bf16 autocast (CPUs with fast bf16: ~3x)

    def _options(self):
        import whisper

        return whisper.DecodingOptions(language=self.language, temperature=0.0, without_timestamps=True,
                                       fp16=self.device.type == "cuda")

    def __call__(self, samples) -> str:
        return self.batch([samples])[0]

    def batch(self, clips: list, size: int = 16) -> list[str]:
        import whisper

        out: list[str | None] = [None] * len(clips)
        short = [i for i, s in enumerate(clips) if len(s) <= whisper.audio.N_SAMPLES]
        long = [i for i, s in enumerate(clips) if len(s) > whisper.audio.N_SAMPLES]
        with torch.inference_mode():
            for i in long:
                out[i] = self.model.transcribe(clips[i], language=self.language, temperature=0.0,
                                               fp16=self.device.type == "cuda",
                                               condition_on_previous_text=False)["text"].strip()
            for start in range(0, len(short), size):
                part = short[start: start + size]
                mels = torch.stack([whisper.log_mel_spectrogram(whisper.pad_or_trim(torch.as_tensor(clips[i]).float()),
                                                                self.model.dims.n_mels) for i in part])  # (b, 80, 3000)
                with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16_encoder):
                    states = self.model.encoder(mels.to(self.device))  # (b, 1500, d)
                dtype = torch.float16 if self.device.type == "cuda" else torch.float32
                results = whisper.decode(self.model, states.to(dtype), self._options())  # takes encoder states as is
                for i, r in zip(part, results):
                    out[i] = r.text.strip()
        return [t or "" for t in out]


def whisper_asr(device: torch.device, language: str | None = None) -> WhisperAsr:
    """The bundled Whisper base ASR (language: BLSP_ASR_LANGUAGE, default English)."""
    import whisper

    from .devices import fast_bf16

    model = whisper.load_model(str(sources.whisper_base().openai_checkpoint_path), device=device)
    return WhisperAsr(model, language or os.environ.get("BLSP_ASR_LANGUAGE", "en") or None, device,
                      bf16_encoder=device.type == "cpu" and fast_bf16(device))


def ctc_asr(blsp: BlspModel, extractor, tokenizer):
    """A BLSP model's CTC head as a callable ASR (the paper's CTC+LLM baseline): 16 kHz samples ->
    the greedy CTC transcript over the LLM's own tokens."""
    from .model.ctc import greedy_classes
    from .model.encoder import log_mel

    if getattr(blsp, "ctc", None) is None:
        raise ValueError("this BLSP model has no CTC head (speech_compression is 'none')")
    weight = next(blsp.subsampler.parameters())

    def transcribe(samples) -> str:
        with torch.inference_mode():
            features, frames = log_mel(extractor, samples[: 30 * 16000], blsp.config.encoder_window)
            x, n = blsp.speech_embeddings(features.to(weight.device, weight.dtype), frames.to(weight.device),
                                          compress=False)  # (1, S, d): every adapter frame, none selected
            best = blsp.ctc.logits(x[:, : int(n[0])], blsp.llama_model.get_input_embeddings().weight).argmax(-1)[0]
        return tokenizer.decode([blsp.ctc.token_id(c) for c in greedy_classes(best)]).strip()

    return transcribe


def template_for_tokenizer(tokenizer) -> str:
    """A plain LLM's template, from what its own chat template contains."""
    chat = getattr(tokenizer, "chat_template", None) or ""
    if "<|im_start|>" in chat:
        return "chatml"
    if "[INST]" in chat:
        return "llama2-inst"
    return "blsp"


# ---- BLSP folders -------------------------------------------------------------------------
MICRO_ADAPTER_FILE = "adapter.safetensors"


def micro_config(adapter_inner_dim: int = 512, ctc_vocab_size: int = 0, speech_compression: str = "ctc-soft",
                 ctc_sharpness: float = 4.0) -> dict:
    """The micro layout's config.json (without the adapter digest): bundled encoder and LLM."""
    from transformers import WhisperConfig

    whisper = sources.whisper_base()
    llm_dir = sources.gguf_as_transformers(*sources.smollm2_gguf())
    llm_cfg = json.loads((llm_dir / "config.json").read_text())
    return {
        "whisper_config": WhisperConfig.from_pretrained(whisper.hf_dir).to_dict(), "llama_config": llm_cfg,
        "conv_kernel_sizes": "5,5,5", "adapter_inner_dim": adapter_inner_dim, "prompt_template": "chatml",
        "encoder_window": "trimmed", "speech_compression": speech_compression,
        "ctc_vocab_size": ctc_vocab_size, "ctc_sharpness": ctc_sharpness,
        "components": {"whisper": "bundled:whisper-base", "llm": "bundled:smollm2-135m-instruct",
                       "adapter": {"file": MICRO_ADAPTER_FILE, "sha256": None}},
    }


def assemble_micro(cfg: dict, place: Placement, adapter_state: dict | None = None):
    """Bundled Whisper base encoder + bundled SmolLM2 + an adapter (fresh when `adapter_state` is None)."""
    from transformers import WhisperFeatureExtractor

    whisper = sources.whisper_base()
    llm, tokenizer = bundled_llm(place.dtype)
    config = BlspConfig(**{k: v for k, v in cfg.items() if k != "components"})
    # Built for real, not on the meta device: non-persistent buffers (rotary frequencies) are
    # computed in __init__ and are in no file.
    model = BlspModel(config)
    state = {f"llama_model.{k}": v for k, v in llm.state_dict().items()}
    state.update({f"whisper_model.{k}": v for k, v in _whisper_encoder_state(whisper.hf_dir).items()})
    if adapter_state is not None:
        state.update(adapter_state)
    model.load_state_dict(state, strict=adapter_state is not None)
    model.llama_model.tie_weights()
    extractor = WhisperFeatureExtractor.from_pretrained(whisper.hf_dir)
    return model.to(place.device, place.dtype), tokenizer, extractor


def load_micro_blsp(folder: Path, place: Placement) -> tuple[BlspModel, object, object, str]:
    """The micro layout: config.json names bundled components; adapter.safetensors holds the rest.
    Every part is sha256-checked (the bundled ones by `sources`, the adapter here)."""
    from safetensors.torch import load_file

    cfg = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else None
    adapter_file = folder / (cfg["components"]["adapter"]["file"] if cfg else MICRO_ADAPTER_FILE)
    if cfg is None or not adapter_file.is_file():
        raise sources.WeightsError(f"{folder.name}: the trained adapter ({adapter_file.name}) is not there yet; "
                                   f"train it (python -m blsp_demo.train.micro run) or use micro-cascade.")
    digest = sha256_file(adapter_file)
    if digest != cfg["components"]["adapter"]["sha256"]:
        raise sources.WeightsError(f"{adapter_file} is damaged: sha256 {digest[:12]}... does not match config.json")
    model, tokenizer, extractor = assemble_micro(cfg, place, load_file(str(adapter_file)))
    return model, tokenizer, extractor, f"{folder.name}@{digest[:12]}"


def _whisper_encoder_state(hf_dir: Path) -> dict:
    from safetensors.torch import load_file

    prefix = "model.encoder."
    return {k[len(prefix):]: v.float() for k, v in load_file(str(hf_dir / "model.safetensors")).items()
            if k.startswith(prefix)}


def load_official_blsp(folder: Path, place: Placement):
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    model = BlspModel.from_pretrained(folder, dtype=place.dtype).to(place.device)
    return model, AutoTokenizer.from_pretrained(folder), WhisperFeatureExtractor.from_pretrained(folder)


def load_blsp_folder(folder: Path, place: Placement):
    cfg = json.loads((folder / "config.json").read_text())
    if "components" in cfg:
        return load_micro_blsp(folder, place)
    model, tok, fx = load_official_blsp(folder, place)
    return model, tok, fx, folder.name


# ---- LLaSM folders ------------------------------------------------------------------------
LLASM_AUDIO_TOWER_ENV = "LLASM_AUDIO_TOWER"


def llasm_audio_tower_folder(config: dict, audio_tower: str | None = None) -> Path:
    """Where the Whisper tower is: `audio_tower` (a folder or Hub id), else $LLASM_AUDIO_TOWER, else
    the checkpoint's own `mm_audio_tower` when that is a folder here (the releases name the path
    on their training machines)."""
    spec = audio_tower or os.environ.get(LLASM_AUDIO_TOWER_ENV)
    if spec:
        return sources.resolve_checkpoint(spec)
    named = config.get("mm_audio_tower")
    if named and Path(named).expanduser().is_dir():
        return Path(named).expanduser()
    raise sources.WeightsError(
        f"This LLaSM checkpoint's audio tower (mm_audio_tower={named!r}) is not a folder here. Pass the "
        f"Whisper model it was trained with (openai/whisper-large-v2 for the released LLaSM models): "
        f"load_engine(..., audio_tower=FOLDER_OR_HUB_ID), or set {LLASM_AUDIO_TOWER_ENV}=FOLDER_OR_HUB_ID.")


def llasm_template(folder: Path, config: dict) -> str:
    """LLaSM-Baichuan's tokenizer is Baichuan's; LLaSM-Cllama2 (and any other) uses Llama-2 [INST]."""
    if config.get("prompt_template"):
        return config["prompt_template"]
    tok_cfg = folder / "tokenizer_config.json"
    tok_class = json.loads(tok_cfg.read_text()).get("tokenizer_class", "") if tok_cfg.is_file() else ""
    return "baichuan" if "Baichuan" in (tok_class or "") else "llasm-llama2"


def llasm_tokenizer(folder: Path, template: str):
    """The checkpoint's tokenizer with LLaSM's three audio tokens (added as the official code does;
    nothing changes when the folder already holds them). Baichuan's own tokenizer class is remote
    code: its sentencepiece model is read as a Llama tokenizer instead."""
    from transformers import AutoTokenizer, LlamaTokenizer

    from .model.llasm import AUDIO_TOKENS

    tok = (LlamaTokenizer if template == "baichuan" else AutoTokenizer).from_pretrained(folder)
    tok.add_tokens([AUDIO_TOKENS[0]], special_tokens=True)
    tok.add_tokens(list(AUDIO_TOKENS[1:]), special_tokens=True)
    return tok


def load_llasm(folder: Path, place: Placement, audio_tower: str | None = None, template: str | None = None):
    """A LLaSM folder -> (LlasmForCausalLM, tokenizer, AudioTower, template name, revision)."""
    from .model.llasm import AUDIO_TOKENS, AudioTower, LlasmForCausalLM

    config = json.loads((folder / "config.json").read_text())
    tower_dir = llasm_audio_tower_folder(config, audio_tower)
    template = template or llasm_template(folder, config)
    model, info = LlasmForCausalLM.from_pretrained(folder, dtype=place.dtype, output_loading_info=True)
    bad = {k: sorted(v)[:5] for k, v in info.items() if k != "error_msgs" and v}
    if bad:
        raise sources.WeightsError(f"{folder} does not hold a LLaSM (Llama-layout) checkpoint: {bad}")
    tok = llasm_tokenizer(folder, template)
    top = max(tok.convert_tokens_to_ids(list(AUDIO_TOKENS)))
    if top >= model.config.vocab_size:
        raise sources.WeightsError(f"{folder}: the tokenizer's audio tokens reach id {top}, beyond the model's "
                                   f"{model.config.vocab_size} embeddings; is this the matching tokenizer?")
    tower = AudioTower.from_pretrained(tower_dir, model.config.audio_token_len, place.dtype, place.device)
    if tower.width != model.config.mm_hidden_size:
        raise sources.WeightsError(f"the audio tower {tower_dir} is {tower.width} wide; this LLaSM checkpoint's "
                                   f"projector takes {model.config.mm_hidden_size} (mm_hidden_size)")
    return model.to(place.device), tok, tower, template, f"{folder.name}+{tower_dir.name}"


# ---- engines ------------------------------------------------------------------------------
def build_engine(model_id: str, system: str, place: Placement, *, blsp=None, llm=None, tokenizer=None,
                 template: str = "chatml", extractor=None, revision: str = "", **kw) -> ChatEngine:
    tpl = get_template(template)
    common = dict(model_id=model_id, revision=revision, device=place.device, **kw)
    if system == "blsp":
        return BlspEngine(blsp, tokenizer, extractor, template=tpl, **common)
    llm = llm if llm is not None else blsp.llama_model
    if system == "cascade":
        return CascadeEngine(llm, tokenizer, tpl, whisper_asr(place.device), **common)
    if system == "text":
        return TextEngine(llm, tokenizer, tpl, **common)
    if system == "ctc":
        return CascadeEngine(llm, tokenizer, tpl, ctc_asr(blsp, extractor, tokenizer), **common)
    raise ValueError(f"unknown system {system!r}; choose from {SYSTEMS}")


def load_engine(spec: str, system: str | None = None, *, device: str | None = None,
                dtype: str | None = None, revision: str | None = None, **kw) -> ChatEngine:
    """A ready engine for a model spec (see the module docstring)."""
    place = placement(device, dtype)
    if spec in REGISTRY:
        entry = REGISTRY[spec]
        system = system or entry.system
        if entry.folder is not None:
            model, tok, fx, mid = load_micro_blsp(entry.folder, place)
            return build_engine(spec if system == entry.system else f"{spec}:{system}", system, place, blsp=model,
                                tokenizer=tok, extractor=fx, template=model.config.prompt_template,
                                revision=mid, **kw)
        llm, tok = bundled_llm(place.dtype)
        return build_engine(spec, system, place, llm=llm.to(place.device), tokenizer=tok, template="chatml",
                            revision="smollm2-135m-instruct-q4_1", **kw)
    folder = sources.resolve_checkpoint(spec, revision)
    config = json.loads((folder / "config.json").read_text())
    family = detect_family(config)
    if family == "blsp":
        model, tok, fx, mid = load_blsp_folder(folder, place)
        return build_engine(spec, system or "blsp", place, blsp=model, tokenizer=tok, extractor=fx,
                            template=getattr(model.config, "prompt_template", "blsp"), revision=mid, **kw)
    if family == "llasm":
        if system not in (None, "llasm"):
            raise ValueError(f"{spec} is a LLaSM checkpoint: speech reaches it through its own audio tower "
                             f"(system 'llasm'), not {system!r}")
        from .llasm_engine import LlasmEngine

        model, tok, tower, tpl, mid = load_llasm(folder, place, kw.pop("audio_tower", None), kw.pop("template", None))
        return LlasmEngine(model, tok, tower, template=get_template(tpl), model_id=spec, revision=mid,
                           device=place.device, **kw)
    from transformers import AutoModelForCausalLM, AutoTokenizer

    llm = AutoModelForCausalLM.from_pretrained(folder, dtype=place.dtype).to(place.device)
    tok = AutoTokenizer.from_pretrained(folder)
    if system == "blsp":
        raise ValueError(f"{spec} is a plain language model: it has no speech adapter (use cascade or text)")
    return build_engine(spec, system or "cascade", place, llm=llm, tokenizer=tok,
                        template=template_for_tokenizer(tok), revision=revision or "", **kw)
