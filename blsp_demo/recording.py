"""Recording a question from the local microphone (sounddevice / PortAudio)."""

from __future__ import annotations

import tempfile
import threading

import numpy as np

from blsp_demo.audio import SAMPLE_RATE


class RecordingError(RuntimeError):
    """No PortAudio, no input device, or the device failed; the message says which."""


def _sounddevice():
    try:
        import sounddevice as sd
    except (ImportError, OSError) as err:  # OSError: the PortAudio library itself is missing
        raise RecordingError("Recording needs PortAudio: install it (Debian/Ubuntu: apt-get install "
                             f"libportaudio2) and the sounddevice package ({err}).") from None
    return sd


def input_devices(sd) -> list[dict]:
    try:
        return [dict(d, index=i) for i, d in enumerate(sd.query_devices()) if d.get("max_input_channels", 0) > 0]
    except Exception as err:  # noqa: BLE001 - PortAudio reports many kinds of failure
        raise RecordingError(f"Cannot list audio devices: {err}") from None


def list_input_devices() -> str:
    devices = input_devices(_sounddevice())
    if not devices:
        return "No audio input device found (no microphone connected, or no access to it)."
    return "\n".join(f"{d['index']:3d}  {d['name']}  ({d['max_input_channels']} ch, "
                     f"{d['default_samplerate']:.0f} Hz)" for d in devices)


def record_to_wav(seconds: float | None = None, device: str | int | None = None, keep: str | None = None) -> str:
    """Record mono 16 kHz audio for `seconds`, or until Enter; returns a WAV path."""
    import soundfile as sf

    sd = _sounddevice()
    if not input_devices(sd):
        raise RecordingError("No audio input device found: connect a microphone, or pass an audio "
                             "file with `python -m blsp_demo chat --audio FILE`.")
    dev = int(device) if isinstance(device, str) and device.isdigit() else device
    chunks: list[np.ndarray] = []
    stop = threading.Event()

    def callback(indata, frames, time_info, status):
        chunks.append(indata[:, 0].copy())

    try:
        with sd.InputStream(samplerate=SAMPLE_RATE, channels=1, dtype="float32", device=dev, callback=callback):
            if seconds:
                print(f"Recording {seconds:.1f} s ...")
                stop.wait(seconds)
            else:
                input("Recording... press Enter to stop. ")
    except Exception as err:  # noqa: BLE001
        raise RecordingError(f"The input device failed: {err}") from None
    samples = np.concatenate(chunks) if chunks else np.zeros(0, np.float32)
    path = keep or tempfile.NamedTemporaryFile(suffix=".wav", delete=False).name
    sf.write(path, samples, SAMPLE_RATE, subtype="PCM_16")
    return path
