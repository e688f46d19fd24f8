"""Does ``torch.compile`` make the engine's decode step faster? Eager against compiled, same weights.

The model is built once (the packaged chat model, as ``benchmarks/roofline.py`` builds it) and each
variant runs in its own ``LLMEngine`` over its own copy, without touching the engine's code:

- ``eager``: the model as the engine runs it.
- ``forward``: the whole ``model.forward`` (all layers, paged attention included) compiled with
  ``dynamic=True``, called for pure-decode steps only; steps with a prefill chunk run eagerly (their
  Python list of chunks would compile one graph per chunk layout).
- ``forward-all``: the same compiled forward for every step, prefills too (recompiles per layout).
- ``mlp``: per layer, only the MLP and the two RMSNorms compiled (``module.compile(dynamic=True)``):
  the parts without data-dependent Python; attention stays eager.

Each compiled variant runs with each of ``--modes`` (``default``, ``max-autotune-no-cudagraphs``, ...).
Compilation is lazy: the warm-up (a short generation at each batch size) compiles, and its wall time
minus the eager warm-up's is the compile cost, cold by default (a fresh inductor cache directory).
Graphs, graph breaks (``torch._dynamo.utils.counters``) and recompiles (the ``recompiles`` log, with
the guard that failed) are counted per variant, in the warm-up and after it.

Decode: ``--batches`` requests at once of ``--prompt-len`` tokens of Python's LICENSE.txt,
``--output-len`` tokens each, greedy, ``ignore_eos``, prefix caching off; tokens/s counts the tokens
generated after every request has its first token (pure decode). Variants are interleaved over
``--rounds`` rounds (the order rotating each round); the median is reported, with the CPU other
processes took during each run (``benchmarks.noise.CpuMeter``).

Correctness: the greedy tokens of each compiled variant against eager's, in the engine's dtype (from
the first timed round; bfloat16 may differ by rounding), and exactly in ``--check-dtype`` (float32 by
default: a second set of models and compiles) on ``--check-prompts`` prompts of different lengths.

    .venv/bin/python benchmarks/compile.py [--threads 1] [--variants forward,mlp] [--modes default]
"""

from __future__ import annotations

import argparse
import copy
import logging
import math
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch._dynamo
import torch._dynamo.utils

from benchmarks import report
from benchmarks.chat_model import configured_chat_model
from benchmarks.noise import CpuMeter
from benchmarks.workload import default_corpus
from shared_engine.attention import AttentionMetadata
from shared_engine.config import CacheConfig, EngineConfig
from shared_engine.device import resolve_dtype
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.base import DecoderArch, DecoderModel
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.sampling_params import SamplingParams

BLOCK_SIZE = 16
KINDS = ("forward", "forward-all", "mlp")
Forward = Callable[[torch.Tensor, torch.Tensor, AttentionMetadata, list[torch.Tensor]], Any]


class RecompileLog(logging.Handler):
    """Collects dynamo's ``recompiles`` log records, each tagged with the variant running then."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.tag = ""
        self.records: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append((self.tag, record.getMessage()))


def summarize_recompile(message: str) -> str:
    """``function file:line: first failed guard`` from a recompile message."""
    lines = [ln.strip() for ln in message.splitlines()]
    head = lines[0].removeprefix("Recompiling function ") if lines else ""
    head = head.replace(str(Path(__file__).resolve().parent.parent) + os.sep, "")
    guard = next((ln.removeprefix("- ") for ln in lines if ln.startswith("- ") and "/" in ln[:8]), "?")
    return f"{head}: {guard.split(' (user code shown')[0]}"


class Variant:
    """A model copy the engine runs, with ``forward`` as the variant makes it."""

    def __init__(self, name: str, kind: str, mode: str, model: DecoderModel) -> None:
        self.name = name
        self.kind = kind
        self.mode = mode
        self.inner = model
        self.arch: DecoderArch = model.arch
        self._forward: Forward = model.forward
        self._compiled: Forward | None = None
        kwargs: dict[str, Any] = {"dynamic": True} | ({} if mode == "default" else {"mode": mode})
        if kind in ("forward", "forward-all"):
            self._compiled = torch.compile(model.forward, **kwargs)
        elif kind == "mlp":
            inner: Any = model
            for layer in inner.model.layers:
                layer.mlp.compile(**kwargs)
                layer.input_layernorm.compile(**kwargs)
                layer.post_attention_layernorm.compile(**kwargs)
        elif kind != "eager":
            raise ValueError(f"unknown variant {kind!r}; known: eager, {', '.join(KINDS)}")

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        kv_caches: list[torch.Tensor],
    ) -> torch.Tensor:
        fn = self._forward
        if self._compiled is not None and (self.kind == "forward-all" or not meta.prefills):
            fn = self._compiled
        out: torch.Tensor = fn(input_ids, positions, meta, kv_caches)
        return out

    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.inner.compute_logits(hidden)

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        self.inner.load_weights(weights)


def make_engine(
    variant: Variant, tokenizer: Any, blocks: int, device: torch.device, dtype: torch.dtype
) -> LLMEngine:
    cache = CacheConfig(block_size=BLOCK_SIZE, num_blocks=blocks, enable_prefix_caching=False)
    return LLMEngine(variant, tokenizer, EngineConfig(cache=cache), device, dtype, frozenset())


def decode_run(engine: LLMEngine, tag: str, prompts: list[list[int]], output_len: int) -> dict[str, Any]:
    """All requests at once; tokens/s from the step where the last one got its first token to the end.
    Also the token ids generated, per request."""
    meter = CpuMeter([os.getpid()])
    ids = [f"{tag}-{i}" for i in range(len(prompts))]
    params = SamplingParams(output_len, temperature=0.0, ignore_eos=True)
    for rid, prompt in zip(ids, prompts, strict=True):
        engine.add_request(rid, prompt, params)
    tokens: dict[str, list[int]] = {rid: [] for rid in ids}
    started = time.perf_counter()
    decode_start: float | None = None
    decoded = steps = 0
    end = started
    while engine.has_unfinished_requests():
        outs = engine.step()
        end = time.perf_counter()
        for o in outs:
            tokens[o.request_id].extend(o.token_ids)
        if decode_start is not None:
            decoded += sum(len(o.token_ids) for o in outs)
            steps += 1
        elif all(tokens.values()):
            decode_start = end
    if decode_start is None or end <= decode_start:
        raise RuntimeError("no decode steps: raise --output-len")
    cpu = meter.read()
    return {
        "decode_tok_s": round(decoded / (end - decode_start), 2),
        "step_ms": round((end - decode_start) / steps * 1e3, 3),
        "decode_steps": steps,
        "prefill_s": round(decode_start - started, 3),
        "our_cores": cpu["our_cores"],
        "other_cores": cpu["other_cores"],
        "token_ids": [tokens[rid] for rid in ids],
    }


def agreement(ours: list[list[int]], ref: list[list[int]]) -> dict[str, Any]:
    """How many sequences equal the reference, and the mean share of each that matches before the first
    difference."""
    prefixes = []
    for a, b in zip(ours, ref, strict=True):
        n = next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))
        prefixes.append(n / max(len(b), 1))
    return {
        "identical": sum(a == b for a, b in zip(ours, ref, strict=True)),
        "sequences": len(ref),
        "mean_matching_prefix": round(statistics.mean(prefixes), 4),
    }


def dynamo_snapshot() -> dict[str, Any]:
    c = torch._dynamo.utils.counters
    return {
        "graphs": int(c["stats"]["unique_graphs"]),
        "frames": int(c["frames"]["total"]),
        "graph_breaks": Counter({str(k): int(v) for k, v in c["graph_break"].items()}),
    }


def dynamo_delta(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    breaks = after["graph_breaks"] - before["graph_breaks"]
    return {
        "graphs": after["graphs"] - before["graphs"],
        "frames": after["frames"] - before["frames"],
        "graph_breaks": sum(breaks.values()),
        "graph_break_reasons": dict(breaks),
    }


def warm_up(
    engine: LLMEngine, prompts: list[list[int]], batches: list[int], tokens: int, log: RecompileLog, tag: str
) -> dict[str, Any]:
    """A short generation at each batch size (this is where compiling happens); its wall time and what
    dynamo did."""
    log.tag = tag
    before = dynamo_snapshot()
    start = time.perf_counter()
    for b in batches:
        engine.generate(prompts[:b], SamplingParams(tokens, temperature=0.0, ignore_eos=True))
    return {"warmup_s": round(time.perf_counter() - start, 2), **dynamo_delta(before, dynamo_snapshot())}


def correctness_check(
    model: DecoderModel,
    specs: list[tuple[str, str, str]],
    tokenizer: Any,
    prompts: list[list[int]],
    tokens: int,
    device: torch.device,
    dtype: torch.dtype,
    log: RecompileLog,
) -> dict[str, Any]:
    """Greedy outputs of each compiled variant against eager's, all prompts at once, in ``dtype``."""
    blocks = len(prompts) * math.ceil((max(map(len, prompts)) + tokens) / BLOCK_SIZE) + 8
    params = SamplingParams(tokens, temperature=0.0, ignore_eos=True)
    eager = make_engine(Variant("eager", "eager", "default", model), tokenizer, blocks, device, dtype)
    ref = eager.generate(prompts, params)
    out: dict[str, Any] = {
        "dtype": str(dtype).removeprefix("torch."),
        "prompt_lens": [len(p) for p in prompts],
        "tokens": tokens,
        "variants": {},
    }
    for name, kind, mode in specs:
        log.tag = f"{name} (check)"
        before = dynamo_snapshot()
        start = time.perf_counter()
        try:
            v = Variant(name, kind, mode, copy.deepcopy(model))
            got = make_engine(v, tokenizer, blocks, device, dtype).generate(prompts, params)
        except Exception as e:  # report the failure, go on with the others
            out["variants"][name] = {"error": f"{type(e).__name__}: {e}"}
            continue
        out["variants"][name] = {
            **agreement(got, ref),
            "wall_s": round(time.perf_counter() - start, 2),
            **dynamo_delta(before, dynamo_snapshot()),
        }
    return out


def fmt_ratio(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}x"


def format_table(payload: dict[str, Any]) -> str:
    m = payload["machine"]
    batches = payload["batches"]
    head = ["variant", "warm-up s", "compile s", "graphs", "recompiles", "breaks"]
    for b in batches:
        head += [f"b{b} tok/s", f"b{b} step ms", f"b{b} vs eager"]
    head += [f"{payload['dtype_name']} same", f"{payload['check'].get('dtype', '-')} same"]
    rows = [head]
    for v in payload["variants"]:
        row = [
            v["name"],
            f"{v['warmup_s']:.1f}" if v.get("warmup_s") is not None else "-",
            f"{v['compile_s']:.1f}" if v.get("compile_s") is not None else "-",
            str(v.get("graphs", "-")),
            f"{v.get('recompiles', '-')}+{v.get('recompiles_after_warmup', '-')}",
            str(v.get("graph_breaks", "-")),
        ]
        for b in batches:
            d = v["decode"].get(str(b))
            row += (
                [f"{d['decode_tok_s']:,.1f}", f"{d['step_ms']:,.1f}", fmt_ratio(d.get("speedup"))]
                if d
                else ["-", "-", "-"]
            )
        same = [
            f"{a['identical']}/{a['sequences']}"
            for a in (v.get("agreement") or {}).values()
            if "identical" in a
        ]
        row.append(" ".join(same) or "ref")
        chk = payload["check"].get("variants", {}).get(v["name"])
        if v["name"] == "eager":
            row.append("ref")
        elif chk is None:
            row.append("-")
        else:
            row.append("error" if "error" in chk else f"{chk['identical']}/{chk['sequences']}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    lines = [
        f"{payload['model']}  {m['cpu_model']}, {m['cpus_usable']} cores, torch.get_num_threads() = "
        f"{m['torch_threads']}, torch {m['torch_version']}, {m['dtype']} on {m['device']}",
        f"load average before/after: {payload['loadavg_before']} / {payload['loadavg_after']}; other "
        f"processes' CPU during decode runs: median {payload['other_cores_median']} cores "
        f"(max {payload['other_cores_max']})",
        "",
    ]
    lines += ["  ".join(c.rjust(w) for c, w in zip(r, widths, strict=True)) for r in rows]
    lines += [
        "",
        f"decode: {payload['prompt_len']}-token prompts, {payload['output_len']} output tokens, greedy, "
        f"median of {payload['rounds']} interleaved rounds. compile s: warm-up minus eager's "
        f"({'cold' if payload['cold_cache'] else 'warm'} inductor cache).",
        "recompiles: in the warm-up + during the timed rounds; breaks: graph breaks. same: greedy "
        "sequences identical to eager's (per batch size; then the check in its dtype).",
    ]
    reasons = [(v["name"], r) for v in payload["variants"] for r in v.get("recompile_reasons", [])]
    if reasons:
        lines += ["", "recompiles (first failed guard):"]
        lines += [f"  {name}: {r}" for name, r in reasons]
    breaks = [
        (v["name"], k, n) for v in payload["variants"] for k, n in v.get("graph_break_reasons", {}).items()
    ]
    if breaks:
        lines += ["", "graph breaks:"] + [f"  {name}: {n} x {k}" for name, k, n in breaks]
    errors = [(v["name"], v["error"]) for v in payload["variants"] if v.get("error")]
    errors += [
        (f"{k} (check)", c["error"]) for k, c in payload["check"].get("variants", {}).items() if "error" in c
    ]
    if errors:
        lines += ["", "errors:"] + [f"  {name}: {e}" for name, e in errors]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--threads", type=int, default=1, help="torch threads (default 1; 0: torch's)")
    p.add_argument("--device", default=None, help="default: the model's configured device (auto)")
    p.add_argument("--dtype", default="bfloat16", help="the engine's dtype (auto: the engine's choice)")
    p.add_argument("--variants", default="forward,mlp", help=f"compiled variants: {', '.join(KINDS)}")
    p.add_argument("--modes", default="default", help="torch.compile modes, e.g. max-autotune-no-cudagraphs")
    p.add_argument("--freezing", action="store_true", help="torch._inductor.config.freezing = True")
    p.add_argument("--batches", default="1,32", help="decode batch sizes")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--output-len", type=int, default=64)
    p.add_argument("--rounds", type=int, default=3, help="interleaved timed rounds (median)")
    p.add_argument("--warmup-tokens", type=int, default=4, help="output tokens of each warm-up generation")
    p.add_argument("--check-dtype", default="float32", help="dtype of the exact check ('none' to skip)")
    p.add_argument("--check-prompts", type=int, default=4, help="prompts in the check, of different lengths")
    p.add_argument("--check-tokens", type=int, default=32, help="output tokens per prompt in the check")
    p.add_argument(
        "--recompile-limit",
        type=int,
        default=64,
        help="torch._dynamo.config.recompile_limit (torch's default is 8): the variants share code "
        "objects (MLP.forward, RMSNorm.forward, ...), whose cache entries add up in one process",
    )
    p.add_argument("--warm-cache", action="store_true", help="keep inductor's usual cache (default: fresh)")
    p.add_argument("--dynamo-logs", action="store_true", help="also print dynamo's recompile log to stderr")
    args = p.parse_args(argv)
    if args.output_len < 2 or args.rounds < 1 or args.warmup_tokens < 2:
        p.error("--output-len and --warmup-tokens must be >= 2, --rounds >= 1")
    cache_dir = None if args.warm_cache else tempfile.mkdtemp(prefix="torchinductor-compile-bench-")
    if cache_dir is not None:  # a cold compile: nothing from earlier runs (removed afterwards)
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    try:
        return run(args, p)
    finally:
        if cache_dir is not None:
            shutil.rmtree(cache_dir, ignore_errors=True)


def run(args: argparse.Namespace, p: argparse.ArgumentParser) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    torch._dynamo.config.recompile_limit = args.recompile_limit
    if args.freezing:
        import torch._inductor.config as inductor_config

        inductor_config.freezing = True
    log = RecompileLog()
    torch._logging.set_logs(recompiles=True)
    recompile_logger = logging.getLogger("torch._dynamo.guards.__recompiles")
    recompile_logger.addHandler(log)
    recompile_logger.propagate = args.dynamo_logs
    print(f"torch.get_num_threads() = {torch.get_num_threads()}, torch {torch.__version__}", flush=True)

    chat = configured_chat_model(args.device, args.dtype)
    spec, folder, device, dtype, tokenizer = chat.spec, chat.folder, chat.device, chat.dtype, chat.tokenizer
    hf_config = chat.hf_config
    model = chat.build()
    batches = [int(b) for b in args.batches.split(",")]
    kinds = [k.strip() for k in args.variants.split(",") if k.strip()]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    specs = [(k if m == "default" else f"{k}/{m}", k, m) for k in kinds for m in modes]
    loadavg_before = os.getloadavg()

    corpus = tokenizer.encode(default_corpus().read_text(encoding="utf-8"), add_special_tokens=False)
    span = len(corpus) - args.prompt_len
    if span < 1:
        p.error(f"--prompt-len must be below the corpus length ({len(corpus)} tokens)")
    prompts = [corpus[(i * 97) % span :][: args.prompt_len] for i in range(max(batches))]
    blocks = max(batches) * math.ceil((args.prompt_len + args.output_len) / BLOCK_SIZE) + 8

    # Every copy is taken before anything is compiled: each variant has its own modules.
    variants = [Variant("eager", "eager", "default", model)]
    results: dict[str, dict[str, Any]] = {"eager": {"name": "eager", "kind": "eager", "mode": "-"}}
    for name, kind, mode in specs:
        variants.append(Variant(name, kind, mode, copy.deepcopy(model)))
        results[name] = {"name": name, "kind": kind, "mode": mode}
    engines: dict[str, LLMEngine] = {}
    for v in variants:
        engines[v.name] = make_engine(v, tokenizer, blocks, device, dtype)
        print(f"warm-up {v.name} ...", flush=True)
        try:
            results[v.name].update(
                warm_up(engines[v.name], prompts, batches, args.warmup_tokens, log, v.name)
            )
        except Exception as e:  # report the failure, time the others
            results[v.name]["error"] = f"{type(e).__name__}: {e}"
            print(f"  {v.name} failed: {results[v.name]['error']}", flush=True)
            del engines[v.name]
            continue
        r = results[v.name]
        r["recompiles"] = sum(1 for tag, _ in log.records if tag == v.name)
        if v.name != "eager":
            r["compile_s"] = round(r["warmup_s"] - results["eager"]["warmup_s"], 2)
        print(f"  {r['warmup_s']:.1f} s, {r['graphs']} graphs, {r['recompiles']} recompiles", flush=True)

    runs: dict[str, dict[int, list[dict[str, Any]]]] = {name: {b: [] for b in batches} for name in engines}
    names = list(engines)
    for rnd in range(args.rounds):
        order = names[rnd % len(names) :] + names[: rnd % len(names)]
        for b in batches:
            for name in order:
                log.tag = f"{name} (timed)"
                run = decode_run(engines[name], f"{name}-b{b}-r{rnd}", prompts[:b], args.output_len)
                runs[name][b].append(run)
                print(
                    f"round {rnd + 1}/{args.rounds} batch {b} {name}: {run['decode_tok_s']:,.1f} tok/s "
                    f"(others {run['other_cores']} cores)",
                    flush=True,
                )
    for name in names:
        r = results[name]
        r["recompiles_after_warmup"] = sum(1 for tag, _ in log.records if tag == f"{name} (timed)")
        r["recompile_reasons"] = [
            summarize_recompile(msg) for tag, msg in log.records if tag in (name, f"{name} (timed)")
        ]
        r["decode"] = {}
        r["agreement"] = {}
        for b in batches:
            tok_s = statistics.median(x["decode_tok_s"] for x in runs[name][b])
            eager = (
                statistics.median(x["decode_tok_s"] for x in runs["eager"][b]) if "eager" in runs else None
            )
            r["decode"][str(b)] = {
                "decode_tok_s": round(tok_s, 2),
                "step_ms": round(statistics.median(x["step_ms"] for x in runs[name][b]), 3),
                "speedup": round(tok_s / eager, 3) if eager else None,
                "runs": [{k: v for k, v in x.items() if k != "token_ids"} for x in runs[name][b]],
            }
            if name != "eager" and "eager" in runs:
                r["agreement"][str(b)] = agreement(
                    runs[name][b][0]["token_ids"], runs["eager"][b][0]["token_ids"]
                )

    check: dict[str, Any] = {}
    if args.check_dtype != "none":
        check_dtype = resolve_dtype(args.check_dtype, device)
        print(f"correctness check in {check_dtype} ...", flush=True)
        check_model = (
            model
            if check_dtype == dtype
            else build_decoder(hf_config, iter_safetensors(folder), device, check_dtype)
        )
        n = args.check_prompts
        lens = [max(8, args.prompt_len * (n - i) // n) for i in range(n)]
        check_prompts = [corpus[(1000 + i * 131) % span :][:length] for i, length in enumerate(lens)]
        ok_specs = [s for s in specs if s[0] in engines]
        check = correctness_check(
            check_model, ok_specs, tokenizer, check_prompts, args.check_tokens, device, check_dtype, log
        )

    others = [
        x["other_cores"]
        for rs in runs.values()
        for b in rs.values()
        for x in b
        if x["other_cores"] is not None
    ]
    payload = {
        **report.run_header("compile", spec.name, device, dtype, loadavg_before),
        "dtype_name": str(dtype).removeprefix("torch."),
        "batches": batches,
        "prompt_len": args.prompt_len,
        "output_len": args.output_len,
        "rounds": args.rounds,
        "warmup_tokens": args.warmup_tokens,
        "modes": modes,
        "freezing": args.freezing,
        "cold_cache": not args.warm_cache,
        "recompile_limit": torch._dynamo.config.recompile_limit,
        "other_cores_median": statistics.median(others) if others else None,
        "other_cores_max": max(others) if others else None,
        "variants": list(results.values()),
        "check": check,
    }
    print()
    print(format_table(payload))
    print(f"results: {report.write_results(payload, name='compile')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
