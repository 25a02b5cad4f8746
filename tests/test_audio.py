"""blsp_demo.audio: every input is made here (numpy + soundfile, ffmpeg, espeak-ng); no fixtures on disk."""

from __future__ import annotations

import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from blsp_demo import audio
from blsp_demo.files import content_sha256
from blsp_demo.audio import (
    N_CHUNK_SAMPLES,
    SAMPLE_RATE,
    AudioError,
    AudioInfo,
    AudioLimits,
    decode,
    duration_s,
    load_audio,
    probe,
    split_windows,
    validate,
)

TONE_HZ = 440.0


# ---------------------------------------------------------------------------------------------
# input makers and checks


def sine(rate: int, seconds: float = 1.0, hz: float = TONE_HZ, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(round(rate * seconds))) / rate
    return amplitude * np.sin(2 * np.pi * hz * t)


def write_wav(path: Path, samples: np.ndarray, rate: int, subtype: str = "PCM_16") -> Path:
    sf.write(path, samples, rate, subtype=subtype)
    return path


def ffmpeg(*args: str, stdout=None) -> bytes:
    """Run ffmpeg quietly; return what it wrote to stdout (when asked to write to pipe:1)."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-y", *args]
    return subprocess.run(cmd, check=True, stdout=subprocess.PIPE).stdout


def lavfi_sine(rate: int, seconds: float = 1.0) -> list[str]:
    return ["-f", "lavfi", "-i", f"sine=frequency={TONE_HZ:g}:sample_rate={rate}:duration={seconds:g}"]


def dominant_hz(samples: np.ndarray) -> float:
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * SAMPLE_RATE / len(samples)


def assert_one_second_tone(samples: np.ndarray, tolerance_s: float = 0.0002) -> None:
    """~16000 float32 samples whose strongest frequency is the 440 Hz tone."""
    assert samples.dtype == np.float32 and samples.ndim == 1 and samples.flags.c_contiguous
    assert abs(duration_s(samples) - 1.0) <= tolerance_s, len(samples)
    assert abs(dominant_hz(samples) - TONE_HZ) < 2.0
    assert np.isfinite(samples).all() and 0.05 < np.abs(samples).max() <= 1.5


def expect_error(code: str, fn, *args, **kwargs) -> AudioError:
    with pytest.raises(AudioError) as caught:
        fn(*args, **kwargs)
    error = caught.value
    assert error.code == code, (error.code, str(error))
    message = str(error)
    assert message and "Traceback" not in message and "\n" not in message
    assert len(message) < 300
    return error


LOSSY = 0.07  # codec padding (AAC frames, MP3/Opus delay) changes the length a little


# ---------------------------------------------------------------------------------------------
# formats that must decode to 16 kHz mono


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 44100, 48000, 96000])
def test_wav_at_any_rate_becomes_16k(tmp_path, rate):
    path = write_wav(tmp_path / f"tone{rate}.wav", sine(rate), rate)
    assert_one_second_tone(load_audio(path))


@pytest.mark.parametrize("subtype", ["PCM_U8", "PCM_16", "PCM_24", "PCM_32", "FLOAT", "DOUBLE"])
def test_wav_sample_formats(tmp_path, subtype):
    path = write_wav(tmp_path / "tone.wav", sine(44100), 44100, subtype)
    samples = load_audio(path)
    assert_one_second_tone(samples)
    assert abs(np.abs(samples).max() - 0.5) < 0.05  # scaled to [-1, 1], not raw integers


def test_six_channel_wav_is_downmixed(tmp_path):
    path = write_wav(tmp_path / "surround.wav", np.tile(sine(48000)[:, None], (1, 6)), 48000)
    assert sf.info(path).channels == 6
    samples = load_audio(path)
    assert_one_second_tone(samples)
    assert abs(np.abs(samples).max() - 0.5) < 0.01  # mixed down, not summed up


def test_stereo_file_and_gradio_tuple_agree(tmp_path):
    """A microphone take (Gradio tuple) and the same take uploaded as a file give the same samples."""
    left_only = np.stack([sine(44100), np.zeros(44100)], axis=1)
    pcm = (left_only * 32767).astype(np.int16)
    from_file = load_audio(write_wav(tmp_path / "take.wav", pcm, 44100))
    from_tuple = load_audio((44100, pcm))
    assert abs(np.abs(from_file).max() - 0.25) < 0.01  # the mean of the two channels
    np.testing.assert_allclose(from_file, from_tuple, atol=1e-4)


@pytest.mark.parametrize(
    "name, encode",
    [
        ("tone.flac", ["-c:a", "flac"]),
        ("tone.mp3", ["-c:a", "libmp3lame", "-b:a", "64k"]),
        ("tone.ogg", ["-c:a", "libopus", "-b:a", "32k"]),
        ("tone.oga", ["-c:a", "libvorbis"]),
        ("tone.m4a", ["-c:a", "aac", "-b:a", "64k"]),
    ],
)
def test_compressed_files(tmp_path, name, encode):
    path = tmp_path / name
    ffmpeg(*lavfi_sine(44100 if "opus" not in encode else 48000), *encode, str(path))
    assert_one_second_tone(load_audio(path), tolerance_s=LOSSY)


def browser_webm(tmp_path: Path, seconds: float = 1.0) -> Path:
    """Opus in WebM written to a pipe, like MediaRecorder: no duration, no cues."""
    path = tmp_path / "recording.webm"
    path.write_bytes(ffmpeg(*lavfi_sine(48000, seconds), "-c:a", "libopus", "-f", "webm", "pipe:1"))
    return path


def test_browser_webm_opus(tmp_path):
    path = browser_webm(tmp_path)
    assert probe(path).duration_s is None  # streamed WebM does not say how long it is
    assert_one_second_tone(load_audio(path), tolerance_s=LOSSY)


def test_video_with_audio_track(tmp_path):
    path = tmp_path / "clip.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", *lavfi_sine(44100),
           "-c:v", "mpeg4", "-c:a", "aac", "-shortest", str(path))
    assert_one_second_tone(load_audio(path), tolerance_s=LOSSY)


def test_espeak_speech(tmp_path):
    if shutil.which("espeak-ng") is None:
        pytest.skip("espeak-ng is not installed")
    path = tmp_path / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(path), "What is the capital of France?"], check=True)
    assert sf.info(path).samplerate != SAMPLE_RATE  # 22050 Hz: it really is resampled
    samples = load_audio(path)
    assert 1.0 < duration_s(samples) < 5.0 and np.abs(samples).max() > 0.1


def test_file_name_with_spaces_and_non_ascii(tmp_path):
    folder = tmp_path / "mes enregistrements"
    folder.mkdir()
    path = write_wav(folder / "question ü 日本語 – take 2.wav", sine(48000), 48000)
    assert_one_second_tone(load_audio(path))
    assert_one_second_tone(load_audio(str(path)))


def test_file_name_that_looks_like_an_option_or_protocol(tmp_path):
    path = write_wav(tmp_path / "-i http:x.wav", sine(16000), 16000)
    assert_one_second_tone(load_audio(path))


# ---------------------------------------------------------------------------------------------
# other kinds of source


def test_bytes_input(tmp_path):
    path = tmp_path / "tone.flac"
    ffmpeg(*lavfi_sine(48000), str(path))
    assert_one_second_tone(load_audio(path.read_bytes()))
    assert_one_second_tone(load_audio(browser_webm(tmp_path).read_bytes()), tolerance_s=LOSSY)


def test_m4a_bytes_need_a_seekable_file(tmp_path):
    # moov is written at the end: decoding from bytes must still find it
    path = tmp_path / "long.m4a"
    ffmpeg(*lavfi_sine(44100, seconds=20), "-c:a", "aac", str(path))
    assert abs(duration_s(decode(path.read_bytes())) - 20.0) < 0.1


def test_gradio_tuple_int16_stereo_44k():
    stereo = (np.tile(sine(44100)[:, None], (1, 2)) * 32767).astype(np.int16)  # (n, channels)
    assert_one_second_tone(load_audio((44100, stereo)))


def test_gradio_tuple_at_16k_is_only_scaled():
    pcm = (sine(16000) * 32767).astype(np.int16)
    samples = load_audio((16000, pcm))
    np.testing.assert_array_equal(samples, pcm.astype(np.float32) / 32768)


def test_gradio_tuple_float_48k():
    assert_one_second_tone(load_audio((48000, sine(48000).astype(np.float32))))


def test_array_input_is_made_float32_contiguous():
    samples = load_audio(sine(16000)[::1].astype(np.float64))
    assert samples.dtype == np.float32 and samples.flags.c_contiguous
    strided = np.repeat(sine(16000).astype(np.float32), 2)[::2]
    assert load_audio(strided).flags.c_contiguous


def test_array_input_must_be_mono():
    with pytest.raises(ValueError, match="1-D"):
        load_audio(np.zeros((16000, 2), np.float32))


# ---------------------------------------------------------------------------------------------
# audio that must be refused, each with its code


def test_missing_file(tmp_path):
    error = expect_error("not_found", load_audio, tmp_path / "nope.wav")
    assert "nope.wav" in str(error)
    expect_error("not_found", load_audio, tmp_path)  # a folder is not an audio file


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    expect_error("empty", load_audio, path)
    expect_error("empty", load_audio, b"")


def test_wav_with_header_and_no_samples(tmp_path):
    expect_error("empty", load_audio, write_wav(tmp_path / "none.wav", np.zeros(0), 16000))


def test_wav_with_one_sample(tmp_path):
    error = expect_error("too_short", load_audio, write_wav(tmp_path / "one.wav", np.array([0.5]), 16000))
    assert "0.1 s" in str(error) or "0.10 s" in str(error)


def test_digital_silence(tmp_path):
    error = expect_error("silent", load_audio, write_wav(tmp_path / "quiet.wav", np.zeros(16000), 16000))
    assert "-inf dBFS" in str(error) and "microphone" in str(error)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("rate", [16000, 44100])
def test_float_wav_with_nonfinite_samples(tmp_path, bad, rate):
    samples = sine(rate)
    samples[rate // 2] = bad
    path = write_wav(tmp_path / "broken.wav", samples, rate, "FLOAT")
    error = expect_error("nonfinite", load_audio, path)
    assert "1 invalid sample " in str(error)  # counted before resampling spreads it
    expect_error("nonfinite", load_audio, path.read_bytes())


def test_nonfinite_arrays():
    samples = sine(16000).astype(np.float32)
    samples[100] = np.nan
    expect_error("nonfinite", load_audio, samples)
    expect_error("nonfinite", load_audio, (44100, np.concatenate([samples, samples, samples])))


def test_corrupt_header(tmp_path):
    good = write_wav(tmp_path / "good.wav", sine(16000), 16000).read_bytes()
    path = tmp_path / "corrupt.wav"
    path.write_bytes(b"\0" * 44 + good[44:])
    error = expect_error("unreadable", load_audio, path)
    assert "not a recognised audio" in str(error) and str(path) not in str(error)


def test_truncated_inside_the_header(tmp_path):
    good = write_wav(tmp_path / "good.wav", sine(16000), 16000).read_bytes()
    path = tmp_path / "cut.wav"
    path.write_bytes(good[:30])
    expect_error("unreadable", load_audio, path)


def test_truncated_wav_keeps_what_is_there(tmp_path):
    good = write_wav(tmp_path / "good.wav", sine(16000), 16000).read_bytes()
    path = tmp_path / "half.wav"
    path.write_bytes(good[: 44 + 16000])  # header + 8000 int16 samples of the 16000 it announces
    assert abs(duration_s(load_audio(path)) - 0.5) < 0.01


def test_truncated_m4a(tmp_path):
    path = tmp_path / "cut.m4a"
    ffmpeg(*lavfi_sine(44100), "-c:a", "aac", str(path))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])  # loses the moov index
    error = expect_error("unreadable", load_audio, path)
    assert "incomplete" in str(error)


def test_text_file_named_wav(tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("this is not audio\n" * 20)
    expect_error("unreadable", load_audio, path)


def test_png_named_mp3(tmp_path):
    png = tmp_path / "picture.png"
    ffmpeg("-f", "lavfi", "-i", "color=red:size=8x8", "-frames:v", "1", str(png))
    path = png.rename(tmp_path / "picture.mp3")
    assert path.read_bytes()[:4] == b"\x89PNG"
    error = expect_error("unreadable", load_audio, path)
    assert "no audio track" in str(error)


def test_video_without_audio_track(tmp_path):
    path = tmp_path / "silent_film.mp4"
    ffmpeg("-f", "lavfi", "-i", "testsrc=size=64x48:rate=10:duration=1", "-c:v", "mpeg4", str(path))
    expect_error("unreadable", load_audio, path)
    expect_error("unreadable", probe, path)


def test_too_long_for_custom_limit(tmp_path):
    path = write_wav(tmp_path / "three.wav", sine(16000, seconds=3.0), 16000)
    error = expect_error("too_long", load_audio, path, AudioLimits(max_seconds=2.0))
    assert "3.0 s" in str(error) and "2.0 s" in str(error)
    assert_one_second_tone(load_audio(path, AudioLimits(max_seconds=3.0))[:SAMPLE_RATE])


def test_ten_minute_file_exceeds_default_limit(tmp_path):
    """5 minutes of silence then 5 of tone: refused by the 5-minute default, naming the real length
    (ffmpeg only decodes a second past the limit, ffprobe gives the rest)."""
    path = tmp_path / "lecture.wav"  # 8 kHz WAV: the cheapest 10 minutes to make (about 0.5 s)
    ffmpeg(*lavfi_sine(8000, seconds=600), "-af", "volume='if(lt(t,300),0,1)':eval=frame", str(path))
    error = expect_error("too_long", load_audio, path)
    assert "10:00" in str(error) and "5:00" in str(error)
    assert AudioLimits().max_seconds == 300.0


# ---------------------------------------------------------------------------------------------
# validate, windows, helpers


def test_validate_messages():
    expect_error("empty", validate, np.zeros(0, np.float32))
    error = expect_error("too_short", validate, np.ones(1, np.float32))
    assert "0.0625 ms" in str(error)
    error = expect_error("silent", validate, np.full(SAMPLE_RATE, 1e-5, np.float32))
    assert "-100 dBFS" in str(error)
    three_seconds = np.ones(SAMPLE_RATE * 3, np.float32)
    error = expect_error("too_long", validate, three_seconds, AudioLimits(max_seconds=2))
    assert "3.0 s" in str(error) and "2.0 s" in str(error)
    assert validate(np.full(SAMPLE_RATE, 1e-3, np.float32)).dtype == np.float32


def test_split_windows_keeps_every_sample():
    samples = np.arange(65 * SAMPLE_RATE, dtype=np.float32)
    windows = split_windows(samples)
    assert [duration_s(w) for w in windows] == [30.0, 30.0, 5.0]
    np.testing.assert_array_equal(np.concatenate(windows), samples)
    assert len(split_windows(samples[: 2 * N_CHUNK_SAMPLES])) == 2
    assert split_windows(samples[:0]) == []
    assert [len(w) for w in split_windows(samples[:25], seconds=10 / SAMPLE_RATE)] == [10, 10, 5]


def test_duration_and_hash(tmp_path):
    assert duration_s(np.zeros(24000)) == 1.5
    path = tmp_path / "blob.bin"
    path.write_bytes(b"abc")
    digest = "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert content_sha256(path) == content_sha256(str(path)) == content_sha256(b"abc") == digest


def test_probe(tmp_path):
    path = tmp_path / "stereo.flac"
    ffmpeg(*lavfi_sine(48000), "-ac", "2", str(path))
    info = probe(path)
    assert info == AudioInfo(duration_s=pytest.approx(1.0, abs=0.01), source_sample_rate=48000,
                             source_channels=2, codec="flac")
    text = tmp_path / "notes.txt"
    text.write_text("not audio")
    expect_error("unreadable", probe, text)
    expect_error("not_found", probe, tmp_path / "missing.flac")


def test_audio_error_codes_and_pickling():
    error = AudioError("silent", "The audio is silent.")
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (copy.code, str(copy)) == ("silent", "The audio is silent.")
    with pytest.raises(ValueError, match="unknown AudioError code"):
        AudioError("bad", "x")


def test_missing_ffmpeg_is_an_installation_error(monkeypatch, tmp_path):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(RuntimeError, match="ffmpeg is not installed"):
        audio._ffmpeg_resample(np.zeros(10, np.float32), 8000)
