"""Speech recognition real-time factor (processing seconds per second of audio; lower is better) at 1
and N concurrent requests: our pipeline (encoder micro-batched, decoder on the shared engine) against
faster-whisper (CTranslate2) on the very same weights, greedy decoding for both, in one run.

The audio is the packaged Piper voice reading passages of a real text, so word error rates against
the passages are reported too (a speed-up that broke transcripts would show there).

    .venv/bin/pip install -e '.[bench]'    # faster-whisper
    .venv/bin/python benchmarks/asr.py [--model whisper-tiny.en] [--clips 8] [--concurrency 8]

The voice reads with random variation, so each run hears different audio; ``--clips-file F.npz`` saves
the clips on the first run and reads them back on later ones, for comparisons on the very same audio.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import re
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from benchmarks import report
from benchmarks.quantization import parse_variant
from benchmarks.workload import corpus_words, default_corpus
from pipelines.asr import ASRPipeline, ASRPipelineConfig
from pipelines.asr.audio import resample
from pipelines.asr.loader import prepare_whisper_folder
from pipelines.sources import resolve_source
from pipelines.tts import TTSPipeline, TTSPipelineConfig
from services.config.models import ModelSpec, load_model_specs
from services.config.settings import Settings
from shared_engine.config import KV_CACHE_DTYPES, CacheConfig, EngineConfig
from shared_engine.quantization_config import QuantizationConfig


def spec_named(name: str) -> ModelSpec:
    return next(s for s in load_model_specs(Settings.from_env().models_config) if s.name == name)


def passages(count: int, words_each: int) -> list[str]:
    words = corpus_words(default_corpus())
    step = max(1, (len(words) - words_each) // count)
    return [" ".join(words[i * step : i * step + words_each]) for i in range(count)]


def synthesize(texts: list[str]) -> list[np.ndarray]:
    spec = next(s for s in load_model_specs(Settings.from_env().models_config) if s.task == "tts")
    tts = TTSPipeline(TTSPipelineConfig(spec.name, spec.source, spec.device))

    async def run() -> list[np.ndarray]:
        return [await tts.synthesize(t) for t in texts]

    try:
        return [resample(a, tts.sample_rate) for a in asyncio.run(run())]
    finally:
        tts.shutdown()


def wer(reference: str, hypothesis: str) -> float:
    ref, hyp = (re.findall(r"[a-z0-9']+", s.lower()) for s in (reference, hypothesis))
    row = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, start=1):
        prev, row[0] = row[0], i
        for j, h in enumerate(hyp, start=1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (r != h))
    return row[-1] / max(1, len(ref))


def _summary(
    wall: float, audio_s: float, texts: list[str], outs: list[str], concurrency: int
) -> dict[str, Any]:
    return {
        "concurrency": concurrency,
        "wall_s": round(wall, 3),
        "audio_s": round(audio_s, 2),
        "rtf": round(wall / audio_s, 4),
        "wer": round(sum(wer(t, o) for t, o in zip(texts, outs, strict=True)) / len(texts), 4),
        "transcripts": outs,
    }


def load_or_synthesize(texts: list[str], path: Path | None) -> list[np.ndarray]:
    """The clips saved in ``path`` for these texts, else fresh ones (saved there when given)."""
    if path is not None and path.is_file():
        with np.load(path) as saved:
            if [str(t) for t in saved["texts"]] != texts:
                raise SystemExit(f"{path} holds clips of other passages; remove it or change --clips/--words")
            return [saved[f"clip{i}"] for i in range(len(texts))]
    clips = synthesize(texts)
    if path is not None:
        arrays: dict[str, Any] = {"texts": np.array(texts), **{f"clip{i}": c for i, c in enumerate(clips)}}
        np.savez(path, **arrays)
    return clips


def ours(
    spec: ModelSpec,
    clips: list[np.ndarray],
    texts: list[str],
    levels: list[int],
    quantization: QuantizationConfig | None,
    kv_cache_dtype: str = "auto",
    encoder_quantization: str | None = None,
) -> list[dict[str, Any]]:
    engine = EngineConfig(cache=CacheConfig(memory_bytes=256 << 20, dtype=kv_cache_dtype))
    config = ASRPipelineConfig(
        spec.name, spec.source, spec.parts, spec.dtype, spec.device, engine, quantization=quantization,
        encoder_quantization=encoder_quantization,
    )  # fmt: skip
    pipeline = ASRPipeline(config, Settings.from_env().model_cache_dir)
    audio_s = sum(len(c) for c in clips) / 16_000

    async def run(concurrency: int) -> tuple[float, list[str]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(i: int, clip: np.ndarray) -> str:
            async with gate:
                return (await pipeline.transcribe(f"bench-{concurrency}-{i}", clip, language="en")).text

        start = time.perf_counter()
        outs = await asyncio.gather(*(one(i, c) for i, c in enumerate(clips)))
        return time.perf_counter() - start, list(outs)

    try:
        asyncio.run(pipeline.transcribe("warm-up", clips[0][: 16_000 * 3]))
        results = []
        for level in levels:
            wall, outs = asyncio.run(run(level))
            results.append(_summary(wall, audio_s, texts, outs, level))
        return results
    finally:
        pipeline.shutdown()


def faster_whisper(
    ct2_dir: Path, compute_type: str, clips: list[np.ndarray], texts: list[str], levels: list[int]
) -> list[dict[str, Any]]:
    from faster_whisper import WhisperModel

    threads = torch.get_num_threads()
    audio_s = sum(len(c) for c in clips) / 16_000
    results = []
    for level in levels:
        model = WhisperModel(
            str(ct2_dir), device="cpu", compute_type=compute_type, cpu_threads=threads, num_workers=level
        )

        def one(clip: np.ndarray, model: Any = model) -> str:
            segments, _ = model.transcribe(clip, beam_size=1, language="en", vad_filter=False)
            return "".join(s.text for s in segments).strip()

        one(clips[0][: 16_000 * 3])  # warm-up
        with ThreadPoolExecutor(level) as pool:
            start = time.perf_counter()
            outs = list(pool.map(one, clips))
            wall = time.perf_counter() - start
        results.append(_summary(wall, audio_s, texts, outs, level))
    return results


def ct2_folder(spec: ModelSpec, tmp: Path) -> Path:
    """faster-whisper reads a CTranslate2 folder; a model shipped in parts is joined once into ``tmp``."""
    src = resolve_source(spec.source)
    if not spec.parts:
        return src
    out = tmp / spec.name
    if not (out / "model.bin").is_file():
        out.mkdir(parents=True, exist_ok=True)
        for f in ("config.json", "tokenizer.json", "vocabulary.txt"):
            (out / f).write_bytes((src / f).read_bytes())
        with (out / "model.bin").open("wb") as dst:
            for part in spec.parts:
                dst.write(resolve_source(part).read_bytes())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument("--model", default="whisper-tiny.en")
    p.add_argument("--clips", type=int, default=8)
    p.add_argument("--words", type=int, default=40, help="words per clip (~15 s of speech)")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--clips-file", type=Path, help="saved clips (.npz): read if present, else written")
    p.add_argument(
        "--compute-types", default="int8,float32", help="faster-whisper compute types (empty: ours only)"
    )
    p.add_argument(
        "--variants", default="config",
        help="ours, comma-separated: 'config' (as models.toml has it) or a quantization as in "
        "benchmarks/quantization.py (none, int8+head+float, ...)",
    )  # fmt: skip
    p.add_argument(
        "--kv-cache-dtypes", default="auto",
        help="ours, comma-separated: what the decoder's KV cache and cross-attention states store "
        f"({', '.join(KV_CACHE_DTYPES)}; auto: bfloat16 under a float32 model)",
    )  # fmt: skip
    p.add_argument(
        "--encoders", default="config",
        help="ours, comma-separated: the encoder's quantization, 'config' (as models.toml has it), none "
        "or int8",
    )  # fmt: skip
    args = p.parse_args(argv)
    spec = spec_named(args.model)
    prepare_whisper_folder(spec.source, spec.parts, Settings.from_env().model_cache_dir)
    texts = passages(args.clips, args.words)
    clips = load_or_synthesize(texts, args.clips_file)
    levels = [1, args.concurrency]
    payload: dict[str, Any] = {
        "benchmark": "asr",
        "machine": report.machine_info(torch.device("cpu"), torch.float32),
        "model": args.model,
        "dtype": spec.dtype,
        "clips": len(clips),
        "audio_s": round(sum(len(c) for c in clips) / 16_000, 2),
        "ours": {},
        "faster_whisper": {},
    }
    for variant in args.variants.split(","):
        q = spec.quantization_config if variant == "config" else parse_variant(variant)
        for kv_dtype, encoder in itertools.product(args.kv_cache_dtypes.split(","), args.encoders.split(",")):
            encoder_q = {"config": spec.encoder_quantization, "none": None}.get(encoder, encoder)
            key = variant if kv_dtype == "auto" else f"{variant}, kv {kv_dtype}"
            key += "" if encoder == "config" else f", encoder {encoder}"
            payload["ours"][key] = {
                "quantization": None if q is None else asdict(q),
                "kv_cache_dtype": kv_dtype,
                "encoder_quantization": encoder_q,
                "levels": ours(spec, clips, texts, levels, q, kv_dtype, encoder_q),
            }
    ct2_dir = ct2_folder(spec, Settings.from_env().model_cache_dir / "ct2-joined")
    for compute_type in filter(None, args.compute_types.split(",")):
        payload["faster_whisper"][compute_type] = faster_whisper(ct2_dir, compute_type, clips, texts, levels)
    print(f"{args.model}, {len(clips)} clips, {payload['audio_s']} s of audio")
    rows = [(f"ours ({spec.dtype}, {v})", r["levels"]) for v, r in payload["ours"].items()]
    rows += [(f"faster-whisper {ct}", r) for ct, r in payload["faster_whisper"].items()]
    width = max(len(name) for name, _ in rows)
    for name, results in rows:
        cells = "  ".join(f"c={r['concurrency']}: RTF {r['rtf']:.3f} WER {r['wer']:.1%}" for r in results)
        print(f"{name:<{width}} {cells}")
    print(f"results: {report.write_results(payload, name=f'asr-{args.model}')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
