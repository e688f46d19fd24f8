"""Request and response bodies of the OpenAI-compatible API (msgspec Structs: validated on the way in,
described in the OpenAPI schema)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta, Struct

from services.gateway.tool_schemas import ResponseFormat, StructuredOutputsParams, Tool, ToolCall, ToolChoice
from shared_engine.sampling_params import MAX_LOGIT_BIAS, MAX_PENALTY, MAX_TOP_LOGPROBS, SEED_MAX, SEED_MIN

MAX_N = 16
MAX_STOP_SEQUENCES = 16
MAX_BAD_WORDS = 256


def documented(**keywords: Any) -> Meta:
    """Keywords for the OpenAPI schema only, under Litestar's names (``minimum``, ``max_length``,
    ``enum``...): Litestar copies ``extra_json_schema["extra"]`` onto the field's schema and msgspec
    enforces none of it. For limits a handler checks itself with a more precise message than msgspec's,
    and for bounds of 0, which Litestar drops from an optional field's schema (it tests them for truth)."""
    return Meta(extra_json_schema={"extra": keywords})


Temperature = Annotated[float, Meta(ge=0.0, le=2.0, description="0 = greedy"), documented(minimum=0.0)]
TopP = Annotated[float, Meta(gt=0.0, le=1.0), documented(exclusive_minimum=0.0)]
TopK = Annotated[int, Meta(ge=-1, description="extra: keep the k most likely tokens; 0 or -1 disables")]
MaxTokens = Annotated[int, Meta(ge=1)]
N = Annotated[int, Meta(ge=1, le=MAX_N)]
TopLogprobs = Annotated[int, Meta(ge=0, le=MAX_TOP_LOGPROBS), documented(minimum=0)]
Seed = Annotated[int, documented(minimum=SEED_MIN, maximum=SEED_MAX)]  # checked with the other parameters
Penalty = Annotated[float, Meta(ge=-MAX_PENALTY, le=MAX_PENALTY)]
RepetitionPenalty = Annotated[
    float,
    Meta(gt=0.0, description="extra: > 1 discourages tokens of the prompt and output, 1 is off"),
    documented(exclusive_minimum=0.0),
]
MinP = Annotated[
    float,
    Meta(ge=0.0, le=1.0, description="extra: drop tokens under min_p × the likeliest one's probability"),
    documented(minimum=0.0),
]
MinTokens = Annotated[
    int,
    Meta(ge=0, description="extra: no stop token or stop string before this many tokens"),
    documented(minimum=0),
]
LogitBias = Annotated[float, documented(minimum=-MAX_LOGIT_BIAS, maximum=MAX_LOGIT_BIAS)]  # checked later
Stop = str | Annotated[list[str], Meta(max_length=MAX_STOP_SEQUENCES)] | None
TruncatePromptTokens = Annotated[
    int,
    Meta(ge=-1, description="extra: keep only the prompt's last k tokens (-1: as many as the context holds)"),
]


class StreamOptions(Struct, omit_defaults=True):
    include_usage: bool = False
    # vLLM's extra: with include_usage, every chunk also carries its choice's usage so far.
    continuous_usage_stats: bool = False


class ContentPart(Struct):
    type: str
    text: str | None = None


class ChatMessage(Struct):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None  # an assistant turn's calls
    tool_call_id: str | None = None  # a tool turn: the call it answers


class SamplingFields(Struct, kw_only=True):
    """Fields shared by chat and text completions."""

    model: str
    temperature: Temperature | None = None
    top_p: TopP | None = None
    top_k: TopK | None = None
    seed: Seed | None = None
    stop: Stop = None
    stop_token_ids: list[int] | None = None
    # OpenAI's types allow null for these, meaning the default (the SDK sends null for an explicit None).
    n: N | None = 1
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    presence_penalty: Penalty | None = None
    frequency_penalty: Penalty | None = None
    repetition_penalty: RepetitionPenalty | None = None  # vLLM's extras
    min_p: MinP | None = None
    min_tokens: MinTokens | None = None
    allowed_token_ids: Annotated[list[int], Meta(min_length=1)] | None = None
    include_stop_str_in_output: bool = False
    skip_special_tokens: bool = True
    bad_words: Annotated[list[str], Meta(max_length=MAX_BAD_WORDS)] | None = None
    truncate_prompt_tokens: TruncatePromptTokens | None = None
    return_tokens_as_token_ids: bool = False  # logprobs name tokens "token_id:<id>"
    logit_bias: dict[str, LogitBias] | None = None  # token id (as OpenAI sends it, a string) -> bias
    user: str | None = None
    response_format: ResponseFormat | None = None
    # vLLM's extras constraining the output (services/gateway/constraints.py).
    guided_json: dict[str, Any] | bool | str | None = None
    guided_regex: str | None = None
    guided_choice: list[str] | None = None
    guided_grammar: str | None = None
    structured_outputs: StructuredOutputsParams | None = None
    # vLLM's extra: each prompt token's log-probability with this many alternatives, in ``prompt_logprobs``.
    prompt_logprobs: TopLogprobs | None = None

    @property
    def num_choices(self) -> int:
        return 1 if self.n is None else self.n


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: Annotated[list[ChatMessage], Meta(min_length=1)]
    max_tokens: MaxTokens | None = None
    max_completion_tokens: MaxTokens | None = None
    logprobs: bool | None = False
    top_logprobs: TopLogprobs | None = None
    tools: list[Tool] | None = None
    tool_choice: ToolChoice = None
    parallel_tool_calls: bool | None = None
    # vLLM's extras: how the chat template renders the messages.
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    chat_template_kwargs: dict[str, Any] | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    prompt: str | list[str | int | list[int]]
    # 0 (with echo): only the prompt back, scored with logprobs.
    max_tokens: Annotated[int, Meta(ge=0)] | None = 16
    logprobs: TopLogprobs | None = None
    echo: bool | None = False
    suffix: str | None = None


# -- responses ---------------------------------------------------------------------------------------


class PromptTokensDetails(Struct):
    cached_tokens: int = 0


class Usage(Struct):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(Struct):
    token: str
    logprob: float
    bytes: list[int] | None
    top_logprobs: list[TopLogprob]


class ChatLogprobs(Struct):
    content: list[ChatTokenLogprob]


class AssistantMessage(Struct, omit_defaults=True):
    role: str
    content: str | None
    tool_calls: list[ToolCall] | None = None


class PromptLogprob(Struct):
    """One entry of vLLM's ``prompt_logprobs``, keyed by token id."""

    logprob: float
    rank: int | None
    decoded_token: str


# Per prompt token: None for the first (nothing predicts it), else the token's entry and its alternatives'.
PromptLogprobs = list[dict[str, PromptLogprob] | None]


class ChatChoice(Struct):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None
    finish_reason: str | None


class ChatCompletion(Struct):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    object: str = "chat.completion"
    prompt_logprobs: PromptLogprobs | None = None


class CompletionLogprobs(Struct):
    tokens: list[str]
    token_logprobs: list[float | None]  # None for an echoed prompt's first token, which nothing predicts
    top_logprobs: list[dict[str, float] | None] | None
    text_offset: list[int]


class CompletionChoice(Struct):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    prompt_logprobs: PromptLogprobs | None = None


class Completion(Struct):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    object: str = "text_completion"


class ModelCard(Struct):
    id: str
    task: str
    created: int
    owned_by: str = "mmserve"
    max_model_len: int | None = None
    voices: list[str] | None = None  # speech synthesis models: the voices `voice` may name
    object: str = "model"


class ModelList(Struct):
    data: list[ModelCard]
    object: str = "list"


class ErrorDetail(Struct):
    message: str
    type: str
    param: str | None
    code: str | int | None


class ErrorResponse(Struct):
    error: ErrorDetail


def to_json(obj: Any) -> bytes:
    return msgspec.json.encode(obj)


# -- embeddings --------------------------------------------------------------------------------------


class EmbeddingRequest(Struct, kw_only=True):
    model: str
    input: str | list[str | int | list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, Meta(ge=1)] | None = None
    user: str | None = None
    truncate: bool = False  # extra (as in TEI): cut inputs past the model's window instead of 400


class Embedding(Struct):
    index: int
    embedding: list[float] | str
    object: str = "embedding"


class EmbeddingUsage(Struct):
    prompt_tokens: int
    total_tokens: int


class EmbeddingList(Struct):
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
    object: str = "list"
