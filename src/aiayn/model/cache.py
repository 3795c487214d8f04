"""The KV cache: what a decoder keeps between decoding steps (paper §3.2.3's masked self-attention makes each
step's keys and values final, so they are computed once).

`KVCache` is the Transformer families' implementation of the cache protocol (`aiayn.model.protocols.Cache`):
`length`, `reorder(rows, cross)` for beam search, and per layer a self-attention part that grows and an
encoder-decoder part that holds the projected memory once.

Shapes: B batch, H heads, Dh head dim.
"""

from __future__ import annotations

import torch


class AttentionCache:
    """Keys and values of one attention module across decoding steps.

    Self-attention appends one step at a time into a buffer that grows by doubling (no re-concatenation of the
    whole past at every step); encoder-decoder attention stores the projected memory once.
    """

    def __init__(self, capacity: int = 0) -> None:
        self.k: torch.Tensor | None = None  # (B, H, capacity, Dh)
        self.v: torch.Tensor | None = None
        self.length = 0
        self.capacity = capacity  # steps to allocate at the first append, when known (no regrowth later)

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Add t new steps (k, v: (B, H, t, Dh)); return every step so far, (B, H, length, Dh) views."""
        end = self.length + k.shape[2]
        if self.k is None or end > self.k.shape[2]:
            capacity = max(end, 2 * (0 if self.k is None else self.k.shape[2]), 16, self.capacity)
            new_k = k.new_empty(k.shape[0], k.shape[1], capacity, k.shape[3])  # (B, H, capacity, Dh)
            new_v = v.new_empty(v.shape[0], v.shape[1], capacity, v.shape[3])
            if self.k is not None:
                new_k[:, :, : self.length] = self.k[:, :, : self.length]
                new_v[:, :, : self.length] = self.v[:, :, : self.length]
            self.k, self.v = new_k, new_v
        self.k[:, :, self.length : end] = k
        self.v[:, :, self.length : end] = v
        self.length = end
        return self.k[:, :, :end], self.v[:, :, :end]

    def set_static(self, k: torch.Tensor, v: torch.Tensor) -> None:
        """Store keys/values that never change (the projected encoder memory)."""
        self.k, self.v, self.length = k, v, k.shape[2]

    def reorder(self, index: torch.Tensor) -> None:
        """Keep batch rows `index` (beam search reorders hypotheses after each step)."""
        if self.k is not None:
            self.k = self.k.index_select(0, index)
            self.v = self.v.index_select(0, index)


class LayerCache:
    """The caches of one decoder layer: masked self-attention and encoder-decoder attention."""

    def __init__(self, capacity: int = 0) -> None:
        self.self_attn = AttentionCache(capacity)
        self.cross_attn = AttentionCache()


class KVCache:
    """Everything a decoder needs to continue from where it stopped: one LayerCache per decoder layer.

    Create it with `model.new_cache()`, pass it to `decode` / `forward` at every step, and feed only the new
    tokens: past keys/values are reused, encoder-decoder keys/values are computed once.
    """

    def __init__(self, n_layers: int, capacity: int = 0) -> None:
        # capacity: the most steps this cache will hold, when known (decoding knows its length limit); the
        # buffers are allocated once at that size instead of growing by doubling.
        self.layers = [LayerCache(capacity) for _ in range(n_layers)]

    @property
    def length(self) -> int:
        """Number of target positions already processed (the position of the next token)."""
        return self.layers[0].self_attn.length

    def reorder(self, index: torch.Tensor, cross: bool = True) -> None:
        """Keep batch rows `index` of every cache. cross=False leaves the encoder-decoder caches alone: beam
        search moves hypotheses between the beams of one source, whose memory rows are identical."""
        for layer in self.layers:
            layer.self_attn.reorder(index)
            if cross:
                layer.cross_attn.reorder(index)


