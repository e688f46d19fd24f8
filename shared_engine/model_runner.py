"""The model runner: owns the model, the KV cache tensors and the device; runs one batched forward.

It never decides which requests run: it receives the scheduler's output and returns the tokens
sampled for each request whose step completes all its known tokens (a decode, or the last prefill
chunk): one, or with speculative decoding the guesses the model agreed with plus one of its own.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch

from shared_engine.attention import (
    AttentionMetadata,
    PrefillChunk,
    allocate_kv_caches,
    decode_gather_index,
    decode_mask,
    gathered_decode,
)
from shared_engine.config import CacheConfig
from shared_engine.decode_graphs import DecodeGraphs
from shared_engine.dual_linear import float_weights_only
from shared_engine.models.base import DecoderModel
from shared_engine.outputs import StepResult
from shared_engine.prompt_logprobs import score_prompts
from shared_engine.rejection_sampler import verify_and_sample
from shared_engine.sampler import RequestSampler, select_rows
from shared_engine.scheduler import ScheduledRequest, SchedulerOutput
from shared_engine.structured_output import StepMask

logger = logging.getLogger(__name__)


@dataclass
class Segment:
    """Tokens of one sequence to run through the model: ``token_ids`` at positions ``start``…,
    their keys and values written into the slots of ``block_ids``. ``prompt``: they include tokens of the
    prompt, which take the float weights however few they are (a prefix hit can leave one)."""

    block_ids: list[int]
    start: int
    token_ids: list[int]
    encoder_state: Any = None
    prompt: bool = False

    @property
    def is_decode(self) -> bool:
        return len(self.token_ids) == 1 and self.start > 0


def num_blocks_for_memory(
    memory_bytes: int, kv_elems_per_token: int, block_size: int, dtype: torch.dtype
) -> int:
    bytes_per_block = kv_elems_per_token * block_size * dtype.itemsize
    return max(1, memory_bytes // bytes_per_block)


def usable_model_len(requested: int | None, positions: int, num_blocks: int, cache: CacheConfig) -> int:
    """The longest sequence served: as configured (by default the model's positions), and no longer than
    the KV cache holds, which would refuse every request past it."""
    wanted = min(requested or positions, positions)
    pool = num_blocks * cache.block_size
    if pool < wanted:
        logger.warning(
            "the KV cache holds %d tokens, fewer than max_model_len %d: serving at most %d (enlarge the "
            "cache to serve longer sequences)", pool, wanted, pool,
        )  # fmt: skip
    return min(wanted, pool)


class ModelRunner:
    def __init__(
        self,
        model: DecoderModel,
        num_blocks: int,
        block_size: int,
        device: torch.device,
        dtype: torch.dtype,
        kv_dtype: torch.dtype | None = None,
    ) -> None:
        """``kv_dtype``: what the KV cache stores (None: ``dtype``; see ``attention.kv_cache_dtype``).
        The caches hold one block past ``num_blocks``, which no request owns: the decode graphs' scratch."""
        self.model = model
        self.device = device
        self.dtype = dtype
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.kv_dtype = kv_dtype or dtype
        arch = model.arch
        self.kv_caches = allocate_kv_caches(
            arch.num_layers,
            arch.num_kv_heads,
            num_blocks + 1,
            block_size,
            arch.head_dim,
            self.kv_dtype,
            device,
        )
        self.gathered_decode = gathered_decode(device)
        self.decode_graphs: DecodeGraphs | None = None

    def enable_decode_graphs(self, max_batch: int, max_blocks: int, capture: bool) -> None:
        """Run decode-only steps of up to ``max_batch`` requests of up to ``max_blocks`` blocks from fixed
        buffers (see ``decode_graphs``), replayed as CUDA graphs where ``capture``."""
        self.decode_graphs = DecodeGraphs(
            self.model, self.kv_caches, self.block_size, self.num_blocks, max_batch, max_blocks,
            self.gathered_decode, capture,
        )  # fmt: skip
        if capture:
            with torch.inference_mode():
                self.decode_graphs.capture_smallest()

    def for_model(self, model: DecoderModel) -> ModelRunner:
        """A runner of ``model`` (a draft) with this one's blocks, device, dtypes and decode graphs' limits,
        and caches of its own: the same block ids and slots then address both."""
        runner = ModelRunner(model, self.num_blocks, self.block_size, self.device, self.dtype, self.kv_dtype)
        if (graphs := self.decode_graphs) is not None:
            runner.enable_decode_graphs(graphs.max_batch, graphs.max_width, graphs.capture)
        return runner

    def _slots(self, block_ids: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [block_ids[p // bs] * bs + p % bs for p in range(start, end)]

    def _prepare(
        self, segments: list[Segment]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, list[int]]:
        """The flat batch (every decode first, then each longer segment) and, per segment in the
        order given, the offset of its first token in it."""
        order = [i for i, s in enumerate(segments) if s.is_decode]
        num_decodes = len(order)
        order += [i for i, s in enumerate(segments) if not s.is_decode]
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        offsets = [0] * len(segments)
        for i in order:
            s = segments[i]
            offsets[i] = len(input_ids)
            end = s.start + len(s.token_ids)
            input_ids.extend(s.token_ids)
            positions.extend(range(s.start, end))
            slots.extend(self._slots(s.block_ids, s.start, end))

        dev = self.device
        tables = lengths = gather = mask = None
        decodes = [segments[i] for i in order[:num_decodes]]
        if decodes:
            width = max(len(s.block_ids) for s in decodes)
            table = [s.block_ids + [self.num_blocks] * (width - len(s.block_ids)) for s in decodes]
            tables = torch.tensor(table, dtype=torch.long, device=dev)
            lengths = torch.tensor([s.start + 1 for s in decodes], dtype=torch.long, device=dev)
            if self.gathered_decode:
                gather = decode_gather_index(tables, self.kv_caches[0].shape)
                mask = decode_mask(lengths, width * self.block_size)
        chunks: list[PrefillChunk] = []
        for i in order[num_decodes:]:
            s = segments[i]
            n = len(s.token_ids)
            chunk_slots = None
            if s.start:
                ctx_slots = self._slots(s.block_ids, 0, s.start + n)
                chunk_slots = torch.tensor(ctx_slots, dtype=torch.long, device=dev)
            chunks.append(PrefillChunk(offsets[i], offsets[i] + n, s.start, chunk_slots))
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decodes=num_decodes,
            decode_block_tables=tables,
            decode_lens=lengths,
            decode_gather_index=gather,
            decode_mask=mask,
            prefills=chunks,
            encoder_states=[segments[i].encoder_state for i in order],
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        return ids, pos, meta, offsets

    @torch.inference_mode()
    def forward(self, segments: list[Segment]) -> tuple[torch.Tensor, list[int]]:
        """Run ``segments`` as one batch: hidden states ``[tokens, hidden]`` (valid until the next call:
        decode graphs rewrite them in place) and each segment's offset."""
        if self._graph_step(segments):
            return self._run_graph(segments), list(range(len(segments)))
        ids, pos, meta, offsets = self._prepare(segments)
        with float_weights_only(bool(meta.prefills) or any(s.prompt for s in segments)):
            return self.model.forward(ids, pos, meta, self.kv_caches), offsets

    def _graph_step(self, segments: list[Segment]) -> bool:
        graphs = self.decode_graphs
        return (
            graphs is not None
            and all(s.is_decode and s.encoder_state is None and not s.prompt for s in segments)
            and graphs.fits(len(segments), max(len(s.block_ids) for s in segments))
        )

    def _run_graph(self, segments: list[Segment]) -> torch.Tensor:
        graphs = self.decode_graphs
        assert graphs is not None
        tokens = [s.token_ids[0] for s in segments]
        positions = [s.start for s in segments]
        slots = [self._slots(s.block_ids, s.start, s.start + 1)[0] for s in segments]
        return graphs.run(tokens, positions, slots, [s.block_ids for s in segments])

    @torch.inference_mode()
    def last_logits(self, segments: list[Segment]) -> torch.Tensor:
        """Float32 logits ``[len(segments), vocab]`` of each segment's last token."""
        hidden, offsets = self.forward(segments)
        rows = [off + len(s.token_ids) - 1 for off, s in zip(offsets, segments, strict=True)]
        return self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)]).float()

    @torch.inference_mode()
    def execute(
        self, out: SchedulerOutput, samplers: dict[str, RequestSampler], mask: StepMask | None = None
    ) -> StepResult:
        """Run the step and pick each sampled request's tokens; ``mask`` (structured outputs) is applied to
        the logits before sampling."""
        items = out.scheduled
        segments = [_segment(s) for s in items]
        hidden, offsets = self.forward(segments)
        # Logits of the last token of a request that completes its known tokens, and of every guess.
        rows: list[int] = []
        sampled: list[ScheduledRequest] = []
        for s, off in zip(items, offsets, strict=True):
            if s.completes_prompt:
                first = off + s.num_new_tokens - 1 - s.num_spec_tokens
                rows.extend(range(first, off + s.num_new_tokens))
                sampled.append(s)
        prompt_logprobs = score_prompts(self.model, hidden, items, offsets)
        if not rows:
            return StepResult({}, {}, prompt_logprobs=prompt_logprobs)
        logits = self.model.compute_logits(select_rows(hidden, rows))
        result = verify_and_sample(logits, sampled, samplers, mask)
        result.prompt_logprobs = prompt_logprobs
        return result


def _segment(s: ScheduledRequest) -> Segment:
    r = s.request
    start = r.num_computed_tokens
    known = r.token_ids_slice(start, start + s.num_new_tokens - s.num_spec_tokens)
    return Segment(r.block_ids, start, known + s.spec_token_ids, r.encoder_state, start < r.num_prompt_tokens)
