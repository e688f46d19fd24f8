"""The engine's CPU kernels (shared_engine/csrc/cpu_kernels.cpp, sampling.cpp) against the composite torch
operators they replace: decode attention over the paged cache, RMSNorm and RMSNorm with the residual add,
SiLU times the up projection, the sampler's softmax and top-k; the switch that turns them off; and a
machine where they cannot be built falling back to those operators."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from shared_engine import cpu_kernels
from shared_engine.attention import (
    AttentionMetadata,
    as_cached,
    decode_gather_index,
    decode_mask,
    gathered_decode,
    paged_attention,
)
from shared_engine.cpu_kernels import build_lock
from shared_engine.models.llama import RMSNorm
from tests.helpers.threads import torch_threads

CPU = torch.device("cpu")
REPO = Path(__file__).resolve().parents[2]
BLOCK = 16
TOLERANCE = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture
def kernels_off(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``MMSERVE_CPU_KERNELS=0`` for the test: the composite torch operators everywhere."""
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "0")
    cpu_kernels.load.cache_clear()
    yield
    cpu_kernels.load.cache_clear()


def test_the_kernels_build_and_load_on_this_cpu() -> None:
    assert cpu_kernels.load(), "the kernels should build wherever a C++ compiler is present"
    assert cpu_kernels.usable(CPU) and not gathered_decode(CPU)
    assert not cpu_kernels.usable(torch.device("meta"))
    capability = torch.backends.cpu.get_cpu_capability().lower()
    assert any(f"mmserve_cpu_kernels_{capability}" in path for path in torch.ops.loaded_libraries)


def test_the_switch_turns_them_off_and_rejects_other_values(
    kernels_off: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert not cpu_kernels.load() and gathered_decode(CPU)
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "yes")
    cpu_kernels.load.cache_clear()
    with pytest.raises(ValueError, match="MMSERVE_CPU_KERNELS must be 0 or 1"):
        cpu_kernels.load()


def _decode_meta(
    tables: torch.Tensor, lengths: torch.Tensor, cache: torch.Tensor, gathered: bool
) -> AttentionMetadata:
    slots = torch.stack(
        [tables[r, (n - 1) // BLOCK] * BLOCK + (n - 1) % BLOCK for r, n in enumerate(lengths)]
    )
    gather = decode_gather_index(tables, cache.shape) if gathered else None
    mask = decode_mask(lengths, tables.shape[1] * BLOCK) if gathered else None
    return AttentionMetadata(slots, len(lengths), tables, lengths, gather, mask, [], [])


# (computation dtype, cache dtype): the same, or a float32 model over a 16-bit cache
DTYPE_PAIRS = [
    (torch.float32, torch.float32),
    (torch.bfloat16, torch.bfloat16),
    (torch.float16, torch.float16),
    (torch.float32, torch.bfloat16),
    (torch.float32, torch.float16),
]
PAIR_IDS = ["float32", "bfloat16", "float16", "float32-over-bfloat16", "float32-over-float16"]


@pytest.mark.parametrize(("dtype", "cache_dtype"), DTYPE_PAIRS, ids=PAIR_IDS)
@pytest.mark.parametrize(
    ("heads", "kv_heads", "head_dim"),
    [(9, 3, 64), (4, 4, 128), (6, 2, 80), (14, 2, 64), (10, 2, 128)],
    ids=["gqa-64", "mha-128", "gqa-80", "gqa7-64", "gqa5-128"],
)
def test_decode_attention_matches_the_gathered_path(
    dtype: torch.dtype, cache_dtype: torch.dtype, heads: int, kv_heads: int, head_dim: int
) -> None:
    """Requests of 1 position, part of a block, exactly a block and several blocks, in scattered blocks,
    with queries that are a strided view (as the split of a fused projection gives). Both paths read the
    same rounded cache, so a float32 model over a 16-bit cache agrees to float32 rounding."""
    assert cpu_kernels.load()
    torch.manual_seed(0)
    lengths = torch.tensor([1, 7, BLOCK, 3 * BLOCK + 5])
    width = math.ceil(int(lengths.max()) / BLOCK)
    cache = torch.randn(2, kv_heads, 40, BLOCK, head_dim).to(cache_dtype)
    tables = torch.randperm(40)[: len(lengths) * width].view(len(lengths), width)
    fused = torch.randn(len(lengths), heads + 2 * kv_heads, head_dim).to(dtype)
    query, key, value = fused.split([heads, kv_heads, kv_heads], dim=1)
    assert not query.is_contiguous()
    scale = head_dim**-0.5

    expected = paged_attention(
        query, key, value, cache.clone(), _decode_meta(tables, lengths, cache, True), scale
    )
    got = paged_attention(
        query, key, value, cache.clone(), _decode_meta(tables, lengths, cache, False), scale
    )
    assert got.dtype == dtype and got.shape == (len(lengths), heads, head_dim)
    torch.testing.assert_close(got.float(), expected.float(), atol=TOLERANCE[dtype], rtol=TOLERANCE[dtype])
    # A request of one position attends only to its own value, as cached (block 0 padding is never read).
    own_value = as_cached(value[0], cache_dtype).repeat_interleave(heads // kv_heads, dim=0)
    torch.testing.assert_close(got[0].float(), own_value.float(), atol=TOLERANCE[dtype], rtol=0)
    # No position at all (no decode has that; the kernel answers zeros rather than reading garbage).
    empty = torch.full_like(got, 7.0)
    cpu_kernels.paged_decode_attention(empty, query, cache, tables, torch.zeros_like(lengths), scale)
    assert torch.count_nonzero(empty) == 0


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [64, 128])
@pytest.mark.parametrize("group", [2, 4, 5, 6, 8])
def test_a_kv_head_s_query_heads_come_out_as_with_the_kv_head_each_alone(
    dtype: torch.dtype, head_dim: int, group: int
) -> None:
    """The values' weighted sums run several query heads of a kv head together (as many as the vector
    registers hold): each head's answer is bit for bit what it is with a copy of the kv head to itself."""
    assert cpu_kernels.load()
    torch.manual_seed(group)
    kv_heads, blocks = 2, 24
    lengths = torch.tensor([1, 7, BLOCK, 3 * BLOCK + 5])
    width = math.ceil(int(lengths.max()) / BLOCK)
    tables = torch.randperm(blocks)[: len(lengths) * width].view(len(lengths), width)
    cache = torch.randn(2, kv_heads, blocks, BLOCK, head_dim).to(dtype)
    query = torch.randn(len(lengths), kv_heads * group, head_dim).to(dtype)
    scale = head_dim**-0.5
    grouped, alone = torch.empty_like(query), torch.empty_like(query)
    with torch_threads(1):  # whole contexts: a split would sum the parts in another order
        cpu_kernels.paged_decode_attention(grouped, query, cache, tables, lengths, scale)
        copies = cache.repeat_interleave(group, dim=1).contiguous()
        cpu_kernels.paged_decode_attention(alone, query, copies, tables, lengths, scale)
    assert torch.equal(grouped, alone)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_one_request_s_context_is_split_among_the_threads_and_merged(dtype: torch.dtype) -> None:
    """Fewer (request, kv head) pairs than the threads share evenly (one request's 3 kv heads on 2 or 4
    threads; two requests' 6 on 4) split each context into parts, merged after: the gathered path's
    answer to rounding, though not its summation order; a request with no position among them still
    answers zeros. One thread takes each context whole."""
    assert cpu_kernels.load()
    torch.manual_seed(1)
    heads, kv_heads, head_dim, blocks = 9, 3, 64, 48
    cache = torch.randn(2, kv_heads, blocks, BLOCK, head_dim).to(dtype)
    scale = head_dim**-0.5
    cases = []
    for lengths in (torch.tensor([300]), torch.tensor([0, 21 * BLOCK + 3])):
        width = math.ceil(int(lengths.max()) / BLOCK)
        tables = torch.randperm(blocks)[: len(lengths) * width].view(len(lengths), width)
        query = torch.randn(len(lengths), heads + 2 * kv_heads, head_dim).to(dtype)[:, :heads]
        cases.append((lengths, tables, query))
    answers = {}
    for count in (1, 2, 4):
        for lengths, tables, query in cases:
            got = torch.full((len(lengths), heads, head_dim), 7.0, dtype=dtype)
            with torch_threads(count):
                cpu_kernels.paged_decode_attention(got, query, cache, tables, lengths, scale)
            live = lengths > 0
            reference = _reference_decode_attention(query[live], cache, tables[live], lengths[live], scale)
            tolerance = TOLERANCE[dtype]
            torch.testing.assert_close(got[live].float(), reference, atol=tolerance, rtol=tolerance)
            assert torch.count_nonzero(got[~live]) == 0
            answers[count, len(lengths)] = got
    # The same inputs: merged parts are the whole context's answer in another order of sums, not the
    # same bits in float32 (the parts did run); bfloat16's rounding of the outputs hides the difference.
    if dtype == torch.float32:
        assert not torch.equal(answers[1, 1], answers[2, 1])
        assert not torch.equal(answers[1, 1], answers[4, 1])


def _reference_decode_attention(
    query: torch.Tensor, cache: torch.Tensor, tables: torch.Tensor, lengths: torch.Tensor, scale: float
) -> torch.Tensor:
    """Each request's query against its first positions of the cache, in float32, by SDPA."""
    out = []
    group = query.shape[1] // cache.shape[1]
    for q, table, n in zip(query, tables, lengths.tolist(), strict=True):
        keys, values = (cache[i][:, table].flatten(1, 2)[:, :n].float() for i in (0, 1))
        keys, values = keys.repeat_interleave(group, 0), values.repeat_interleave(group, 0)
        out.append(F.scaled_dot_product_attention(q.float()[:, None], keys, values, scale=scale)[:, 0])
    return torch.stack(out)


def test_a_cache_wider_than_or_unlike_the_computation_is_refused() -> None:
    """And one of another head size than the query's, and tables that point outside it."""
    assert cpu_kernels.load()
    assert not cpu_kernels.cache_dtype_fits(torch.bfloat16, torch.float32)
    assert not cpu_kernels.cache_dtype_fits(torch.float16, torch.bfloat16)
    query = torch.randn(1, 2, 64, dtype=torch.bfloat16)
    cache = torch.zeros(2, 1, 2, BLOCK, 64)
    one = torch.ones(1, dtype=torch.long)
    with pytest.raises(RuntimeError, match="bfloat16 or float16 under float32"):
        cpu_kernels.paged_decode_attention(
            torch.empty_like(query), query, cache, one.view(1, 1) * 0, one, 1.0
        )
    narrower = torch.zeros(2, 1, 2, BLOCK, 32, dtype=torch.bfloat16)  # another head size: refused, not read
    with pytest.raises(RuntimeError, match="of the query's head size"):
        cpu_kernels.paged_decode_attention(
            torch.empty_like(query), query, narrower, one.view(1, 1) * 0, one, 1.0
        )
    # A context longer than its table holds, or a table entry past the cache: refused, not read.
    same = torch.zeros(2, 1, 2, BLOCK, 64, dtype=torch.bfloat16)
    with pytest.raises(RuntimeError, match=f"context of {BLOCK + 1} positions does not fit its block table"):
        cpu_kernels.paged_decode_attention(
            torch.empty_like(query), query, same, one.view(1, 1) * 0, one * (BLOCK + 1), 1.0
        )
    with pytest.raises(RuntimeError, match="block 2 of request 0 is outside the KV cache"):
        cpu_kernels.paged_decode_attention(torch.empty_like(query), query, same, one.view(1, 1) * 2, one, 1.0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("rows", [1, 33])
def test_rms_norm_and_the_fused_residual_add_match_torch(dtype: torch.dtype, rows: int) -> None:
    assert cpu_kernels.load()
    torch.manual_seed(0)
    norm = RMSNorm(576, 1e-5).to(dtype)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
    x, residual = torch.randn(rows, 576).to(dtype), torch.randn(rows, 576).to(dtype)
    tol = TOLERANCE[dtype]
    with torch.inference_mode():
        reference = F.rms_norm(x.float(), (576,), norm.weight.float(), 1e-5)
        torch.testing.assert_close(norm(x).float(), reference, atol=tol, rtol=tol)

        total = residual + x  # rounded to dtype, as the next layer reads the stream
        normed, stream = norm.add_forward(x.clone(), residual.clone())
        assert torch.equal(stream, total)
        torch.testing.assert_close(
            normed.float(), F.rms_norm(total.float(), (576,), norm.weight.float(), 1e-5), atol=tol, rtol=tol
        )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_silu_mul_matches_torch(dtype: torch.dtype) -> None:
    """Including gates far below zero, where exp(-gate) would overflow float32."""
    assert cpu_kernels.load()
    torch.manual_seed(0)
    gate_up = (torch.randn(5, 2 * 1536) * 4).to(dtype)
    gate_up[0, :4] = torch.tensor([-200.0, -89.0, 0.0, 200.0]).to(dtype)
    gate, up = gate_up.float().chunk(2, dim=-1)
    got = cpu_kernels.silu_mul(gate_up)
    assert got.dtype == dtype and got.shape == (5, 1536)
    tol = TOLERANCE[dtype]
    torch.testing.assert_close(got.float(), F.silu(gate) * up, atol=tol, rtol=tol)


def test_the_model_gives_the_same_logits_with_and_without_the_kernels(
    smollm2_folder: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The packaged model in float32, a prefill then decodes of two requests: the kernels' logits and
    the composite operators' agree to float32 rounding."""
    from transformers import AutoConfig

    from shared_engine.model_runner import ModelRunner, Segment
    from shared_engine.models.loader import build_decoder, iter_safetensors

    model = build_decoder(
        AutoConfig.from_pretrained(smollm2_folder), iter_safetensors(smollm2_folder), CPU, torch.float32
    )
    prompts = [[1, 504, 3458, 282, 4649, 314], [2, 1068, 28, 7, 1]]

    def run() -> torch.Tensor:
        runner = ModelRunner(model, num_blocks=8, block_size=BLOCK, device=CPU, dtype=torch.float32)
        blocks = [[0, 1], [2, 3]]
        first = runner.last_logits([Segment(b, 0, p) for b, p in zip(blocks, prompts, strict=True)])
        steps = [first]
        tokens = first.argmax(-1).tolist()
        lengths = [len(p) for p in prompts]
        for _ in range(4):
            segments = [Segment(b, n, [t]) for b, n, t in zip(blocks, lengths, tokens, strict=True)]
            steps.append(runner.last_logits(segments))
            tokens, lengths = steps[-1].argmax(-1).tolist(), [n + 1 for n in lengths]
        return torch.stack(steps)

    assert cpu_kernels.load()
    with_kernels = run()
    monkeypatch.setenv(cpu_kernels.KERNELS_ENV, "0")
    cpu_kernels.load.cache_clear()
    try:
        composite = run()
    finally:
        cpu_kernels.load.cache_clear()
    torch.testing.assert_close(with_kernels, composite, atol=2e-3, rtol=1e-4)


_NO_COMPILER_SCRIPT = """
import json, logging, torch
logging.basicConfig(level=logging.WARNING)
from shared_engine import cpu_kernels
from shared_engine.cpu_kernels import build_lock
from shared_engine.attention import gathered_decode
print(json.dumps({"loaded": cpu_kernels.load(), "gathered": gathered_decode(torch.device("cpu"))}))
"""


def test_without_a_compiler_the_engine_falls_back_to_torch_operators(tmp_path: Path) -> None:
    """A machine with no C++ compiler (``CXX`` pointing at a failing command, an empty extension cache):
    the kernels are unavailable, the warning says so, and decodes take the gathered path."""
    env = {**os.environ, "CXX": "/bin/false", "TORCH_EXTENSIONS_DIR": str(tmp_path)}
    env.pop(cpu_kernels.KERNELS_ENV, None)
    done = subprocess.run(
        [sys.executable, "-c", _NO_COMPILER_SCRIPT],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == {"loaded": False, "gathered": True}
    assert "CPU kernels unavailable, using composite torch operators" in done.stderr


def _bf16_logits(rows: int, vocab: int) -> torch.Tensor:
    """Logits rounded through bf16, as a bf16 model's are: many equal values, also at the k-th largest."""
    torch.manual_seed(0)
    return (torch.randn(rows, vocab) * 3).bfloat16().float()


@pytest.mark.parametrize("rows", [1, 5])
def test_softmax_head_is_the_distribution_s_top_k_with_the_first_of_equal_values(rows: int) -> None:
    assert cpu_kernels.load()
    logits = _bf16_logits(rows, 49152)
    logits[:, 11] = float("-inf")  # a masked token: probability 0, in neither part
    inverse = torch.tensor([1.0, 1.4, 0.5, 2.0, 1.0][:rows])
    head, ids, tail = cpu_kernels.softmax_head(logits, inverse, 1024)
    probs = torch.softmax(logits * inverse.unsqueeze(-1), dim=-1)
    torch.testing.assert_close(head, probs.gather(1, ids), rtol=1e-5, atol=1e-9)
    rest = probs.scatter(1, ids, 0.0).sum(dim=-1)
    torch.testing.assert_close(tail, rest, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(head.sum(dim=-1) + tail, torch.ones(rows), rtol=0, atol=1e-5)
    for r in range(rows):
        chosen = set(ids[r].tolist())
        kth = float(logits[r, ids[r]].min())
        assert chosen >= set((logits[r] > kth).nonzero().flatten().tolist())
        tied = (logits[r] == kth).nonzero().flatten().tolist()
        taken = sorted(i for i in chosen if logits[r, i] == kth)
        assert 0 < len(taken) < len(tied) and taken == tied[: len(taken)]
        assert 11 not in chosen
    top = cpu_kernels.softmax_head(logits[:1], inverse[:1], 1)
    assert top[1].item() == int(logits[0].argmax())


def test_softmax_head_gives_a_row_the_same_bits_wherever_it_lies() -> None:
    """Alone or among others, at an offset that is no multiple of a vector (an odd vocabulary)."""
    assert cpu_kernels.load()
    logits = _bf16_logits(7, 32003)
    inverse = torch.linspace(0.5, 2.0, 7)
    batch = cpu_kernels.softmax_head(logits, inverse, 256)
    for r in (0, 3, 6):
        alone = cpu_kernels.softmax_head(logits[r : r + 1].clone(), inverse[r : r + 1], 256)
        for together, single in zip(batch, alone, strict=True):
            assert torch.equal(together[r], single[0])


def test_argmax_rows_is_torch_argmax_ties_nan_and_infinities_included() -> None:
    """The greedy sampler's kernel gives torch.argmax's answer: of equal values the first, a NaN (either
    sign) the largest, -0 equal to +0, a row of -inf its first token, and rows of bf16-rounded logits, where
    ties are common, in a vocabulary that is no multiple of a vector or of the kernel's chunks."""
    assert cpu_kernels.load()
    torch.manual_seed(0)
    logits = _bf16_logits(9, 32003)
    logits[1, 70] = logits[1, 20_000] = 80.0  # a tie in different chunks
    logits[2, 100] = float("nan")
    logits[2, 50] = -float("nan")
    logits[3] = float("-inf")
    logits[4, 3] = logits[4, 32002] = float("inf")
    logits[5] = -0.0
    logits[5, 9] = 0.0
    logits[6] = -(logits[6].abs() + 1.0)  # every value negative
    logits[7, 32002] = 90.0  # the last entry, in the last partial chunk
    got = cpu_kernels.argmax_rows(logits)
    assert torch.equal(got, logits.argmax(dim=-1))
    assert got[:6].tolist() == [int(logits[0].argmax()), 70, 50, 0, 3, 0] and got[7] == 32002
    tiny = torch.finfo(torch.float32).smallest_normal / 4  # a subnormal
    small = torch.tensor(
        [[-tiny, -0.0, -1.0], [0.0, tiny, -tiny], [-float("inf"), -3e38, -float("inf")], [1.0, 1.0, -0.0]]
    )
    assert cpu_kernels.argmax_rows(small).tolist() == small.argmax(dim=-1).tolist() == [1, 1, 1, 0]
    assert cpu_kernels.argmax_rows(torch.tensor([[-float("nan")]])).item() == 0
    with pytest.raises(RuntimeError, match="vocab > 0"):
        cpu_kernels.argmax_rows(logits[:, :0])


@pytest.mark.parametrize(("dtype", "cache_dtype"), DTYPE_PAIRS[:2] + DTYPE_PAIRS[3:4], ids=str)
def test_rotary_cache_write_matches_apply_rotary_and_write_kv(
    smollm2_folder: Path, dtype: torch.dtype, cache_dtype: torch.dtype
) -> None:
    """The packaged model's rotary tables (float32 even in a bf16 model) on a fused projection of tokens at
    scattered positions: rotated queries and keys, untouched values, and keys and values in their slots."""
    from transformers import AutoConfig

    from shared_engine.attention import write_kv
    from shared_engine.models.base import DecoderArch
    from shared_engine.models.llama import RotaryEmbedding, apply_rotary
    from shared_engine.models.loader import arch_from_hf_config

    assert cpu_kernels.load()
    arch: DecoderArch = arch_from_hf_config(AutoConfig.from_pretrained(smollm2_folder))
    rotary = RotaryEmbedding(arch).to(dtype)
    assert rotary.cos.dtype == torch.float32 and rotary.signed_sin.dtype == torch.float32
    heads, kv_heads, dim = arch.num_heads, arch.num_kv_heads, arch.head_dim
    torch.manual_seed(0)
    positions = torch.tensor([0, 5, 17, 300, 2047])
    slots = torch.tensor([3, 40, 7, 22, 63])
    qkv = torch.randn(len(positions), (heads + 2 * kv_heads) * dim).to(dtype)
    rope = rotary(positions, dtype)

    cache, expected_cache = (torch.zeros(2, kv_heads, 4, BLOCK, dim, dtype=cache_dtype) for _ in range(2))
    qk, v = qkv.split([(heads + kv_heads) * dim, kv_heads * dim], dim=-1)
    rotated = apply_rotary(qk.reshape(len(positions), heads + kv_heads, dim), rope)
    write_kv(rotated[:, heads:], v.reshape(len(positions), kv_heads, dim), expected_cache, slots)

    fused = qkv.clone()
    cpu_kernels.rotary_cache_write_(fused, rope, cache, slots, heads, kv_heads)
    tol = TOLERANCE[dtype]
    got = fused.view(len(positions), -1, dim)
    torch.testing.assert_close(got[:, : heads + kv_heads].float(), rotated.float(), atol=tol, rtol=tol)
    assert torch.equal(got[:, heads + kv_heads :], v.reshape(len(positions), kv_heads, dim))
    # A value rounds to the same 16-bit neighbours unless float32 rounding moved it across a midpoint.
    cache_tol = TOLERANCE[cache_dtype]
    torch.testing.assert_close(cache.float(), expected_cache.float(), atol=cache_tol, rtol=cache_tol)
    assert torch.count_nonzero(cache[0].reshape(kv_heads, -1, dim)[:, slots].abs().sum(-1)) == kv_heads * 5
    # A position past the tables or a slot past the cache is refused, not read or written.
    far, outside = positions.clone(), slots.clone()
    far[2], outside[4] = rotary.cos.shape[0], cache.shape[2] * BLOCK
    with pytest.raises(RuntimeError, match=f"position {int(far[2])} is outside the rotary tables"):
        far_rope = rope._replace(positions=far)
        cpu_kernels.rotary_cache_write_(qkv.clone(), far_rope, cache, slots, heads, kv_heads)
    with pytest.raises(RuntimeError, match=f"slot {int(outside[4])} is outside the KV cache"):
        cpu_kernels.rotary_cache_write_(qkv.clone(), rope, cache, outside, heads, kv_heads)


def test_torch_compile_traces_through_the_kernels_in_one_graph() -> None:
    """What benchmarks/compile.py's opaque-attention variant needs: the switch is a constant to dynamo
    and the in-place kernels have fake implementations, so a full graph compiles and agrees with eager."""
    assert cpu_kernels.load()
    torch.manual_seed(0)
    norm = RMSNorm(64, 1e-5)
    compiled = torch.compile(norm.add_forward, fullgraph=True, backend="aot_eager")
    x, residual = torch.randn(3, 64), torch.randn(3, 64)
    with torch.inference_mode():
        got = compiled(x.clone(), residual.clone())
        want = norm.add_forward(x.clone(), residual.clone())
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])


def test_a_build_lock_left_by_a_killed_builder_does_not_block_the_next(tmp_path: Path) -> None:
    """torch's loader waits on a ``lock`` file its holder deletes when done; a builder killed mid-build
    leaves it. Under ``build_lock`` the next loader finds it stale (the OS lock died with its holder) and
    removes it, while a live builder's is left alone until it is done."""
    build_dir = tmp_path / "mmserve_cpu_kernels_test"
    killed = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from shared_engine.cpu_kernels import build_lock\n"
        "with build_lock(Path(sys.argv[1])):\n"
        "    (Path(sys.argv[1]) / 'lock').touch()  # as torch's loader does when it starts building\n"
        "    os.kill(os.getpid(), 9)\n"
    )
    done = subprocess.run([sys.executable, "-c", killed, str(build_dir)], cwd=REPO, check=False)
    assert done.returncode == -9 and (build_dir / "lock").exists()
    with build_lock(build_dir):
        assert not (build_dir / "lock").exists()
        (build_dir / "lock").touch()  # a live build's
        entered = threading.Event()
        waiter = threading.Thread(target=lambda: _enter_and_signal(build_dir, entered))
        waiter.start()
        assert not entered.wait(0.5)  # the next loader waits while this one builds
        (build_dir / "lock").unlink()  # torch removes its file when its build is done
    waiter.join(10)
    assert entered.is_set()


def _enter_and_signal(build_dir: Path, entered: threading.Event) -> None:
    with build_lock(build_dir):
        entered.set()
