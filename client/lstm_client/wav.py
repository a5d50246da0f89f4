"""WAV input for audio streaming: mono or stereo (downmixed), 8-48 kHz, 16-bit or float."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.io import wavfile

MIN_RATE_HZ = 8_000
MAX_RATE_HZ = 48_000


class WavError(ValueError):
    """The file is not a WAV this client can stream."""


@dataclass(frozen=True)
class Wav:
    """Decoded audio ready to stream."""

    sample_rate_hz: int
    encoding: str
    data: bytes
    """Mono samples in ``encoding`` (``pcm16`` or ``float32``), little-endian."""
    seconds: float

    @property
    def bytes_per_sample(self) -> int:
        """2 for PCM16, 4 for float32."""
        return 2 if self.encoding == "pcm16" else 4

    def chunks(self, chunk_ms: float) -> list[bytes]:
        """Split into chunks of ``chunk_ms`` (the last one may be shorter)."""
        step = max(1, round(self.sample_rate_hz * chunk_ms / 1000)) * self.bytes_per_sample
        return [self.data[i : i + step] for i in range(0, len(self.data), step)]


def read_wav(path: Path) -> Wav:
    """Read ``path``; stereo is averaged to mono. Raises :class:`WavError`."""
    try:
        rate, samples = wavfile.read(str(path))
    except (ValueError, OSError) as exc:
        raise WavError(f"{path}: not a readable WAV file ({exc})") from exc
    if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
        raise WavError(f"{path}: sample rate {rate} Hz is outside {MIN_RATE_HZ}-{MAX_RATE_HZ} Hz")
    if samples.ndim == 2:
        if samples.shape[1] > 2:
            raise WavError(f"{path}: {samples.shape[1]} channels; expected mono or stereo")
        samples = samples.astype(np.float64).mean(axis=1).astype(samples.dtype)
    if samples.dtype == np.int16:
        data = samples.astype("<i2").tobytes()
        encoding = "pcm16"
    elif samples.dtype in (np.float32, np.float64):
        data = samples.astype("<f4").tobytes()
        encoding = "float32"
    else:
        raise WavError(f"{path}: sample format {samples.dtype} unsupported; expected 16-bit PCM or float")
    return Wav(rate, encoding, data, len(samples) / rate)

