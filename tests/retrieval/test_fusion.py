"""Reciprocal rank fusion, grouping chunks into documents, and the options a query takes."""

from __future__ import annotations

import pytest

from retrieval.fusion import RRF_K, FusionWeights, QueryOptions, group_by_document, reciprocal_rank_fusion
from shared_engine.errors import InvalidRequest


def test_rrf_sums_weighted_reciprocal_ranks() -> None:
    dense = [(1, 0.9), (2, 0.8), (3, 0.1)]
    lexical = [(3, 12.0), (4, 7.0)]
    fused = dict(reciprocal_rank_fusion([(dense, 1.0), (lexical, 1.0)], k=60))
    assert fused[1] == pytest.approx(1 / 61)
    assert fused[2] == pytest.approx(1 / 62)
    assert fused[3] == pytest.approx(1 / 63 + 1 / 61)  # in both lists: ranked first overall
    assert fused[4] == pytest.approx(1 / 62)
    ranked = [c for c, _ in reciprocal_rank_fusion([(dense, 1.0), (lexical, 1.0)], k=60)]
    assert ranked == [3, 1, 2, 4]  # 2 and 4 tie: the first seen stays first


def test_rrf_uses_ranks_only_and_honours_weights() -> None:
    a = [(10, 1000.0), (11, -5.0)]
    b = [(11, 0.001), (10, 0.0)]
    # equal weights, mirrored ranks: a tie, whatever the raw scores
    scores = dict(reciprocal_rank_fusion([(a, 1.0), (b, 1.0)]))
    assert scores[10] == pytest.approx(scores[11])
    assert [c for c, _ in reciprocal_rank_fusion([(a, 1.0), (b, 2.0)])] == [11, 10]
    assert [c for c, _ in reciprocal_rank_fusion([(a, 3.0), (b, 1.0)])] == [10, 11]
    only_a = reciprocal_rank_fusion([(a, 1.0), (b, 0.0)])  # weight 0: that ranking is ignored
    assert only_a == [(10, pytest.approx(1 / (RRF_K + 1))), (11, pytest.approx(1 / (RRF_K + 2)))]
    assert reciprocal_rank_fusion([([], 1.0), ([], 1.0)]) == []


def test_group_by_document_keeps_best_passages_in_rank_order() -> None:
    ranked = [("a", 1), ("a", 2), ("b", 3), ("a", 4), ("c", 5), ("b", 6), ("d", 7), ("a", 8), ("c", 9)]
    groups = group_by_document(ranked, lambda h: h[0], top_k=3, passages=2)
    assert groups == [[("a", 1), ("a", 2)], [("b", 3), ("b", 6)], [("c", 5), ("c", 9)]]
    # "d" ranks after three documents: left out, while "c" still collects its second passage later
    assert group_by_document(ranked, lambda h: h[0], top_k=10, passages=1) == [
        [("a", 1)],
        [("b", 3)],
        [("c", 5)],
        [("d", 7)],
    ]
    assert group_by_document([], lambda h: h, top_k=3, passages=3) == []


def test_query_options_validate_with_the_parameter_named() -> None:
    assert QueryOptions() == QueryOptions("hybrid", "document", 3, FusionWeights(1.0, 1.0, RRF_K))
    for kwargs, param in [
        ({"mode": "sparse"}, "mode"),
        ({"group_by": "page"}, "group_by"),
        ({"passages": 0}, "passages"),
        ({"passages": 21}, "passages"),
    ]:
        with pytest.raises(InvalidRequest) as err:
            QueryOptions(**kwargs)  # type: ignore[arg-type]
        assert err.value.param == param, kwargs
    for dense, lexical in [(0.0, 0.0), (-1.0, 2.0), (1.0, float("nan"))]:
        with pytest.raises(InvalidRequest) as err:
            FusionWeights(dense, lexical)
        assert err.value.param == "weights"
    with pytest.raises(InvalidRequest):
        FusionWeights(k=0)
    FusionWeights(0.0, 1.0)  # lexical alone, through fusion, is allowed


def test_candidate_depth_covers_grouping() -> None:
    assert QueryOptions(mode="dense", group_by="chunk").candidates(7) == 7
    assert QueryOptions(mode="hybrid", group_by="chunk").candidates(7) >= 50
    by_document = QueryOptions(passages=3)
    assert by_document.candidates(5) >= 100
    assert by_document.candidates(100) >= 100 * 3
