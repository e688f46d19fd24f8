"""LLM decode: chat and text completions on the shared decoder engine."""

from pipelines.llm.pipeline import LLMPipeline, LLMPipelineConfig, check_prompts
from pipelines.llm.tokenizer import OPEN_ASSISTANT_TURN, ChatTokenizer, TemplateOptions

__all__ = [
    "OPEN_ASSISTANT_TURN",
    "ChatTokenizer",
    "LLMPipeline",
    "LLMPipelineConfig",
    "TemplateOptions",
    "check_prompts",
]
