"""LLM decode: chat and text completions on the shared decoder engine."""

from pipelines.llm.pipeline import LLMPipeline, LLMPipelineConfig
from pipelines.llm.tokenizer import ChatTokenizer

__all__ = ["ChatTokenizer", "LLMPipeline", "LLMPipelineConfig"]
