"""Offline speech synthesis through the espeak-ng library shipped by ``espeakng-loader``.

The library is called through :mod:`ctypes` with the synchronous output mode, so every
call returns the samples of one utterance. Nothing touches the network: the shared
library and its voice data both live inside the wheel.

The library keeps global state, so :class:`Speaker` is a process-wide singleton guarded
by a lock.

Some voice variants (``Demonic`` and ``Alicia`` among them) draw on espeak-ng's own random
generator, which it seeds from the clock: the same call then gave different samples in each
process. Every utterance reseeds it from its own text, voice and parameters, so the same
sequence of calls gives the same samples in every process, and the evaluation sets built
from a fixed seed are the same on every run. (An utterance still depends on the ones said
before it in the process: espeak-ng carries synthesis state across calls.)
"""

from __future__ import annotations

import ctypes
import threading
import zlib
from functools import lru_cache
from pathlib import Path

import numpy as np
from scipy.signal import resample_poly

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_ESPEAK_RATE = 1
_ESPEAK_VOLUME = 2
_ESPEAK_PITCH = 3
_ESPEAK_RANGE = 4
_POS_CHARACTER = 1
_ESPEAK_CHARS_UTF8 = 1

_CALLBACK = ctypes.CFUNCTYPE(
    ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p
)

#: English accents shipped with espeak-ng (the part before ``+`` in a voice name).
ACCENTS: tuple[str, ...] = (
    "en-us",
    "en",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-029",
    "en-us-nyc",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
)


def voice_variants() -> list[str]:
    """The voice variants (the part after ``+`` in a voice name), sorted."""
    import espeakng_loader

    folder = Path(espeakng_loader.get_data_path()) / "voices" / "!v"
    return sorted(p.name for p in folder.iterdir() if p.is_file() and " " not in p.name)


class Speaker:
    """Synthesize words with espeak-ng and return float32 audio at ``sample_rate``."""

    _lock = threading.Lock()

    def __init__(self, sample_rate: int = 16000) -> None:
        import espeakng_loader

        self.sample_rate = sample_rate
        self._lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self._lib.espeak_Initialize.restype = ctypes.c_int
        self._lib.espeak_Initialize.argtypes = [
            ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int
        ]
        self._lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        self._lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
        if not hasattr(self._lib, "espeak_ng_SetRandSeed"):
            raise RuntimeError(
                "this espeak-ng has no espeak_ng_SetRandSeed: its synthesis would differ between "
                "processes; install espeakng-loader>=0.2.4"
            )
        self._lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
        self._lib.espeak_Synth.argtypes = [
            ctypes.c_void_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int, ctypes.c_uint,
            ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        rate = self._lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({rate}) with data at {data!r}")
        self.native_rate = int(rate)
        self._chunks: list[np.ndarray] = []

        def collect(wav: ctypes._Pointer[ctypes.c_short], n: int, _events: int) -> int:
            if n > 0:
                self._chunks.append(np.ctypeslib.as_array(wav, shape=(n,)).copy())
            return 0

        self._callback = _CALLBACK(collect)
        self._lib.espeak_SetSynthCallback(self._callback)
        g = np.gcd(self.native_rate, sample_rate)
        self._up, self._down = sample_rate // g, self.native_rate // g

    def say(self, text: str, voice: str, *, rate: int = 175, pitch: int = 50,
            pitch_range: int = 50) -> np.ndarray:
        """Audio of ``text`` spoken by ``voice`` (e.g. ``en-us+m3``), float32 in [-1, 1].

        ``rate`` is in words per minute (80-450), ``pitch`` and ``pitch_range`` 0-100.
        Leading and trailing silence is trimmed.
        """
        with self._lock:
            self._chunks = []
            if self._lib.espeak_SetVoiceByName(voice.encode()) != 0:
                raise ValueError(f"espeak-ng has no voice {voice!r}")
            self._lib.espeak_SetParameter(_ESPEAK_RATE, int(rate), 0)
            self._lib.espeak_SetParameter(_ESPEAK_PITCH, int(pitch), 0)
            self._lib.espeak_SetParameter(_ESPEAK_RANGE, int(pitch_range), 0)
            self._lib.espeak_SetParameter(_ESPEAK_VOLUME, 100, 0)
            self._lib.espeak_ng_SetRandSeed(utterance_seed(text, voice, rate, pitch, pitch_range))
            buf = ctypes.create_string_buffer(text.encode())
            err = self._lib.espeak_Synth(
                buf, len(buf), 0, _POS_CHARACTER, 0, _ESPEAK_CHARS_UTF8, None, None
            )
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed ({err}) for {text!r}")
            self._lib.espeak_Synchronize()
            raw = np.concatenate(self._chunks) if self._chunks else np.zeros(0, np.int16)
        audio = raw.astype(np.float32) / 32768.0
        audio = resample_poly(audio, self._up, self._down).astype(np.float32)
        return trim(audio)


def utterance_seed(text: str, voice: str, rate: int, pitch: int, pitch_range: int) -> int:
    """espeak-ng's random seed for one utterance: a stable hash of what is said and how."""
    return zlib.crc32(f"{text}|{voice}|{rate}|{pitch}|{pitch_range}".encode())


def trim(audio: np.ndarray, rel_db: float = -35.0, pad: int = 160) -> np.ndarray:
    """Cut leading and trailing parts quieter than ``rel_db`` below the peak (10 ms
    frames), keeping ``pad`` samples of margin."""
    if audio.size == 0:
        return audio
    frame = 160
    n = audio.size // frame
    if n == 0:
        return audio
    energy = np.sqrt(np.mean(audio[: n * frame].reshape(n, frame) ** 2, axis=1) + 1e-12)
    loud = np.flatnonzero(energy >= energy.max() * 10 ** (rel_db / 20))
    start = max(int(loud[0]) * frame - pad, 0)
    stop = min((int(loud[-1]) + 1) * frame + pad, audio.size)
    return audio[start:stop]


@lru_cache(maxsize=1)
def speaker(sample_rate: int = 16000) -> Speaker:
    """The process-wide :class:`Speaker`."""
    return Speaker(sample_rate)
