"""LLM decode: chat and text completions on the shared decoder engine."""

from pipelines.llm.pipeline import LLMPipeline, LLMPipelineConfig, check_prompts
from pipelines.llm.tokenizer import ChatTokenizer

__all__ = ["ChatTokenizer", "LLMPipeline", "LLMPipelineConfig", "check_prompts"]
