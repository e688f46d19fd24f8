"""The schemas and prompts of benchmarks/structured_outputs.py: a fixed set, so runs compare."""

from __future__ import annotations

from typing import Any

# Answers to this schema cannot end within a benchmark's budget: every stream decodes all its tokens.
ENDLESS = {
    "type": "object",
    "properties": {"words": {"type": "array", "items": {"type": "string"}, "minItems": 1000}},
    "required": ["words"],
}
# What structured outputs are asked for in practice: strings with bounds, numbers with ranges, enums,
# booleans, arrays, nested objects, formats, patterns, optional fields through anyOf, $defs/$ref.
SCHEMAS: dict[str, dict[str, Any]] = {
    "person": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 30},
            "age": {"type": "integer", "minimum": 0, "maximum": 120},
            "city": {"enum": ["Paris", "Tokyo", "Lima", "Oslo"]},
        },
        "required": ["name", "age", "city"],
        "additionalProperties": False,
    },
    "product": {
        "type": "object",
        "properties": {
            "title": {"type": "string", "maxLength": 40},
            "price": {"type": "number", "minimum": 0},
            "in_stock": {"type": "boolean"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 15}, "maxItems": 3},
        },
        "required": ["title", "price", "in_stock", "tags"],
        "additionalProperties": False,
    },
    "event": {
        "type": "object",
        "properties": {
            "name": {"type": "string", "maxLength": 40},
            "date": {"type": "string", "format": "date"},
            "place": {
                "type": "object",
                "properties": {
                    "city": {"type": "string", "maxLength": 20},
                    "country": {"type": "string", "maxLength": 20},
                },
                "required": ["city", "country"],
                "additionalProperties": False,
            },
        },
        "required": ["name", "date", "place"],
        "additionalProperties": False,
    },
    "recipe": {
        "type": "object",
        "properties": {
            "dish": {"type": "string", "maxLength": 30},
            "steps": {
                "type": "array",
                "items": {"type": "string", "maxLength": 40},
                "minItems": 1,
                "maxItems": 3,
            },
        },
        "required": ["dish", "steps"],
        "additionalProperties": False,
    },
    "classification": {
        "type": "object",
        "properties": {
            "label": {"enum": ["positive", "negative", "neutral"]},
            "confidence": {"type": "number", "minimum": 0, "maximum": 1},
        },
        "required": ["label", "confidence"],
        "additionalProperties": False,
    },
    "optional_ref": {
        "$defs": {
            "Contact": {
                "type": "object",
                "properties": {
                    "email": {"anyOf": [{"type": "string", "format": "email"}, {"type": "null"}]},
                    "phone": {"type": "string", "pattern": "^[0-9]{3}-[0-9]{4}$"},
                },
                "required": ["email", "phone"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"contact": {"$ref": "#/$defs/Contact"}},
        "required": ["contact"],
        "additionalProperties": False,
    },
}
PROMPTS = (
    "Answer in JSON: {}",
    "Reply with a JSON object only. {}",
    "You are an API. Return JSON for: {}",
    "{} Respond in JSON.",
)
TOPICS = (
    "Tell me about something you like.",
    "Describe the weather tomorrow.",
    "Summarise a movie.",
    "Invent a record.",
)
