"""Text → IPA phonemes with libespeak-ng through ctypes, split into sentences the way Piper does.

espeak-ng translates one clause per ``espeak_TextToPhonemes`` call and advances the text pointer past it.
Its output carries no punctuation, so, like Piper, the clause's terminator (``. , ; : ! ?``) is put back
after its phonemes (``, : ;`` followed by a space), and a terminator that ends a sentence (``. ! ?``, or a
blank line) starts a new sentence. Piper asks its patched espeak-ng for the terminator
(``espeak_TextToPhonemesWithTerminator``); the stock library has no such call, so the terminator is read
from the text each clause consumed.
"""

from __future__ import annotations

import ctypes
import re
import threading
import unicodedata

import espeakng_loader

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000  # report errors instead of calling exit()
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02

SENTENCE_END = frozenset(".!?")
CLAUSE_BREAK = frozenset(",;:")
_CLOSERS = "\"')]}»”’"
# espeak marks words it reads in another language with "(fr)…(en)" flags; Piper drops them.
_LANGUAGE_FLAG = re.compile(r"\([^)]*\)")


class _Espeak:
    """The process-wide libespeak-ng: initialised once, used under a lock (it keeps global state and is
    not re-entrant)."""

    def __init__(self) -> None:
        lib = ctypes.CDLL(espeakng_loader.get_library_path())
        lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
        lib.espeak_Initialize.restype = ctypes.c_int
        lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        lib.espeak_SetVoiceByName.restype = ctypes.c_int
        lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int, ctypes.c_int]
        lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        data = espeakng_loader.get_data_path().encode()
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT) < 0:
            raise RuntimeError(f"espeak-ng failed to initialise with data at {data.decode()}")
        self.lib = lib
        self.lock = threading.Lock()

    def clauses(self, text: str, voice: str) -> list[tuple[str, str]]:
        """``(phonemes, source text)`` of each clause of ``text``, in order."""
        with self.lock:
            self._set_voice(voice)
            raw = text.encode("utf-8")
            buffer = ctypes.create_string_buffer(raw)
            base = ctypes.addressof(buffer)
            pointer = ctypes.c_void_p(base)
            clauses: list[tuple[str, str]] = []
            # espeak sets the pointer to NULL once the whole text is consumed.
            while pointer.value:
                start = pointer.value - base
                phonemes = self.lib.espeak_TextToPhonemes(ctypes.byref(pointer), _CHARS_UTF8, _PHONEMES_IPA)
                end = pointer.value - base if pointer.value else len(raw)
                if pointer.value and end <= start:
                    raise RuntimeError(f"espeak-ng stopped advancing at byte {start} of {len(raw)}")
                source = raw[start:end].decode("utf-8", errors="replace")
                if pointer.value:
                    # espeak reads one character past the clause (and speaks it with the next clause).
                    source = source[:-1]
                clauses.append(((phonemes or b"").decode("utf-8"), source))
            return clauses

    def _set_voice(self, voice: str) -> None:
        # Set on every text (0.1 ms): other code in the process may drive the same library.
        if self.lib.espeak_SetVoiceByName(voice.encode()) != 0:
            raise ValueError(f"espeak-ng has no voice {voice!r}")


_engine: _Espeak | None = None
_engine_lock = threading.Lock()


def _espeak() -> _Espeak:
    global _engine
    with _engine_lock:
        if _engine is None:
            _engine = _Espeak()
        return _engine


def terminator(source: str) -> tuple[str, bool]:
    """The punctuation Piper keeps after a clause whose text is ``source``, and whether it ends a sentence.

    ``...`` and ``…`` end a clause but keep nothing (espeak gives them their own clause type); a blank line
    ends a sentence with nothing kept. A clause that ends within a sentence keeps at least a space, so that
    its last word does not run into the next clause's first (Piper joins them with nothing).
    """
    stripped = source.rstrip()
    paragraph = stripped != source and source[len(stripped) :].count("\n") >= 2
    stripped = stripped.rstrip(_CLOSERS)
    mark = stripped[-1:]
    if mark == "." and stripped.endswith(".."):
        return " ", paragraph
    if mark in SENTENCE_END:
        return mark, True
    if mark in CLAUSE_BREAK:
        return mark + " ", paragraph
    return " ", paragraph


def phonemize(text: str, voice: str) -> list[str]:
    """IPA phonemes of ``text`` read by espeak-ng ``voice``, one string per sentence (NFD: one phoneme per
    code point), clause punctuation kept."""
    sentences: list[str] = []
    current = ""
    for phonemes, source in _espeak().clauses(text.replace("\0", " "), voice):
        mark, ends_sentence = terminator(source)
        current += _LANGUAGE_FLAG.sub("", phonemes) + mark
        if ends_sentence:
            sentences.append(current.rstrip(" "))
            current = ""
    if current.strip():
        sentences.append(current.rstrip(" "))
    return [unicodedata.normalize("NFD", s) for s in sentences if s.strip()]


def split_long(phonemes: str, limit: int) -> list[str]:
    """``phonemes`` cut into pieces of at most ``limit`` code points, at clause breaks where possible,
    else between words (a single word longer than ``limit`` is cut anywhere)."""
    if len(phonemes) <= limit:
        return [phonemes]
    pieces: list[str] = []
    current = ""
    for part in _parts(phonemes, limit):
        if current and len(current) + len(part) > limit:
            pieces.append(current)
            current = ""
        current += part
    if current:
        pieces.append(current)
    return pieces


def _parts(phonemes: str, limit: int) -> list[str]:
    """Clauses (each keeping its trailing ``", "``), the long ones cut into words, the long words cut."""
    parts: list[str] = []
    for clause in re.split(r"(?<=[,;:] )", phonemes):
        if len(clause) <= limit:
            parts.append(clause)
            continue
        for word in re.split(r"(?<= )", clause):
            parts.extend(word[i : i + limit] for i in range(0, len(word), limit))
    return [p for p in parts if p]
