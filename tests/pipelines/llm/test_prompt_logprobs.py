"""Prompt log-probabilities (``SamplingParams.prompt_logprobs``) equal transformers' log-softmax of the
prompt's logits (fp32), whether the prompt runs in one step or in chunks beside other requests, is
already in the prefix cache, or is recomputed after a preemption; they come once, with the first tokens."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from shared_engine.device import resolve_dtype
from shared_engine.llm_engine import LLMEngine
from shared_engine.models.loader import build_decoder, iter_safetensors
from shared_engine.outputs import RequestOutput
from shared_engine.prompt_logprobs import score_block
from shared_engine.quantization_config import QuantizationConfig
from shared_engine.sampling_params import SamplingParams
from tests.pipelines.llm.smollm2 import CPU, GREEDY, make_engine

TOP = 3
SCORED = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True, prompt_logprobs=TOP)


@pytest.fixture(scope="module")
def expected(smollm2_folder: Any, prompt_ids: list[list[int]]) -> list[torch.Tensor]:
    """transformers' log-probabilities ``[len(prompt) - 1, vocab]``: row ``p`` scores token ``p + 1``."""
    hf = AutoModelForCausalLM.from_pretrained(smollm2_folder, dtype=torch.float32).eval()
    with torch.inference_mode():
        return [torch.log_softmax(hf(torch.tensor([ids])).logits[0, :-1].float(), -1) for ids in prompt_ids]


def _run(
    engine: LLMEngine, prompts: dict[str, list[int]], params: SamplingParams
) -> dict[str, list[RequestOutput]]:
    for rid, ids in prompts.items():
        engine.add_request(rid, ids, params)
    outputs: dict[str, list[RequestOutput]] = {rid: [] for rid in prompts}
    while engine.has_unfinished_requests():
        for out in engine.step():
            outputs.setdefault(out.request_id, []).append(out)
    return outputs


def _check(outputs: list[RequestOutput], ids: list[int], expected: torch.Tensor) -> None:
    """The first output with tokens carries one score per prompt token after the first; no other does."""
    carrying = [i for i, o in enumerate(outputs) if o.prompt_logprobs is not None]
    assert carrying == [0], [o.prompt_logprobs is not None for o in outputs]
    scored = outputs[0].prompt_logprobs
    assert scored is not None and [lp.token_id for lp in scored] == ids[1:]
    want = expected[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    torch.testing.assert_close(torch.tensor([lp.logprob for lp in scored]), want, atol=2e-3, rtol=0)
    for lp, row in zip(scored, expected, strict=True):
        # The rank counts the likelier tokens (to a rounding: transformers' values are a computation apart).
        likelier = (row > lp.logprob + 1e-3).sum().item(), (row > lp.logprob - 1e-3).sum().item()
        assert lp.rank is not None and likelier[0] + 1 <= lp.rank <= likelier[1] + 1
        values, top_ids = torch.topk(row, TOP)
        assert lp.top[0][0] == top_ids[0].item()
        torch.testing.assert_close(torch.tensor([v for _, v in lp.top]), values, atol=2e-3, rtol=0)


def test_whole_prompts_in_one_batch(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    expected: list[torch.Tensor],
) -> None:
    engine = make_engine(model, tokenizer, kv_cache_dtype="float32")
    outputs = _run(engine, {str(i): ids for i, ids in enumerate(prompt_ids)}, SCORED)
    for i, ids in enumerate(prompt_ids):
        _check(outputs[str(i)], ids, expected[i])


def test_chunked_prompts_beside_decodes(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    expected: list[torch.Tensor],
) -> None:
    """A budget of 7 tokens a step cuts each prompt into chunks that share steps with other requests'
    decodes; only some requests ask for scores."""
    engine = make_engine(model, tokenizer, kv_cache_dtype="float32", max_num_batched_tokens=7, block_size=4)
    engine.add_request("plain", prompt_ids[0], GREEDY)
    engine.step()
    scored = {str(i): prompt_ids[i] for i in (5, 7)}
    outputs = _run(engine, scored, SCORED)
    for rid, ids in scored.items():
        _check(outputs[rid], ids, expected[int(rid)])


def test_cached_prompt_is_computed_again_to_be_scored(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    expected: list[torch.Tensor],
) -> None:
    engine = make_engine(model, tokenizer, kv_cache_dtype="float32", block_size=4)
    engine.generate([prompt_ids[7]], GREEDY)  # its blocks are now in the prefix cache
    hits = engine.kv.prefix_hits
    outputs = _run(engine, {"scored": prompt_ids[7]}, SCORED)
    _check(outputs["scored"], prompt_ids[7], expected[7])
    assert engine.kv.prefix_hits == hits and outputs["scored"][0].num_cached_tokens == 0
    engine.generate([prompt_ids[7]], GREEDY)  # a plain request still finds the prompt cached
    assert engine.kv.prefix_hits > hits


def test_preempted_requests_score_their_prompt_once(
    model: Any,
    tokenizer: Any,
    prompt_ids: list[list[int]],
    expected: list[torch.Tensor],
) -> None:
    engine = make_engine(model, tokenizer, kv_cache_dtype="float32", block_size=4, num_blocks=20)
    many = SamplingParams(max_tokens=20, temperature=0.0, ignore_eos=True, prompt_logprobs=TOP)
    outputs = _run(engine, {str(i): ids for i, ids in enumerate(prompt_ids)}, many)
    assert engine.stats().num_preemptions > 0
    for i, ids in enumerate(prompt_ids):
        _check(outputs[str(i)], ids, expected[i])


def test_a_one_token_prompt_has_nothing_to_score(model: Any, tokenizer: Any) -> None:
    engine = make_engine(model, tokenizer)
    (first, *rest) = _run(engine, {"one": [tokenizer.bos_token_id or 1]}, SCORED)["one"]
    assert first.prompt_logprobs == [] and all(o.prompt_logprobs is None for o in rest)


def test_prompt_logprobs_are_bounded_like_logprobs() -> None:
    with pytest.raises(ValueError, match="prompt_logprobs must be between 0 and 20"):
        SamplingParams(prompt_logprobs=21)


def test_a_quantized_models_scores_do_not_depend_on_the_rows_scored_together(smollm2_folder: Any) -> None:
    """The default quantization keeps a quantized copy of the LM head for the few-row calls where its
    kernel is faster: scores take the float weights whatever the rows, so the same hidden state scores
    alike in a block of one row and in one of forty."""
    cfg = AutoConfig.from_pretrained(smollm2_folder)
    dtype = resolve_dtype("auto", CPU)
    model = build_decoder(cfg, iter_safetensors(smollm2_folder), CPU, dtype, QuantizationConfig("auto"))
    torch.manual_seed(0)
    hidden = torch.randn(40, model.arch.hidden_size, dtype=dtype)
    targets = list(range(100, 140))
    whole = [lp.logprob for lp in score_block(model, hidden, targets, TOP)]
    for n in (1, 3, 9):
        alone = score_block(model, hidden[:n], targets[:n], TOP)
        assert [lp.logprob for lp in alone] == whole[:n], n
