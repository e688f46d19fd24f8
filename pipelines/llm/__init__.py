"""LLM decode: chat and text completions on the shared decoder engine."""

from pipelines.llm.pipeline import LLMPipeline, LLMPipelineConfig

__all__ = ["LLMPipeline", "LLMPipelineConfig"]
