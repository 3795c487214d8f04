"""Attention masks: the only place they are built.

Convention (the same as torch.nn.functional.scaled_dot_product_attention): a boolean tensor in which
True means "this query may attend to this key". Masks are never additive (a large negative constant overflows
in fp16 and turns fully masked rows into NaN); the attention functions apply them with masked_fill / SDPA.

Shapes: B batch, T query length, S key length. Masks broadcast against scores of shape (B, H, T, S).
"""

from __future__ import annotations

import torch


def padding_mask(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """Keys that are real tokens: (B, S) ids -> (B, 1, 1, S) bool, True where ids != pad_id."""
    return (ids != pad_id)[:, None, None, :]  # (B, 1, 1, S)


def causal_mask(t_query: int, t_key: int | None = None, device: torch.device | None = None) -> torch.Tensor:
    """Query i may attend to keys 0 .. offset + i, where offset = t_key - t_query (past tokens in a KV cache).

    Returns (T, S) bool, True on and below the (shifted) diagonal. Future positions are False (paper §3.2.3:
    "we need to prevent leftward information flow in the decoder").
    """
    t_key = t_query if t_key is None else t_key
    if t_key < t_query:
        raise ValueError(f"causal_mask: t_key={t_key} must be >= t_query={t_query}")
    offset = t_key - t_query
    return torch.ones(t_query, t_key, dtype=torch.bool, device=device).tril(diagonal=offset)  # (T, S)


def combine(*masks: torch.Tensor | None) -> torch.Tensor | None:
    """Logical AND of the given masks, broadcast together; None entries mean "no restriction"."""
    out = None
    for m in masks:
        if m is not None:
            out = m if out is None else out & m
    return out
