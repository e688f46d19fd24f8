"""One forward over a batch of (query, passage) inputs → one relevance score in [0, 1] each.

Rows are right-padded: a causal model's real tokens never see the padding after them, and the default
position ids (0, 1, …) are those of each row alone, so a row scores the same in any batch. Each row's
scores are read at its own positions (its last real token, or its query tokens), never at a pad.
"""

from __future__ import annotations

from typing import Any

import torch

from pipelines.rerank.prompts import PairInput


def pad(batch: list[PairInput], pad_id: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Token ids and attention mask, ``[B, longest]``, right-padded."""
    width = max(len(p.ids) for p in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, pair in enumerate(batch):
        ids[row, : len(pair.ids)] = torch.tensor(pair.ids)
        mask[row, : len(pair.ids)] = 1
    return ids.to(device), mask.to(device)


def token_types(batch: list[PairInput], width: int, device: torch.device) -> torch.Tensor:
    """Segment ids of a cross-encoder's pairs: 0 for the query's part, 1 from the passage on."""
    types = torch.zeros((len(batch), width), dtype=torch.long)
    for row, pair in enumerate(batch):
        types[row, pair.mark : len(pair.ids)] = 1
    return types.to(device)


def classifier_scores(logits: torch.Tensor) -> torch.Tensor:
    """A cross-encoder's ``[B, labels]`` logits → relevance: the sigmoid of its one logit (as
    sentence-transformers' CrossEncoder and TEI report it), or the softmax probability of the positive
    class (label 1) of a two-label model."""
    logits = logits.float()
    if logits.shape[-1] == 1:
        return torch.sigmoid(logits[:, 0])
    return torch.softmax(logits, dim=-1)[:, 1]


def cross_encoder(model: Any, batch: list[PairInput], pad_id: int, with_types: bool) -> list[float]:
    device = next(model.parameters()).device
    ids, mask = pad(batch, pad_id, device)
    extra = {"token_type_ids": token_types(batch, ids.shape[1], device)} if with_types else {}
    logits = model(input_ids=ids, attention_mask=mask, **extra).logits
    return [float(s) for s in classifier_scores(logits)]


def _hidden(model: Any, batch: list[PairInput], pad_id: int) -> torch.Tensor:
    """The decoder's final hidden states (after its last norm), ``[B, T, H]``, without the LM head:
    only a few positions of each row are ever projected onto the vocabulary."""
    device = next(model.parameters()).device
    ids, mask = pad(batch, pad_id, device)
    hidden: torch.Tensor = model.get_decoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    return hidden


def yes_no(model: Any, batch: list[PairInput], pad_id: int, yes_id: int, no_id: int) -> list[float]:
    """P("yes") / (P("yes") + P("no")) for the token after each prompt."""
    hidden = _hidden(model, batch, pad_id)
    last = torch.tensor([len(p.ids) - 1 for p in batch], device=hidden.device)
    logits = model.get_output_embeddings()(hidden[torch.arange(len(batch), device=hidden.device), last])
    pair = logits.float()[:, [yes_id, no_id]]
    return [float(s) for s in torch.softmax(pair, dim=-1)[:, 0]]


def query_likelihood(model: Any, batch: list[PairInput], pad_id: int) -> list[float]:
    """exp(mean log P(query token | passage, earlier query tokens)): the geometric mean of the query's
    token probabilities. Projected row by row: all query positions of a batch at once would be a
    ``[tokens, vocabulary]`` tensor of hundreds of MB."""
    hidden = _hidden(model, batch, pad_id)
    head = model.get_output_embeddings()
    scores = []
    for row, pair in enumerate(batch):
        targets = torch.tensor(pair.ids[pair.mark :], device=hidden.device)
        states = hidden[row, pair.mark - 1 : len(pair.ids) - 1]
        logprobs = torch.log_softmax(head(states).float(), dim=-1)
        mean = logprobs[torch.arange(len(targets), device=hidden.device), targets].mean()
        scores.append(float(torch.exp(mean)))
    return scores
