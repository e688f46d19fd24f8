"""Decode steps run from persistent buffers at padded sizes, replayed as CUDA graphs on a GPU.

A decode step of a small batch is hundreds of short kernels; on a GPU, launching them one by one from
Python takes longer than running them. Captured once as a CUDA graph, the step replays with one launch.
A graph fixes every shape and address, so such a step reads its inputs from buffers that live as long as
the runner, at a padded size: the batch rounded up to a bucket (1, 2, 4, 8, then multiples of 8) and the
block tables' width to a power of two. Padding rows decode token 0 at position 0 into a scratch block
that no request owns (the runner allocates one past the allocator's blocks) and attend to that alone;
padding columns of the tables name the scratch block too, so no step reads another request's blocks
beyond its own. Padding rows' outputs are dropped.

The engine captures the smallest step when it starts (a model whose step cannot be captured fails there,
with the way out in the message), and each further (batch, width) bucket when first met, one capture at
a time in the process (several engines may share it) on each runner's own stream, failing only for its
own thread's illegal calls. The graphs share one memory pool: a step's output is valid until the next
step (the runner's callers copy what they keep). That pool is not part of the KV cache's budget; steps
wider than ``MAX_CAPTURED_TOKENS`` of context, or larger than the scheduler's batch, run eagerly.

Without capture (``capture=False``) the same buffers run the step eagerly. The engine does not do that on a
CPU, where a launch is cheap and its kernels already run a decode step in one call; the tests do, so that
the padding is checked on every host.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch

from shared_engine.attention import AttentionMetadata, decode_gather_index, decode_mask
from shared_engine.models.base import DecoderModel

logger = logging.getLogger(__name__)

MAX_CAPTURED_TOKENS = 8192  # the longest context a captured step covers
# A process captures one graph at a time: the allocator and the driver hold one capture per process.
_CAPTURE_LOCK = threading.Lock()


def batch_bucket(n: int) -> int:
    """The padded batch size for ``n`` decodes: 1, 2, 4, 8, then the next multiple of 8."""
    if n < 1:
        raise ValueError(f"a decode step has at least one request, got {n}")
    return 1 << (n - 1).bit_length() if n <= 8 else -(-n // 8) * 8


def width_bucket(n: int) -> int:
    """The padded block-table width for a longest request of ``n`` blocks: the next power of two."""
    if n < 1:
        raise ValueError(f"a decoding request holds at least one block, got {n}")
    return 1 << (n - 1).bit_length()


@dataclass
class _Bucket:
    batch: int
    width: int
    tables: torch.Tensor  # [batch, width]: the block tables this bucket's steps read
    graph: torch.cuda.CUDAGraph | None = None
    hidden: torch.Tensor | None = None  # the captured step's output, rewritten by each replay
    eager: bool = False  # a bucket whose warm-up ran out of memory runs from the buffers uncaptured


class DecodeGraphs:
    """Decode-only steps of up to ``max_batch`` requests of up to ``max_blocks`` blocks each, from
    fixed buffers; ``capture`` replays them as CUDA graphs (the caches must then be on a CUDA device)."""

    def __init__(
        self,
        model: DecoderModel,
        kv_caches: list[torch.Tensor],
        block_size: int,
        scratch_block: int,
        max_batch: int,
        max_blocks: int,
        gathered: bool,
        capture: bool,
    ) -> None:
        if not 0 <= scratch_block < kv_caches[0].shape[2]:
            raise ValueError(f"scratch block {scratch_block} is not one of the cache's blocks")
        device = kv_caches[0].device
        if capture and device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, not {device}")
        self.model = model
        self.kv_caches = kv_caches
        self.block_size = block_size
        self.scratch_block = scratch_block
        self.max_batch = batch_bucket(max_batch)
        self.max_width = width_bucket(max_blocks)
        self.gathered = gathered
        self.capture = capture
        # Rows: token ids, positions, cache slots, lengths attended (the token's own position included).
        self._vectors = torch.zeros(4, self.max_batch, dtype=torch.long, device=device)
        self._buckets: dict[tuple[int, int], _Bucket] = {}
        self._pool: Any = None  # an opaque handle
        self._stream: torch.cuda.Stream | None = None
        if capture:
            with torch.cuda.device(device):  # the pool and stream of the caches' GPU, whichever is current
                self._pool, self._stream = torch.cuda.graph_pool_handle(), torch.cuda.Stream()

    @property
    def shapes(self) -> list[tuple[int, int]]:
        """The (batch, width) buckets used so far, in order."""
        return sorted(self._buckets)

    @property
    def num_graphs(self) -> int:
        return sum(b.graph is not None for b in self._buckets.values())

    def fits(self, num_requests: int, widest: int) -> bool:
        """Whether a step of ``num_requests`` decodes whose longest block table has ``widest`` blocks
        runs here."""
        return 0 < num_requests <= self.max_batch and 0 < widest <= self.max_width

    def run(
        self, token_ids: list[int], positions: list[int], slots: list[int], block_ids: list[list[int]]
    ) -> torch.Tensor:
        """Hidden states ``[len(token_ids), hidden]`` of one decode token per request (``token_ids[i]`` at
        ``positions[i]``, its keys and values written to cache slot ``slots[i]``, of the request holding
        ``block_ids[i]``); valid until the next call."""
        bucket = self._bucket(batch_bucket(len(token_ids)), width_bucket(max(map(len, block_ids))))
        return self._execute(bucket, token_ids, positions, slots, block_ids)[: len(token_ids)]

    def capture_smallest(self) -> None:
        """Run (capturing it first) the one-request, one-block step on padding alone: it writes only to
        the scratch block, and a model whose step cannot be captured fails here rather than on a request."""
        self._execute(self._bucket(1, 1), [], [], [], [])

    def _execute(
        self,
        bucket: _Bucket,
        token_ids: list[int],
        positions: list[int],
        slots: list[int],
        block_ids: list[list[int]],
    ) -> torch.Tensor:
        pad = bucket.batch - len(token_ids)
        scratch = self.scratch_block
        vectors = [
            token_ids + [0] * pad,
            positions + [0] * pad,
            slots + [scratch * self.block_size] * pad,
            [p + 1 for p in positions] + [1] * pad,
        ]
        tables = [ids + [scratch] * (bucket.width - len(ids)) for ids in block_ids]
        tables += [[scratch] * bucket.width] * pad
        self._vectors[:, : bucket.batch].copy_(torch.tensor(vectors))
        bucket.tables.copy_(torch.tensor(tables))
        if not self.capture or bucket.eager:
            return self._step(bucket)
        if bucket.graph is None:
            self._capture(bucket)
            if bucket.eager:
                return self._step(bucket)
        assert bucket.graph is not None and bucket.hidden is not None
        bucket.graph.replay()
        return bucket.hidden

    def _bucket(self, batch: int, width: int) -> _Bucket:
        key = (batch, width)
        if key not in self._buckets:
            tables = torch.zeros(batch, width, dtype=torch.long, device=self._vectors.device)
            self._buckets[key] = _Bucket(batch, width, tables)
        return self._buckets[key]

    def _step(self, bucket: _Bucket) -> torch.Tensor:
        ids, positions, slots, lengths = self._vectors[:, : bucket.batch]
        gather = mask = None
        if self.gathered:
            gather = decode_gather_index(bucket.tables, self.kv_caches[0].shape)
            mask = decode_mask(lengths, bucket.width * self.block_size)
        batch = bucket.batch
        meta = AttentionMetadata(slots, batch, bucket.tables, lengths, gather, mask, [], [None] * batch)
        return self.model.forward(ids, positions, meta, self.kv_caches)

    def _capture(self, bucket: _Bucket) -> None:
        assert self._stream is not None
        started = time.perf_counter()
        with _CAPTURE_LOCK, torch.cuda.device(self._stream.device):
            # A warm-up outside the capture does the lazy set-up (library handles, workspaces) that a
            # graph cannot record. It runs the step on this step's inputs: the keys and values it writes
            # are the ones the replay writes again.
            self._stream.wait_stream(torch.cuda.current_stream())
            try:
                with torch.cuda.stream(self._stream):
                    self._step(bucket)
            except torch.OutOfMemoryError:
                logger.warning(
                    "no memory to capture the decode step for %d requests x %d blocks: it runs eagerly",
                    bucket.batch, bucket.width,
                )  # fmt: skip
                bucket.eager = True
                return
            torch.cuda.current_stream().wait_stream(self._stream)
            graph = torch.cuda.CUDAGraph()
            try:
                with torch.cuda.graph(
                    graph, pool=self._pool, stream=self._stream, capture_error_mode="thread_local"
                ):
                    bucket.hidden = self._step(bucket)
            except RuntimeError as e:
                raise RuntimeError(
                    f"capturing the decode step for {bucket.batch} requests x {bucket.width} blocks as a "
                    "CUDA graph failed; cuda_graphs = false in the model's [models.engine] runs it eagerly"
                ) from e
        bucket.graph = graph
        logger.info(
            "captured the decode step for %d requests x %d blocks as a CUDA graph in %.0f ms (%d graphs)",
            bucket.batch, bucket.width, (time.perf_counter() - started) * 1e3, self.num_graphs,
        )  # fmt: skip
