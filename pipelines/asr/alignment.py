"""Word timestamps, as the reference implementation finds them: the decoder reads a window's text again
(teacher-forced, without timestamps) and the cross-attention of its alignment heads says which audio
frames each token looked at; normalised per frame and median-filtered, the heads' mean is a cost
matrix, and the cheapest monotonic path through it (dynamic time warping) gives each token its first
frame. A word starts at its first token's frame and ends where the next word starts.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from pipelines.asr.decoding import TIME_PRECISION
from shared_engine.models.whisper import CrossAttentionState, WhisperDecoder

MEDIAN_FILTER_WIDTH = 7
PREPENDED = "\"'“¿([{-"  # punctuation that joins the word after it
APPENDED = "\"'.。,，!！?？:：”)]}、"  # punctuation that joins the word before it
SENTENCE_ENDS = ".。!！?？"
MAX_MEDIAN_WORD_SECONDS = 0.7
# Languages written without spaces: each whole character (or run of tokens that forms one) is a word.
UNSPACED = frozenset({"zh", "ja", "th", "lo", "my", "yue"})


@dataclass(frozen=True)
class Word:
    word: str
    start: float  # seconds from the start of the audio
    end: float


@torch.inference_mode()
def alignment_scores(
    decoder: WhisperDecoder,
    state: CrossAttentionState,
    tokens: Sequence[int],
    heads: Sequence[tuple[int, int]],
    frames: int,
) -> torch.Tensor:
    """Cross-attention logits ``[len(heads), len(tokens), frames]`` of ``heads`` (layer, head) while the
    decoder reads ``tokens`` after one window's encoder ``state``, over the window's first ``frames``.

    The engine's decode computes attention in kernels that keep no weights; this pass runs the same
    modules on plain tensors, and stops after the last layer that holds an alignment head."""
    d = decoder.decoder
    layers = d.typed_layers()[: max(layer for layer, _ in heads) + 1]
    n = len(tokens)
    device = d.embed_tokens.weight.device
    positions = torch.arange(n, device=device)
    h = d.embed_tokens(torch.tensor(tokens, device=device)) + d.embed_positions(positions)
    picked: dict[tuple[int, int], torch.Tensor] = {}
    for i, layer in enumerate(layers):
        s, c = layer.self_attn, layer.encoder_attn
        qkv = s.qkv_proj(layer.self_attn_layer_norm(h)).view(n, 3, s.num_heads, s.head_dim)
        qkv = qkv.permute(1, 2, 0, 3)  # [q/k/v, heads, n, head_dim]
        out = F.scaled_dot_product_attention(qkv[0], qkv[1], qkv[2], is_causal=True)
        h = h + s.out_proj(out.transpose(0, 1).reshape(n, -1))
        q = c.q_proj(layer.encoder_attn_layer_norm(h)).view(n, c.num_heads, c.head_dim).transpose(0, 1)
        k, v = state.kv[i][0, :, 0].to(q.dtype), state.kv[i][1, :, 0].to(q.dtype)
        scores = (q.float() @ k.float().transpose(-1, -2)) * c.head_dim**-0.5  # [heads, n, all frames]
        h = h + c.out_proj((scores.softmax(-1).to(v.dtype) @ v).transpose(0, 1).reshape(n, -1))
        h = h + layer.fc2(F.gelu(layer.fc1(layer.final_layer_norm(h))))
        picked.update({(i, head): scores[head, :, :frames] for layer_i, head in heads if layer_i == i})
    return torch.stack([picked[(layer, head)] for layer, head in heads])


def _median_filter(x: torch.Tensor, width: int) -> torch.Tensor:
    """Median over a sliding window of the last dimension, edges reflected."""
    pad = width // 2
    if x.shape[-1] <= pad:
        return x
    return F.pad(x, (pad, pad), mode="reflect").unfold(-1, width, 1).median(dim=-1).values


def dtw(cost: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The cheapest path from (0, 0) to the last cell of ``cost`` [tokens, frames] moving right, down or
    diagonally: its rows and columns in order. Ties go as the reference implementation breaks them."""
    n, m = cost.shape
    acc = np.full((n + 1, m + 1), np.inf)
    trace = np.full((n + 1, m + 1), -1, dtype=np.int8)
    acc[0, 0] = 0.0
    # A cell depends on the cells up, left and up-left of it: each anti-diagonal depends only on the two
    # before it, so it is computed in one vectorized step (n + m steps, not n * m).
    for diagonal in range(2, n + m + 1):
        i = np.arange(max(1, diagonal - m), min(n, diagonal - 1) + 1)
        j = diagonal - i
        c0, c1, c2 = acc[i - 1, j - 1], acc[i - 1, j], acc[i, j - 1]
        step = np.where((c0 < c1) & (c0 < c2), 0, np.where((c1 < c0) & (c1 < c2), 1, 2))
        acc[i, j] = cost[i - 1, j - 1] + np.choose(step, [c0, c1, c2])
        trace[i, j] = step
    trace[0, :], trace[:, 0] = 2, 1
    i, j = n, m
    path: list[tuple[int, int]] = []
    while i > 0 or j > 0:
        path.append((i - 1, j - 1))
        move = trace[i, j]
        i, j = (i - 1, j - 1) if move == 0 else (i - 1, j) if move == 1 else (i, j - 1)
    rows, cols = np.array(path[::-1]).T
    return rows, cols


def token_times(scores: torch.Tensor) -> np.ndarray:
    """Seconds into the window at which each row of ``scores`` (a token) starts."""
    weights = scores.float().softmax(dim=-1)
    std, mean = torch.std_mean(weights, dim=-2, keepdim=True, unbiased=False)
    weights = _median_filter((weights - mean) / std.clamp_min(1e-8), MEDIAN_FILTER_WIDTH)
    rows, cols = dtw(-weights.mean(dim=0).cpu().double().numpy())
    first = np.concatenate([[True], np.diff(rows) > 0])  # where the path enters each row
    return cols[first] * TIME_PRECISION


def split_words(
    tokens: Sequence[int], decode: Callable[[list[int]], str], language: str
) -> list[tuple[str, list[int]]]:
    """``tokens`` grouped into words (with their leading space): runs of tokens that decode to whole
    characters, joined to the previous word unless they start with a space or are punctuation."""
    pieces: list[tuple[str, list[int]]] = []
    current: list[int] = []
    for token in tokens:
        current.append(token)
        text = decode(current)
        if "\ufffd" not in text:
            pieces.append((text, current))
            current = []
    if current:
        pieces.append((decode(current), current))
    if language in UNSPACED:
        return pieces
    words: list[tuple[str, list[int]]] = []
    for text, group in pieces:
        if not words or text.startswith(" ") or text.strip() in string.punctuation:
            words.append((text, list(group)))
        else:
            words[-1] = (words[-1][0] + text, words[-1][1] + group)
    return words


def merge_punctuation(words: list[Word]) -> list[Word]:
    """Opening punctuation joins the next word and closing punctuation the previous one, whose times
    they take."""
    merged: list[Word] = []
    opening = ""
    for w in words:
        if w.word.startswith(" ") and w.word.strip() and w.word.strip() in PREPENDED:
            opening += w.word
            continue
        word = Word(opening + w.word, w.start, w.end) if opening else w
        opening = ""
        if merged and word.word in APPENDED and not merged[-1].word.endswith(" "):
            last = merged[-1]
            merged[-1] = Word(last.word + word.word, last.start, last.end)
        else:
            merged.append(word)
    if opening and merged:
        last = merged[-1]
        merged[-1] = Word(last.word + opening, last.start, last.end)
    return merged


def window_words(
    scores: torch.Tensor,
    text_tokens: Sequence[int],
    decode: Callable[[list[int]], str],
    language: str,
    offset: float,
    window: float,
) -> list[Word]:
    """The timed words of one window's ``text_tokens``, given ``scores`` with one row per text token and
    one for the end of text (the rows that predict them)."""
    times = np.clip(token_times(scores), 0.0, window) + offset
    groups = split_words(text_tokens, decode, language)
    bounds = np.cumsum([0, *(len(g) for _, g in groups)])
    words = [
        Word(text, round(float(times[lo]), 2), round(float(times[hi]), 2))
        for (text, _), lo, hi in zip(groups, bounds[:-1], bounds[1:], strict=True)
    ]
    merged = [Word(w.word.strip(), w.start, w.end) for w in merge_punctuation(words) if w.word.strip()]
    return clip_long_words(merged)


def clip_long_words(words: list[Word]) -> list[Word]:
    """Attention lingers on a sentence's last word into the silence after it, and a sentence's first word
    may take the silence before it: such a word longer than twice the median word is cut to that length
    (its end kept for a first word, its start for a last one)."""
    durations = [w.end - w.start for w in words if w.end > w.start]
    if not durations:
        return words
    longest = 2 * min(MAX_MEDIAN_WORD_SECONDS, float(np.median(durations)))
    out: list[Word] = []
    for i, w in enumerate(words):
        if w.end - w.start > longest:
            if w.word[-1] in SENTENCE_ENDS:
                w = Word(w.word, w.start, round(w.start + longest, 2))
            elif i == 0 or words[i - 1].word[-1] in SENTENCE_ENDS:
                w = Word(w.word, round(w.end - longest, 2), w.end)
        out.append(w)
    return out
