"""Real (synthetic) speech for tests: espeak-ng through the library the ``espeakng_loader`` package ships."""

from __future__ import annotations

import ctypes
import functools
import threading
from typing import Any

import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16_000
_AUDIO_OUTPUT_SYNCHRONOUS = 2  # espeak_AUDIO_OUTPUT: samples go to the callback, espeak_Synth blocks
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_SynthCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Espeak:
    """The process-wide espeak-ng state (the library keeps one), collecting samples per call."""

    def __init__(self) -> None:
        import espeakng_loader

        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_SetSynthCallback.argtypes = [_SynthCallback]
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_Synth.argtypes = [
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_uint,
            ctypes.c_int,
            ctypes.c_uint,
            ctypes.c_uint,
            ctypes.c_void_p,
            ctypes.c_void_p,
        ]
        data = espeakng_loader.get_data_path().encode()
        self.rate = lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, 0)
        if self.rate <= 0:
            raise RuntimeError(f"espeak_Initialize failed ({self.rate})")
        self.chunks: list[np.ndarray] = []
        self.callback = _SynthCallback(self._collect)  # referenced here so it is not collected
        lib.espeak_SetSynthCallback(self.callback)
        if lib.espeak_SetVoiceByName(b"en-us") != 0:
            raise RuntimeError("espeak-ng has no en-us voice")
        self.lib = lib
        self.lock = threading.Lock()

    def _collect(self, wav: Any, count: int, events: Any) -> int:
        if wav and count > 0:
            self.chunks.append(np.ctypeslib.as_array(wav, shape=(count,)).copy())
        return 0  # 0 = keep synthesizing

    def synth(self, text: str) -> np.ndarray:
        raw = text.encode() + b"\0"
        with self.lock:
            self.chunks = []
            err = self.lib.espeak_Synth(raw, len(raw), 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            if err != 0:
                raise RuntimeError(f"espeak_Synth failed ({err})")
            return np.concatenate(self.chunks) if self.chunks else np.zeros(0, np.int16)


@functools.cache
def _espeak() -> _Espeak:
    return _Espeak()


@functools.cache
def synthesize_espeak(text: str) -> tuple[np.ndarray, int]:
    """``text`` spoken by espeak-ng's en-us voice: float32 mono samples in [-1, 1] and their rate (16 kHz).

    Cached per text; the returned array is read-only.
    """
    engine = _espeak()
    pcm = torch.from_numpy(engine.synth(text).astype(np.float32) / 32768.0)
    audio = AF.resample(pcm, engine.rate, SAMPLE_RATE).numpy()
    audio.flags.writeable = False
    return audio, SAMPLE_RATE
