"""The model runner: owns the model, the KV cache tensors and the device; runs one batched forward.

It never decides which requests run: it receives the scheduler's output and returns one sampled
token per request whose step completes all its known tokens (a decode, or the last prefill chunk).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from shared_engine.attention import AttentionMetadata, PrefillChunk
from shared_engine.models.base import DecoderModel
from shared_engine.outputs import TokenLogprob
from shared_engine.sampler import RequestSampler, apply_logits_processors, sample
from shared_engine.scheduler import ScheduledRequest, SchedulerOutput


@dataclass
class StepResult:
    """Sampled tokens keyed by request id (only requests that produced a token this step)."""

    tokens: dict[str, int]
    logprobs: dict[str, TokenLogprob | None]


def num_blocks_for_memory(
    memory_bytes: int, kv_elems_per_token: int, block_size: int, dtype: torch.dtype
) -> int:
    bytes_per_block = kv_elems_per_token * block_size * dtype.itemsize
    return max(1, memory_bytes // bytes_per_block)


class ModelRunner:
    def __init__(
        self, model: DecoderModel, num_blocks: int, block_size: int, device: torch.device, dtype: torch.dtype
    ) -> None:
        self.model = model
        self.device = device
        self.dtype = dtype
        self.block_size = block_size
        arch = model.arch
        shape = (num_blocks, block_size, arch.num_kv_heads, arch.head_dim)
        self.kv_caches = [
            (torch.zeros(shape, dtype=dtype, device=device), torch.zeros(shape, dtype=dtype, device=device))
            for _ in range(arch.num_layers)
        ]

    def _slots(self, block_ids: list[int], start: int, end: int) -> list[int]:
        bs = self.block_size
        return [block_ids[p // bs] * bs + p % bs for p in range(start, end)]

    def _prepare(self, items: list[ScheduledRequest]) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata]:
        decodes = [s for s in items if s.num_new_tokens == 1 and s.request.num_computed_tokens > 0]
        prefills = [s for s in items if not (s.num_new_tokens == 1 and s.request.num_computed_tokens > 0)]
        items[:] = decodes + prefills
        input_ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        for s in items:
            r = s.request
            start, end = r.num_computed_tokens, r.num_computed_tokens + s.num_new_tokens
            input_ids.extend(r.token_ids_slice(start, end))
            positions.extend(range(start, end))
            slots.extend(self._slots(r.block_ids, start, end))

        dev = self.device
        block_tables = mask = None
        if decodes:
            width = max(len(s.request.block_ids) for s in decodes)
            table = [s.request.block_ids + [0] * (width - len(s.request.block_ids)) for s in decodes]
            block_tables = torch.tensor(table, dtype=torch.long, device=dev)
            lengths = torch.tensor([s.request.num_computed_tokens + 1 for s in decodes], device=dev)
            mask = (torch.arange(width * self.block_size, device=dev)[None, :] < lengths[:, None])[
                :, None, None, :
            ]
        chunks: list[PrefillChunk] = []
        offset = len(decodes)
        for s in prefills:
            r = s.request
            n = s.num_new_tokens
            chunk_slots = None
            if r.num_computed_tokens:
                ctx_slots = self._slots(r.block_ids, 0, r.num_computed_tokens + n)
                chunk_slots = torch.tensor(ctx_slots, dtype=torch.long, device=dev)
            chunks.append(PrefillChunk(offset, offset + n, r.num_computed_tokens, chunk_slots))
            offset += n
        meta = AttentionMetadata(
            slot_mapping=torch.tensor(slots, dtype=torch.long, device=dev),
            num_decodes=len(decodes),
            decode_block_tables=block_tables,
            decode_mask=mask,
            prefills=chunks,
            encoder_states=[s.request.encoder_state for s in items],
        )
        ids = torch.tensor(input_ids, dtype=torch.long, device=dev)
        pos = torch.tensor(positions, dtype=torch.long, device=dev)
        return ids, pos, meta

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput, samplers: dict[str, RequestSampler]) -> StepResult:
        items = list(out.scheduled)
        ids, pos, meta = self._prepare(items)
        hidden = self.model.forward(ids, pos, meta, self.kv_caches)
        # Only the last token of a request that completes its known tokens is sampled.
        rows: list[int] = []
        sampled: list[ScheduledRequest] = []
        offset = 0
        for s in items:
            offset += s.num_new_tokens
            if s.completes_prompt:
                rows.append(offset - 1)
                sampled.append(s)
        if not rows:
            return StepResult({}, {})
        logits = self.model.compute_logits(hidden[torch.tensor(rows, device=self.device)])
        requests = [s.request for s in sampled]
        apply_logits_processors(logits, [r.params for r in requests], [r.output_token_ids for r in requests])
        tokens, logprobs = sample(logits, [samplers[s.request.request_id] for s in sampled])
        ids_ = [s.request.request_id for s in sampled]
        return StepResult(dict(zip(ids_, tokens, strict=True)), dict(zip(ids_, logprobs, strict=True)))
