"""The text side of a reranker: how a (query, passage) pair becomes the token ids one forward scores.

Three methods, one per kind of model:

- ``cross_encoder``: a sequence-classification model reads ``[CLS] query [SEP] passage [SEP]`` (its
  tokenizer's pair encoding, token types included); the passage is cut to fit.
- ``yes_no``: a causal LM is asked, through its chat template, whether the passage meets the query, and
  the next token's probabilities of "yes" and "no" score it (the prompt of Qwen3-Reranker, whose
  weights are a causal LM trained for exactly this).
- ``query_likelihood``: a causal LM reads the passage and is asked for a question it answers; the score
  is how likely the query is as that question (UPR, Sachan et al. 2022). A chat model that was never
  trained to rerank orders passages far better this way than by answering yes or no.

The tokenizer alone, without the weights, so that the same encoding serves wherever the model runs.
"""

from __future__ import annotations

import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from transformers import AutoConfig, AutoTokenizer

from pipelines.token_prefix import Leading, leading_ids, longest_token_chars
from shared_engine.errors import InvalidRequest

METHODS = ("auto", "cross_encoder", "yes_no", "query_likelihood")
CAUSAL_METHODS = ("yes_no", "query_likelihood")
DEFAULT_MAX_INPUT_TOKENS = 512

YES_NO_SYSTEM = (
    "Judge whether the Document meets the requirements based on the Query and the Instruct provided. "
    'Note that the answer can only be "yes" or "no".'
)
YES_NO_INSTRUCTION = "Given a web search query, retrieve relevant passages that answer the query"
QUERY_LIKELIHOOD_ASK = "Passage: {document}\n\nWrite a question that this passage answers."
# Private-use characters mark where the query and the passage go in a rendered chat template.
_QUERY, _DOCUMENT = "\ue000", "\ue001"


@dataclass(frozen=True)
class PairInput:
    """One (query, passage) pair as token ids. ``mark``: for a cross-encoder, where the second segment
    (token type 1) starts; for query likelihood, where the scored query tokens start; else 0."""

    ids: list[int]
    mark: int = 0


def architectures(folder: Path) -> list[str]:
    config = json.loads((folder / "config.json").read_text())
    return [str(a) for a in config.get("architectures") or []]


def resolve_method(requested: str, folder: Path) -> str:
    """The scoring method for the model in ``folder``: ``auto`` picks ``cross_encoder`` for a
    sequence-classification model and ``query_likelihood`` for a causal LM."""
    if requested not in METHODS:
        raise ValueError(f"unknown rerank method {requested!r}; known: {', '.join(METHODS)}")
    names = architectures(folder)
    if any(a.endswith("ForSequenceClassification") for a in names):
        kind = "cross_encoder"
    elif any(a.endswith("ForCausalLM") for a in names):
        kind = "causal"
    else:
        raise ValueError(
            f"{folder}: a reranker is a *ForSequenceClassification or *ForCausalLM model, "
            f"not {', '.join(names) or 'an unnamed architecture'}"
        )
    if requested == "auto":
        return "cross_encoder" if kind == "cross_encoder" else "query_likelihood"
    if (requested == "cross_encoder") != (kind == "cross_encoder"):
        needs = "a sequence-classification model" if requested == "cross_encoder" else "a causal LM"
        raise ValueError(f"{folder}: rerank method {requested!r} needs {needs}, not {', '.join(names)}")
    return requested


def model_window(folder: Path, tokenizer: Any) -> int:
    """The longest input the model takes: its tokenizer's limit when it states a real one, else its
    position embeddings."""
    positions = getattr(AutoConfig.from_pretrained(folder), "max_position_embeddings", None)
    for limit in (getattr(tokenizer, "model_max_length", None), positions):
        if isinstance(limit, int) and 0 < limit < 1_000_000:
            return limit
    return DEFAULT_MAX_INPUT_TOKENS


class RerankTokenizer:
    """``max_input_tokens``: the most tokens one pair may take (None: 512), within the model's window."""

    def __init__(self, folder: Path, method: str, max_input_tokens: int | None = None) -> None:
        self.tokenizer: Any = AutoTokenizer.from_pretrained(folder)
        self.method = method
        wanted = max_input_tokens or DEFAULT_MAX_INPUT_TOKENS
        self.max_input_tokens = min(wanted, model_window(folder, self.tokenizer))
        self._longest_token = longest_token_chars(self.tokenizer)
        # Large requests are tokenized on worker threads; a fast tokenizer shared between threads can refuse
        # a call while another holds it ("Already borrowed").
        self._lock = threading.Lock()
        if method == "cross_encoder":
            self.head: list[int] = []
            self.between: list[int] = []
            self.tail: list[int] = []
        else:
            self.head, self.between, self.tail = self._template_parts()

    def _encode(self, text: str) -> list[int]:
        ids: list[int] = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        return ids

    def _encode_batch(self, texts: list[str]) -> list[list[int]]:
        ids: list[list[int]] = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        return ids

    def _leading(self, texts: list[str], n: int) -> list[Leading]:
        return leading_ids(self._encode_batch, texts, n, self._longest_token)

    def _template_parts(self) -> tuple[list[int], list[int], list[int]]:
        """The chat template rendered once around placeholders, cut into the token ids before the first
        slot, between the two, and after the second."""
        if not getattr(self.tokenizer, "chat_template", None):
            raise ValueError(f"rerank method {self.method!r} needs a model with a chat template")
        if self.method == "yes_no":
            user = f"<Instruct>: {YES_NO_INSTRUCTION}\n<Query>: {_QUERY}\n<Document>: {_DOCUMENT}"
            messages = [{"role": "system", "content": YES_NO_SYSTEM}, {"role": "user", "content": user}]
            first, second = _QUERY, _DOCUMENT
        else:
            messages = [{"role": "user", "content": QUERY_LIKELIHOOD_ASK.format(document=_DOCUMENT)}]
            first, second = _DOCUMENT, _QUERY
        # enable_thinking=False: templates that think (Qwen3) open the answer with an empty thought.
        text = str(
            self.tokenizer.apply_chat_template(
                messages, add_generation_prompt=True, tokenize=False, enable_thinking=False
            )
        )
        head, _, rest = text.partition(first)
        between, _, tail = rest.partition(second)
        if self.method == "query_likelihood":  # the query is the answer: nothing follows it
            between, tail = between + tail, ""
        return self._encode(head), self._encode(between), self._encode(tail)

    def encode(self, query: str, documents: list[str]) -> list[PairInput]:
        """One input per document, each within ``max_input_tokens`` (passages are cut to fit; a query
        that leaves no room for any passage is refused)."""
        with self._lock:
            if self.method == "cross_encoder":
                return self._encode_pairs(query, documents)
            return self._encode_prompts(query, documents)

    def _encode_prompts(self, query: str, documents: list[str]) -> list[PairInput]:
        (lead,) = self._leading([query], self.max_input_tokens)
        query_ids = lead.ids
        fixed = len(self.head) + len(self.between) + len(self.tail) + len(query_ids)
        room = self.max_input_tokens - fixed
        self._check_room(room, lead)
        docs = [d.ids[:room] for d in self._leading(documents, room)]
        if self.method == "yes_no":
            return [PairInput(self.head + query_ids + self.between + d + self.tail) for d in docs]
        pairs = []
        for d in docs:
            prompt = self.head + d + self.between
            pairs.append(PairInput(prompt + query_ids, mark=len(prompt)))
        return pairs

    def _encode_pairs(self, query: str, documents: list[str]) -> list[PairInput]:
        (lead,) = self._leading([query], self.max_input_tokens)
        room = self.max_input_tokens - self.tokenizer.num_special_tokens_to_add(pair=True) - len(lead.ids)
        self._check_room(room, lead)
        encoded = self.tokenizer(
            [query] * len(documents),
            [d.text for d in self._leading(documents, room)],  # each passage's text as far as it can be read
            truncation="only_second",
            max_length=self.max_input_tokens,
            return_token_type_ids=True,
        )
        pairs = []
        for ids, types in zip(encoded["input_ids"], encoded["token_type_ids"], strict=True):
            second = next((i for i, t in enumerate(types) if t), len(ids))
            pairs.append(PairInput(list(ids), mark=second))
        return pairs

    def _check_room(self, room: int, query: Leading) -> None:
        if not query.ids:  # query likelihood would average over no tokens
            raise InvalidRequest("the query has no tokens", param="query")
        if room < 1:
            count = f"{len(query.ids)} tokens" if query.whole else f"more than {self.max_input_tokens} tokens"
            raise InvalidRequest(
                f"the query has {count}, which leaves no room for a passage within this reranker's limit "
                f"of {self.max_input_tokens} tokens; shorten it",
                param="query",
            )
