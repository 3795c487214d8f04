"""Scoring: how probable the model finds given text. One implementation for the trainer's validation loss,
`Translator.score` / `perplexity` and `Generator.score` / `perplexity`.

A model's last hidden states and its pre-softmax Linear (the protocol's `hidden`, `output_weight`,
`output_bias`) give each target token's log-probability, computed a chunk of rows at a time so that no batch
holds the whole (tokens, V) logits. From those: the negative log-likelihood per row and in total, and the
label-smoothed loss (paper §5.4) the trainer reports for validation.

Shapes: B batch, T target length, N = B * T tokens, D d_model, V vocab.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from aiayn.data.loaders import Batch

CHUNK_VALUES = 2**22  # logits computed at once: 16 MB in fp32


@dataclass
class Sums:
    """Summed label-smoothed loss and NLL (nats) over `tokens` target tokens."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: int = 0

    def add(self, loss: float, nll: float, tokens: int) -> None:
        self.loss, self.nll, self.tokens = self.loss + loss, self.nll + nll, self.tokens + tokens

    @property
    def mean_loss(self) -> float:
        return self.loss / max(self.tokens, 1)

    @property
    def mean_nll(self) -> float:
        return self.nll / max(self.tokens, 1)


@torch.no_grad()
def token_log_probs(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, target: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """hidden (..., D), target (...) -> (log P(target) (...), mean log P over the vocabulary (...)), in fp32.
    The mean is the cross-entropy against the uniform distribution, the label-smoothing term."""
    shape = target.shape
    hidden = hidden.reshape(-1, hidden.shape[-1])  # (N, D)
    target = target.reshape(-1)  # (N,)
    rows = max(1, CHUNK_VALUES // weight.shape[0])
    gold, mean = [], []
    for start in range(0, hidden.shape[0], rows):
        logp = F.linear(hidden[start : start + rows], weight, bias).float().log_softmax(dim=-1)  # (rows, V)
        gold.append(logp.gather(1, target[start : start + rows, None])[:, 0])
        mean.append(logp.mean(dim=-1))
    return torch.cat(gold).view(shape), torch.cat(mean).view(shape)


@torch.no_grad()
def score_rows(
    model, inputs: tuple[torch.Tensor, ...], target: torch.Tensor, pad_id: int, smoothing: float = 0.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One batch through the model: per row (label-smoothed loss, NLL, target tokens), each (B,). Padding
    (target == pad_id) counts nothing."""
    gold, mean = token_log_probs(model.hidden(*inputs), model.output_weight, model.output_bias, target)  # (B, T)
    keep = (target != pad_id).float()  # (B, T)
    nll = -(gold * keep).sum(dim=1)  # (B,)
    loss = (1.0 - smoothing) * nll - smoothing * (mean * keep).sum(dim=1) if smoothing else nll
    return loss, nll, keep.sum(dim=1).long()


@torch.no_grad()
def score_sums(model, batches: Iterable[Batch], pad_id: int, smoothing: float = 0.0) -> Sums:
    """Summed loss, NLL and tokens over every batch (validation loss, perplexity)."""
    sums = Sums()
    for inputs, target in batches:
        loss, nll, tokens = score_rows(model, inputs, target, pad_id, smoothing)
        sums.add(float(loss.sum()), float(nll.sum()), int(tokens.sum()))
    return sums
