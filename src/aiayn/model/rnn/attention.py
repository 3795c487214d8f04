"""Attention for recurrent encoder-decoders: additive (Bahdanau et al. 2015) and Luong's "general" (2015).

`additive_attention` is the formula written out for one query per row; `AdditiveAttention` and
`GeneralAttention` are the modules the family runs: they project the keys once per source (`project_keys`), then
score a whole block of queries (B, T, D_q) at once, so training has no loop over time. Both hand their weights to
the attention recorder (aiayn.model.recorder) as (B, 1, T, S): one head.

Shapes: B batch, T queries, S source positions, A attention size, D_q / D_k / D_v query, key and value sizes.
"""

from __future__ import annotations

import torch
from torch import nn

from aiayn.model.recorder import active_recorder


def masked_softmax(scores: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """softmax over the last dimension of scores (..., S) where mask (bool, broadcastable, True = may attend)
    allows; masked positions get exactly 0, and a fully masked row all zeros (never NaN): as the Transformer's
    attention_steps, masking uses the most negative finite value, not -inf."""
    scores = scores.float()
    if mask is None:
        return torch.softmax(scores, dim=-1)
    weights = torch.softmax(scores.masked_fill(~mask, torch.finfo(scores.dtype).min), dim=-1)
    return weights.masked_fill(~mask, 0.0)


def additive_attention(
    query: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    w_q: torch.Tensor,
    w_k: torch.Tensor,
    w_v: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """e_j = w_v^T tanh(W_q q + W_k k_j); a = softmax(e) over the positions mask allows; context = sum_j a_j v_j.

    query (B, D_q), keys (B, S, D_k), values (B, S, D_v), w_q (A, D_q), w_k (A, D_k), w_v (A,), mask (B, S) bool
    (True = may attend). Returns context (B, D_v) and weights (B, S); a fully masked row gives zeros.
    """
    projected = torch.tanh((query @ w_q.T)[:, None, :] + keys @ w_k.T)  # (B, 1, A) + (B, S, A) -> (B, S, A)
    weights = masked_softmax(projected @ w_v, mask)  # (B, S)
    context = (weights[:, :, None] * values.float()).sum(dim=1)  # (B, S, 1) * (B, S, D_v) -> (B, D_v)
    return context.to(values.dtype), weights


def key_mask(mask: torch.Tensor | None, batch: int) -> torch.Tensor | None:
    """A padding mask (B, S), or the Transformer's (B, 1, 1, S), as (B, 1, S): broadcast over the queries."""
    if mask is None:
        return None
    return mask.reshape(batch, 1, mask.shape[-1])  # (B, 1, 1, S) -> (B, 1, S)


class _Attention(nn.Module):
    """What both attention modules share: weights from their `scores(query, projected_keys)`, the context, and
    the recorder."""

    records_attention = True  # what the attention recorder keeps (aiayn.model.recorder)

    def forward(
        self,
        query: torch.Tensor,
        projected_keys: torch.Tensor,
        values: torch.Tensor,
        mask: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """query (B, T, D_q), projected_keys from `project_keys` (B, S, ...), values (B, S, D_v), mask (B, S) or
        (B, 1, 1, S) True = may attend -> context (B, T, D_v), weights (B, T, S)."""
        weights = masked_softmax(self.scores(query, projected_keys), key_mask(mask, query.shape[0]))  # (B, T, S)
        recorder = active_recorder()
        if recorder is not None:
            recorder.add(self, weights[:, None])  # (B, 1, T, S): one head
        context = (weights @ values.float()).to(values.dtype)  # (B, T, S) @ (B, S, D_v) -> (B, T, D_v)
        return context, weights


class AdditiveAttention(_Attention):
    """Bahdanau's additive (concat) attention: e_tj = w_v^T tanh(W_q q_t + W_k k_j)."""

    def __init__(self, d_query: int, d_key: int, attention_dim: int) -> None:
        super().__init__()
        self.w_q = nn.Linear(d_query, attention_dim, bias=False)
        self.w_k = nn.Linear(d_key, attention_dim, bias=False)
        self.w_v = nn.Parameter(torch.empty(attention_dim))
        nn.init.normal_(self.w_v, std=attention_dim**-0.5)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """keys (B, S, D_k) -> W_k k_j (B, S, A): once per source, not once per target step."""
        return self.w_k(keys)

    def scores(self, query: torch.Tensor, projected_keys: torch.Tensor) -> torch.Tensor:
        """query (B, T, D_q), projected keys (B, S, A) -> e (B, T, S)."""
        hidden = torch.tanh(self.w_q(query)[:, :, None, :] + projected_keys[:, None, :, :])  # (B, T, S, A)
        return hidden @ self.w_v  # (B, T, S)


class GeneralAttention(_Attention):
    """Luong's "general" (bilinear) attention: e_tj = q_t^T W k_j."""

    def __init__(self, d_query: int, d_key: int) -> None:
        super().__init__()
        self.w = nn.Linear(d_key, d_query, bias=False)  # W (D_q, D_k)

    def project_keys(self, keys: torch.Tensor) -> torch.Tensor:
        """keys (B, S, D_k) -> W k_j (B, S, D_q), once per source."""
        return self.w(keys)

    def scores(self, query: torch.Tensor, projected_keys: torch.Tensor) -> torch.Tensor:
        """query (B, T, D_q), projected keys (B, S, D_q) -> e (B, T, S)."""
        return query @ projected_keys.transpose(1, 2)  # (B, T, D_q) @ (B, D_q, S)
