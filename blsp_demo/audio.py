"""Audio in: decode anything ffmpeg reads to 16 kHz mono float32, and reject what the model can't use.

Every problem with the audio a person supplied is raised as an `AudioError` whose message is meant for
that person (what was wrong, what to do); problems with the installation (no ffmpeg) are not.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Union

import numpy as np

from blsp_demo.vocab import AUDIO_ERROR_CODES
import soundfile as sf

SAMPLE_RATE = 16000  # Whisper's input rate
CHUNK_SECONDS = 30  # Whisper's encoder sees 30-second windows
N_CHUNK_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in a 30-second window

DEFAULT_MAX_SECONDS = 300.0  # 5 minutes: 10 encoder windows, a long spoken turn
_OVERRUN_SECONDS = 1.0  # decode this much past the limit, so "too long" is seen without decoding it all
_READ_BLOCK_FRAMES = 1 << 16  # frames per block when scanning a float file for NaN/inf
_MAX_REASON_CHARS = 160
_FLOAT_CAPABLE_MAGIC = (b"RIFF", b"RIFX", b"RF64", b"BW64", b"riff", b"FORM", b"caff")  # WAV, W64, AIFF, CAF

PathLike = Union[str, "os.PathLike[str]"]
Source = Union[PathLike, bytes, np.ndarray, "tuple[int, np.ndarray]"]


class AudioError(ValueError):
    """Audio that cannot be used, with a message for the person who supplied it.

    `code` says which check failed, so callers can branch without parsing the message.
    """

    CODES = AUDIO_ERROR_CODES

    def __init__(self, code: str, message: str):
        if code not in self.CODES:
            raise ValueError(f"unknown AudioError code {code!r}; expected one of {self.CODES}")
        super().__init__(message)
        self.code = code
        self.message = message

    def __reduce__(self):  # the default pickling would call AudioError(message) and fail
        return (type(self), (self.code, self.message))


@dataclass(frozen=True)
class AudioLimits:
    max_seconds: float = DEFAULT_MAX_SECONDS
    min_seconds: float = 0.1  # 100 ms: shorter than any spoken word
    silence_peak: float = 1e-4  # -80 dBFS: below this absolute peak the audio is digital silence


@dataclass(frozen=True)
class AudioInfo:
    """What the source file was, for logs; `duration_s` is None when the container does not record
    it (WebM from a browser's MediaRecorder)."""

    duration_s: float | None
    source_sample_rate: int
    source_channels: int
    codec: str


def load_audio(source: Source, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Any supported `source` -> validated 16 kHz mono float32 samples, or an `AudioError`.

    `source` is a path, the bytes of a file, a 1-D array already at 16 kHz, or the
    `(sample_rate, array)` tuple Gradio's numpy audio gives (int or float, `(n,)` or `(n, channels)`).
    """
    if isinstance(source, np.ndarray):
        samples = _to_float32(source)
        if samples.ndim != 1:
            raise ValueError(f"a bare array must be 1-D 16 kHz mono, got shape {samples.shape}")
    elif isinstance(source, tuple):
        samples = from_rate_and_array(*source)
    else:
        samples = _decode_with_limit(source, limits)
    return validate(samples, limits)


def decode(source: PathLike | bytes, max_seconds: float | None = None) -> np.ndarray:
    """A file (path or its bytes) -> 16 kHz mono float32, via ffmpeg; at most `max_seconds` of it."""
    with _local_file(source) as path:
        _reject_nonfinite_file(path, max_seconds)
        fast = _read_native(path, max_seconds)
        return fast if fast is not None else _ffmpeg_decode(path, max_seconds)


def _read_native(path, max_seconds: float | None) -> np.ndarray | None:
    """16 kHz mono WAV/FLAC need no resampling: read them with libsndfile directly (about 1 ms
    instead of ~200 ms for an ffmpeg process). Anything else, or any doubt, goes to ffmpeg."""
    import soundfile as sf

    try:
        info = sf.info(str(path))
        if info.samplerate != SAMPLE_RATE or info.channels != 1 or info.format not in ("WAV", "FLAC"):
            return None
        frames = -1 if max_seconds is None else int((max_seconds + 1) * SAMPLE_RATE)
        samples, _ = sf.read(str(path), frames=frames, dtype="float32", always_2d=False)
    except Exception:  # noqa: BLE001 - unreadable here is not unreadable for ffmpeg
        return None
    return np.ascontiguousarray(samples, dtype=np.float32)


def from_rate_and_array(sample_rate: int, array: np.ndarray) -> np.ndarray:
    """Gradio-style `(sample_rate, array)` -> 16 kHz mono float32 (channels averaged, then resampled)."""
    samples = _to_float32(np.asarray(array))
    if samples.ndim == 2:
        samples = samples.mean(axis=1, dtype=np.float32)  # (n, channels) -> (n,)
    if samples.ndim != 1:
        raise ValueError(f"expected an array of shape (n,) or (n, channels), got {samples.shape}")
    # NaN would spread through the resampling filter; name it before it is smeared.
    _reject_nonfinite(samples)
    if int(sample_rate) == SAMPLE_RATE or samples.size == 0:
        return samples
    return _ffmpeg_resample(samples, int(sample_rate))


def validate(samples: np.ndarray, limits: AudioLimits = AudioLimits()) -> np.ndarray:
    """Check decoded 16 kHz mono samples against `limits`; return them as contiguous float32."""
    samples = _to_float32(np.asarray(samples))
    if samples.ndim != 1:
        raise ValueError(f"expected 1-D mono samples, got shape {samples.shape}")
    seconds = duration_s(samples)
    if samples.size == 0:
        raise AudioError("empty", "The audio is empty: nothing was recorded or the file holds no sound. "
                         "Record again or choose another file.")
    if seconds < limits.min_seconds:
        raise AudioError("too_short", f"The audio is only {_format_duration(seconds)} long; at least "
                         f"{_format_duration(limits.min_seconds)} is needed. Record a little longer.")
    if seconds > limits.max_seconds:
        raise too_long_error(seconds, limits)
    _reject_nonfinite(samples)
    peak = float(np.max(np.abs(samples)))
    if peak < limits.silence_peak:
        raise AudioError("silent", f"The audio is silent (peak level {_dbfs(peak)} dBFS): "
                         "nothing to transcribe. Check the microphone.")
    return np.ascontiguousarray(samples, dtype=np.float32)


def too_long_error(seconds: float, limits: AudioLimits) -> AudioError:
    return AudioError("too_long", f"The audio is {_format_duration(seconds)} long; the limit is "
                      f"{_format_duration(limits.max_seconds)}. Trim it or split it into shorter clips.")


def split_windows(samples: np.ndarray, seconds: float = CHUNK_SECONDS) -> list[np.ndarray]:
    """Consecutive windows of `seconds` (views, the last one shorter); concatenated they are `samples`."""
    size = int(round(seconds * SAMPLE_RATE))
    if size <= 0:
        raise ValueError(f"window length must be positive, got {seconds} s")
    return [samples[start:start + size] for start in range(0, len(samples), size)]


def duration_s(samples: np.ndarray) -> float:
    return len(samples) / SAMPLE_RATE


def probe(source: PathLike | bytes) -> AudioInfo:
    """Describe the first audio stream of a file with ffprobe (for logging)."""
    with _local_file(source) as path:
        cmd = ["ffprobe", "-v", "error", "-print_format", "json", "-show_format", "-show_streams",
               "-select_streams", "a:0", _ffmpeg_input(path)]
        result = _run(cmd)
        if result.returncode != 0:
            raise _unreadable(result.stderr, path)
        report = json.loads(result.stdout or b"{}")
    streams = report.get("streams") or []
    if not streams:
        raise _unreadable(b"does not contain any stream", path)
    stream, container = streams[0], report.get("format", {})
    duration = container.get("duration") or stream.get("duration")
    return AudioInfo(
        duration_s=float(duration) if duration not in (None, "N/A") else None,
        source_sample_rate=int(stream.get("sample_rate", 0)),
        source_channels=int(stream.get("channels", 0)),
        codec=str(stream.get("codec_name", "unknown")),
    )


# ---------------------------------------------------------------------------------------------
# helpers


def _decode_with_limit(source: PathLike | bytes, limits: AudioLimits) -> np.ndarray:
    """Decode at most a little past the limit, so an hour-long upload costs seconds, not gigabytes;
    if it is over, ask ffprobe for the real length to put in the message."""
    with _local_file(source) as path:
        samples = decode(path, max_seconds=limits.max_seconds + _OVERRUN_SECONDS)
        if duration_s(samples) > limits.max_seconds:
            raise too_long_error(_full_duration(path, samples), limits)
    return samples


def _full_duration(path: Path, decoded: np.ndarray) -> float:
    with contextlib.suppress(AudioError):
        seconds = probe(path).duration_s
        if seconds is not None and seconds > duration_s(decoded):
            return seconds
    return duration_s(decoded)


@contextlib.contextmanager
def _local_file(source: PathLike | bytes) -> Iterator[Path]:
    """A path to read `source` from: bytes go to a temporary file, because ffmpeg cannot seek in a
    pipe and MP4/M4A keep their index (moov) at the end."""
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise AudioError("empty", "The audio file is empty (0 bytes). "
                             "Record again or choose another file.")
        with tempfile.TemporaryDirectory(prefix="blsp-audio-") as tmp:
            path = Path(tmp) / "input"
            path.write_bytes(source)
            yield path
        return
    path = Path(source)
    if not path.is_file():
        raise AudioError("not_found", f"Audio file not found: {os.fspath(path)!r}. Check the path.")
    if path.stat().st_size == 0:
        raise AudioError("empty", f"The audio file {path.name!r} is empty (0 bytes). "
                         "Record again or choose another file.")
    yield path


def _reject_nonfinite_file(path: Path, max_seconds: float | None) -> None:
    """Float WAV/AIFF/CAF can hold NaN or inf, and resampling smears each one over dozens of
    samples, so count them in the file's own samples (libsndfile) first. Other formats hold
    integers or go through a codec: ffmpeg's output is checked by `validate`."""
    with open(path, "rb") as f:
        if f.read(4) not in _FLOAT_CAPABLE_MAGIC:  # keep libsndfile's mp3/ogg parsers (and their stderr) out
            return
    try:
        info = sf.info(os.fspath(path))
    except (sf.LibsndfileError, RuntimeError, TypeError, ValueError):
        return
    if info.subtype not in ("FLOAT", "DOUBLE"):
        return
    frames = -1 if max_seconds is None else int(max_seconds * info.samplerate) + 1
    for block in sf.blocks(os.fspath(path), blocksize=_READ_BLOCK_FRAMES, frames=frames, dtype="float32"):
        _reject_nonfinite(block)


def _reject_nonfinite(samples: np.ndarray) -> None:
    bad = samples.size - int(np.count_nonzero(np.isfinite(samples)))
    if bad:
        noun = "sample" if bad == 1 else "samples"
        raise AudioError("nonfinite", f"The audio contains {bad} invalid {noun} (NaN or infinity), "
                         "so the file is corrupt. Export or record it again.")


def _ffmpeg_input(path: Path) -> str:
    # "file:" keeps names that start with "-" or contain ":" from being read as options or protocols
    return "file:" + os.fspath(path)


def _ffmpeg_decode(path: Path, max_seconds: float | None) -> np.ndarray:
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error", "-threads", "0",
           "-i", _ffmpeg_input(path), "-vn", "-sn", "-dn"]
    if max_seconds is not None:
        cmd += ["-t", f"{max_seconds:.3f}"]
    # ffmpeg's float downmix adds channels up (six equal channels come out 3.4x louder); capping the
    # mixing matrix at 1 keeps the input's range, and stereo becomes the mean of its two channels.
    cmd += ["-rematrix_maxval", "1.0", "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "-"]
    result = _run(cmd)
    if result.returncode != 0:
        raise _unreadable(result.stderr, path)
    # copy: frombuffer over bytes is read-only, and torch.from_numpy warns on read-only arrays
    return np.frombuffer(result.stdout, np.float32).copy()


def _ffmpeg_resample(samples: np.ndarray, sample_rate: int) -> np.ndarray:
    """Resample with the same ffmpeg resampler files go through, so a microphone take and the
    same take uploaded as a file give the model the same samples."""
    cmd = ["ffmpeg", "-nostdin", "-hide_banner", "-loglevel", "error",
           "-f", "f32le", "-ar", str(sample_rate), "-ac", "1", "-i", "pipe:0",
           "-f", "f32le", "-ac", "1", "-ar", str(SAMPLE_RATE), "pipe:1"]
    result = _run(cmd, stdin=np.ascontiguousarray(samples, dtype="<f4").tobytes())
    if result.returncode != 0:
        raise _unreadable(result.stderr, None)
    return np.frombuffer(result.stdout, np.float32).copy()


def _run(cmd: list[str], stdin: bytes | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(cmd, input=stdin, capture_output=True, check=False)
    except FileNotFoundError as e:  # the program itself is missing: the host's problem, not the user's
        raise RuntimeError(f"{cmd[0]} is not installed or not on PATH; install ffmpeg "
                           "(apt install ffmpeg, brew install ffmpeg, conda install ffmpeg).") from e


_NOT_AUDIO = "not a recognised audio or video format, or the file is damaged"
_FRIENDLY_REASONS = {
    "does not contain any stream": "the file has no audio track",
    "matches no streams": "the file has no audio track",
    "moov atom not found": "the MP4/M4A file is incomplete (cut off before its index)",
    "Invalid data found when processing input": _NOT_AUDIO,
    "Invalid argument": _NOT_AUDIO,  # what the mp3 demuxer says about random bytes
}


def _unreadable(stderr: bytes, path: Path | None) -> AudioError:
    return AudioError("unreadable", f"Could not read the audio: {_ffmpeg_reason(stderr, path)}. "
                                    "Use a common format such as WAV, FLAC, MP3, OGG, WebM or M4A.")


def _ffmpeg_reason(stderr: bytes, path: Path | None) -> str:
    """One short line from ffmpeg's error output, without the file name and in plain words if known."""
    lines = [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]
    for pattern, friendly in _FRIENDLY_REASONS.items():
        if any(pattern in line for line in lines):
            return friendly
    if not lines:
        return "ffmpeg failed without saying why"
    reason = lines[-1]
    if path is not None:
        reason = reason.replace(_ffmpeg_input(path) + ": ", "").replace(os.fspath(path), "<file>")
    return reason[:_MAX_REASON_CHARS]


def _to_float32(array: np.ndarray) -> np.ndarray:
    """PCM integers -> [-1, 1) floats (int16 / 32768 and so on); floats are only cast."""
    if array.dtype.kind == "f":
        return array.astype(np.float32, copy=False)
    if array.dtype.kind == "i":
        return (array / float(2 ** (8 * array.dtype.itemsize - 1))).astype(np.float32)
    if array.dtype.kind == "u":  # 8-bit WAV is unsigned, centred on 128
        half = float(2 ** (8 * array.dtype.itemsize - 1))
        return ((array - half) / half).astype(np.float32)
    raise ValueError(f"audio samples must be integers or floats, got dtype {array.dtype}")


def _dbfs(peak: float) -> str:
    return "-inf" if peak <= 0 else f"{20 * math.log10(peak):.0f}"


def _format_duration(seconds: float) -> str:
    """0.0625 ms, 0.10 s, 12.3 s, 10:00 (m:ss past a minute)."""
    if seconds < 0.01:
        return f"{seconds * 1000:.3g} ms"
    if seconds < 60:
        return f"{seconds:.2f} s" if seconds < 1 else f"{seconds:.1f} s"
    minutes, rest = divmod(int(round(seconds)), 60)
    return f"{minutes}:{rest:02d} ({seconds:.0f} s)"
