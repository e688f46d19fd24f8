"""What the grammar engine can enforce: every keyword it is trusted with is enforced (a violating instance
is refused by the matcher), every keyword refused up front would really have been ignored, bad constraints
are refused with the engine's reason, and the step bitmask follows speculative guesses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import xgrammar as xgr
from transformers import AutoTokenizer

from pipelines.llm.pipeline import structured_outputs
from shared_engine.guided import GrammarError, GuidedDecoding, GuidedKind, check
from shared_engine.json_schema_support import unsupported_feature
from shared_engine.structured_output import RequestGrammar, StructuredOutputs

# (keyword, schema, an instance that satisfies it, one that violates only that keyword), written as the
# engine formats JSON (one line, ", " and ": ").
ENFORCED = [
    ("multipleOf", {"type": "integer", "multipleOf": 3}, "6", "4"),
    ("format", {"type": "string", "format": "date"}, '"2024-02-29"', '"today"'),
    ("pattern", {"type": "string", "pattern": "^[a-z]+$"}, '"ab"', '"AB"'),
    ("minLength", {"type": "string", "minLength": 5}, '"abcde"', '"ab"'),
    ("maxLength", {"type": "string", "maxLength": 2}, '"ab"', '"abcd"'),
    ("minimum", {"type": "integer", "minimum": 5}, "5", "3"),
    ("exclusiveMaximum", {"type": "number", "exclusiveMaximum": 5}, "4.5", "5"),
    ("minItems", {"type": "array", "minItems": 2}, "[1, 2]", "[1]"),
    (
        "maxProperties",
        {"type": "object", "additionalProperties": True, "maxProperties": 1},
        '{"a": 1}',
        '{"a": 1, "b": 2}',
    ),
    ("const", {"const": "x"}, '"x"', '"y"'),
    ("enum", {"enum": ["x", 1]}, "1", "2"),
    ("prefixItems", {"type": "array", "prefixItems": [{"type": "integer"}], "items": False}, "[1]", '["a"]'),
    (
        "additionalProperties",
        {"type": "object", "additionalProperties": {"type": "integer"}},
        '{"a": 1}',
        '{"a": "x"}',
    ),
    (
        "required",
        {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
        '{"a": 1}',
        "{}",
    ),
    ("$ref", {"$defs": {"X": {"type": "integer"}}, "$ref": "#/$defs/X"}, "1", '"a"'),
    ("anyOf", {"anyOf": [{"type": "integer"}, {"type": "null"}]}, "null", '"a"'),
    ("allOf (one)", {"allOf": [{"type": "integer", "minimum": 5}]}, "7", "3"),
    (
        "patternProperties",
        {"type": "object", "patternProperties": {"^a": {"type": "integer"}}},
        '{"a": 1}',
        '{"a": "x"}',
    ),
]
AB = {"type": "object", "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}}}
IGNORED = [
    ("'uniqueItems'", {"type": "array", "items": {"type": "integer"}, "uniqueItems": True}, "[1, 1]"),
    ("'contains'", {"type": "array", "items": {"type": "integer"}, "contains": {"const": 5}}, "[1]"),
    ("'not'", {"not": {"type": "string"}}, '"x"'),
    ("'if'", {**AB, "if": {"required": ["a"]}, "then": {"required": ["b"]}}, '{"a": 1}'),
    ("'dependentRequired'", {**AB, "dependentRequired": {"a": ["b"]}}, '{"a": 1}'),
    ("'allOf' with more", {"allOf": [{"type": "integer"}, {"minimum": 5}]}, "3"),
    ("'oneOf' without", {"oneOf": [{"type": "integer"}, {"type": "number"}]}, "3"),
    ("'format': 'color'", {"type": "string", "format": "color"}, '"abc"'),
    ("together with 'pattern'", {"type": "string", "pattern": "^[a-z]+$", "minLength": 5}, '"ab"'),
    (
        "'required' naming 'b'",
        {**AB, "properties": {"a": {"type": "integer"}}, "required": ["a", "b"]},
        '{"a": 1}',
    ),
    ("'required' naming 'name'", {"type": "object", "required": ["name"]}, "{}"),
    ("'multipleOf'", {"type": "number", "multipleOf": 0.5}, "1.1"),
    ("'multipleOf' except", {"type": "number", "multipleOf": 2}, "3"),
    ("'pattern' '^(?=", {"type": "string", "pattern": "^(?=[0-9])[a-z0-9]{1,6}$"}, '"abc"'),
    ("'pattern' '^(?!", {"type": "string", "pattern": "^(?!x)[a-z]{1,5}$"}, '"xyz"'),
    (
        "'pattern' '^(?!x)[a-z]+$'",
        {
            "type": "object",
            "patternProperties": {"^(?!x)[a-z]+$": {"type": "integer"}},
            "additionalProperties": False,
        },
        '{"xa": 1}',
    ),
    ("a $ref to an anchor", {"$defs": {"I": {"$anchor": "int", "type": "integer"}}, "$ref": "#int"}, '"x"'),
]


@pytest.fixture(scope="module")
def tokenizer(smollm2_folder: Path) -> Any:
    return AutoTokenizer.from_pretrained(smollm2_folder)


@pytest.fixture(scope="module")
def compiler(tokenizer: Any) -> xgr.GrammarCompiler:
    info = xgr.TokenizerInfo.from_huggingface(tokenizer, stop_token_ids=[tokenizer.eos_token_id])
    return xgr.GrammarCompiler(info, max_threads=1)


@pytest.fixture(scope="module")
def structured(tokenizer: Any) -> StructuredOutputs:
    return structured_outputs(
        tokenizer, len(tokenizer), frozenset({tokenizer.eos_token_id}), torch.device("cpu")
    )


def accepts(compiled: xgr.CompiledGrammar, instance: str) -> bool:
    matcher = xgr.GrammarMatcher(compiled)
    return bool(matcher.accept_string(instance)) and matcher.is_completed()


@pytest.mark.parametrize(("keyword", "schema", "good", "bad"), ENFORCED, ids=[c[0] for c in ENFORCED])
def test_keywords_we_accept_are_enforced(
    structured: StructuredOutputs, keyword: str, schema: Any, good: str, bad: str
) -> None:
    """Compiled exactly as requests are: the valid instance passes, the one that breaks the keyword not."""
    assert unsupported_feature(schema) is None
    compiled = structured.compile(GuidedDecoding.json_schema(schema))
    assert accepts(compiled, good), f"{good} should match {schema}"
    assert not accepts(compiled, bad), f"{keyword} is not enforced: {bad} passed"


@pytest.mark.parametrize(("feature", "schema", "bad"), IGNORED, ids=[c[0] for c in IGNORED])
def test_keywords_we_refuse_would_be_ignored(
    compiler: xgr.GrammarCompiler, feature: str, schema: Any, bad: str
) -> None:
    compiled = compiler.compile_json_schema(json.dumps(schema), any_whitespace=False)
    assert accepts(compiled, bad), f"the engine now enforces {feature}: accept it"
    with pytest.raises(GrammarError, match="cannot enforce") as info:
        check(GuidedDecoding.json_schema(schema))
    assert feature in str(info.value)


def test_features_are_found_deep_inside_but_not_in_property_names() -> None:
    nested = {"type": "object", "properties": {"tags": {"type": "array", "uniqueItems": True}}}
    assert unsupported_feature(nested) == "'uniqueItems'"
    in_defs = {"$defs": {"A": {"anyOf": [{"not": {}}]}}, "$ref": "#/$defs/A"}
    assert unsupported_feature(in_defs) == "'not'"
    named_like_keywords = {
        "type": "object",
        "properties": {"not": {"type": "string"}, "if": {"type": "integer"}},
    }
    assert unsupported_feature(named_like_keywords) is None
    assert (
        unsupported_feature({"$ref": "https://example.com/s.json"})
        == "a $ref outside the schema ('https://example.com/s.json')"
    )
    discriminated = {"oneOf": [{"type": "object"}], "discriminator": {"propertyName": "kind"}}
    assert unsupported_feature(discriminated) is None
    assert unsupported_feature({"type": "object", "propertyNames": {"pattern": "^a"}}) == "'propertyNames'"


@pytest.mark.parametrize(
    ("guided", "message"),
    [
        (GuidedDecoding.json_schema({"type": "colour"}), 'Unsupported type "colour"'),
        (GuidedDecoding.json_schema({"enum": []}), "enum array must not be empty"),
        (GuidedDecoding(GuidedKind.JSON_SCHEMA, "{not json"), "not valid JSON"),
        (GuidedDecoding(GuidedKind.JSON_SCHEMA, "[1, 2]"), "must be an object"),
        (GuidedDecoding(GuidedKind.REGEX, "(unclosed"), "invalid regex"),
        (GuidedDecoding(GuidedKind.REGEX, ""), "must be non-empty"),
        (GuidedDecoding(GuidedKind.GRAMMAR, "root ::= missing_rule"), "invalid grammar"),
        (GuidedDecoding.choice([]), "non-empty list"),
        (GuidedDecoding(GuidedKind.STRUCTURAL_TAG, '{"type": "nonsense"}'), "invalid structural tag"),
    ],
)
def test_bad_constraints_are_refused_with_the_reason(guided: GuidedDecoding, message: str) -> None:
    with pytest.raises(GrammarError, match=message) as info:
        check(guided)
    assert "json_schema_converter.cc" not in str(info.value)  # the C++ location is cut


def test_choices_with_quotes_and_unicode_match_exactly(compiler: xgr.GrammarCompiler) -> None:
    guided = GuidedDecoding.choice(['say "hi"', "naïve\\path", "東京", "🎉 yes", "tab\there"])
    for choice in guided.choices:
        matcher = xgr.GrammarMatcher(compiler.compile_grammar(guided.ebnf()))
        assert matcher.accept_string(choice) and matcher.is_completed()
    matcher = xgr.GrammarMatcher(compiler.compile_grammar(guided.ebnf()))
    assert not (matcher.accept_string("say hi") and matcher.is_completed())


def test_guess_rows_are_the_masks_after_each_guess_and_leave_the_matcher_as_it_was(
    compiler: xgr.GrammarCompiler, tokenizer: Any
) -> None:
    compiled = compiler.compile_regex("ab+c")
    grammar = RequestGrammar(compiled)
    a, b, c, z = (tokenizer.convert_tokens_to_ids(t) for t in "abcz")
    vocab = compiled.tokenizer_info.vocab_size
    bitmask = xgr.allocate_token_bitmask(8, vocab)
    bitmask.zero_()
    grammar.fill_rows(bitmask, 1, [a, b, z, b])  # z breaks the grammar: rows after it are never read

    def allowed(row: int) -> set[int]:
        logits = torch.zeros(vocab)
        xgr.apply_token_bitmask_inplace(logits, bitmask[row])
        return {int(t) for t in torch.nonzero(logits == 0).flatten()}

    assert a in allowed(1) and b not in allowed(1)
    assert b in allowed(2) and c not in allowed(2)  # after "a": b
    assert {b, c} <= allowed(3) and z not in allowed(3)  # after "ab": b or c
    assert len(allowed(4)) == vocab and len(allowed(5)) == vocab  # past the refused guess: all allowed
    assert not bitmask[0].any() and not bitmask[6].any()  # other rows untouched
    assert grammar.accept(a) and not grammar.accept(c)  # the matcher is back at the start
