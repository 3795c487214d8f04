"""Scaled dot-product attention (paper §3.2.1), multi-head attention (§3.2.2) and rotary positions.

Two paths compute the same thing, and a test proves they agree:
- the readable path, `scaled_dot_product_attention`: softmax(QK^T / sqrt(d_k)) V written out, returning the
  weights too. The recorder and `aiayn explain` use it.
- the fast path, torch.nn.functional.scaled_dot_product_attention (fused kernels, no (T, S) weights kept), or
  the CPU variant the model's runner chose (aiayn.model.kernels).
The KV cache lives in aiayn.model.cache, the recorder in aiayn.model.recorder (both importable from here too).

Shapes: B batch, T query length, S key length, D d_model, H heads, Dh head dim (d_k = d_v = D / H).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from aiayn.config import ModelConfig
from aiayn.errors import RequestError
from aiayn.model.cache import AttentionCache, KVCache, LayerCache
from aiayn.model.kernels import SDPA, Kernels, fast_attention
from aiayn.model.masks import causal_mask, combine
from aiayn.model.recorder import AttentionRecorder, active_recorder, record_attention, recording

__all__ = [
    "AttentionCache", "AttentionRecorder", "KVCache", "LayerCache", "MultiHeadAttention", "RotaryEmbedding",
    "attention_steps", "fast_attention", "record_attention", "recording", "scaled_dot_product_attention",
]  # fmt: skip


def scaled_dot_product_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, scale: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention(Q, K, V) = softmax(QK^T / sqrt(d_k)) V, the paper's equation (1), written out.

    q: (..., T, Dh), k: (..., S, Dh), v: (..., S, Dv); mask: bool broadcastable to (..., T, S), True = may
    attend. Returns (output (..., T, Dv), weights (..., T, S)). `scale=False` gives plain dot-product
    attention (the seeds' first example). Computed in fp32 whatever the input dtype, so bf16 inputs lose no
    precision in the softmax; the output is cast back to q's dtype.

    Masked keys get weight exactly 0. A query whose keys are all masked (a padding-only sequence) gets all-zero
    weights and a zero output rather than NaN: masking uses the dtype's most negative finite value, never -inf,
    and never an additive constant that could overflow.
    """
    steps = attention_steps(q, k, v, mask, scale)
    return steps["context"], steps["weights"]


def attention_steps(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None = None, scale: bool = True
) -> dict[str, torch.Tensor]:
    """`scaled_dot_product_attention` one step at a time, keeping each step (what `aiayn explain` shows):
    scores QK^T, scaled (/ sqrt(d_k)), masked (masked keys at the most negative float), weights (softmax) and
    context (weights V, in q's dtype)."""
    scores = q.float() @ k.float().transpose(-2, -1)  # (..., T, S)
    scaled = scores / math.sqrt(q.shape[-1]) if scale else scores
    masked = scaled.masked_fill(~mask, torch.finfo(scaled.dtype).min) if mask is not None else scaled
    weights = torch.softmax(masked, dim=-1)  # (..., T, S)
    if mask is not None:
        # Rows with every key masked would otherwise be uniform; make them (and every masked key) exactly 0.
        weights = weights.masked_fill(~mask, 0.0)
    context = (weights @ v.float()).to(q.dtype)  # (..., T, Dv)
    return {"scores": scores, "scaled": scaled, "masked": masked, "weights": weights, "context": context}


class RotaryEmbedding(nn.Module):
    """Rotary position embedding (Su et al. 2021): rotates pairs of q/k dimensions by position-dependent angles,
    so q·k depends on the relative offset. Applied to q and k of self-attention only."""

    def __init__(self, head_dim: int, max_len: int, base: float) -> None:
        super().__init__()
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)  # (Dh/2,)
        angles = torch.arange(max_len, dtype=torch.float64)[:, None] * inv_freq[None, :]  # (max_len, Dh/2)
        self.register_buffer("cos", angles.cos().float(), persistent=False)
        self.register_buffer("sin", angles.sin().float(), persistent=False)
        self.max_len = max_len

    def forward(self, x: torch.Tensor, offset: int) -> torch.Tensor:
        """x: (B, H, T, Dh) at positions offset .. offset+T-1 -> rotated x, same shape and dtype."""
        t = x.shape[-2]
        if offset + t > self.max_len:
            raise RequestError(f"position {offset + t - 1} is beyond max_len={self.max_len}")
        cos = self.cos[offset : offset + t]  # (T, Dh/2)
        sin = self.sin[offset : offset + t]
        x1, x2 = x.float().unflatten(-1, (-1, 2)).unbind(-1)  # each (B, H, T, Dh/2): even and odd dims
        rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)  # (B, H, T, Dh/2, 2)
        return rotated.flatten(-2).to(x.dtype)  # (B, H, T, Dh)


class MultiHeadAttention(nn.Module):
    """MultiHead(Q, K, V) = Concat(head_1, ..., head_h) W^O, head_i = Attention(Q W_i^Q, K W_i^K, V W_i^V).

    All heads are projected by one matrix multiplication: self-attention fuses Q, K and V into `qkv_proj`
    (D -> 3D); encoder-decoder attention projects the query with `q_proj` and the memory with `kv_proj`
    (D -> 2D), once per sequence when a cache is given.
    """

    records_attention = True  # what the attention recorder keeps (aiayn.model.recorder)

    def __init__(self, config: ModelConfig, cross: bool = False, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.kernels: Kernels = SDPA  # set by whoever runs the model (aiayn.model.kernels.use_kernels)
        d, bias = config.d_model, config.bias
        self.n_heads, self.head_dim, self.cross = config.n_heads, config.head_dim, cross
        if cross:
            self.q_proj = nn.Linear(d, d, bias=bias)
            self.kv_proj = nn.Linear(d, 2 * d, bias=bias)
        else:
            self.qkv_proj = nn.Linear(d, 3 * d, bias=bias)
        self.out_proj = nn.Linear(d, d, bias=bias)
        self.attention_dropout = config.attention_dropout
        self.rotary = rotary

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        mask: torch.Tensor | None = None,
        causal: bool = False,
        cache: AttentionCache | None = None,
    ) -> torch.Tensor:
        """x: (B, T, D) queries; memory: (B, S, D) encoder output for cross-attention (None: self-attention).

        mask: bool, broadcastable to (B, H, T, S), True = may attend (padding of the keys). causal: queries may
        not attend to later positions (decoder self-attention); with a cache, "later" counts past steps.
        """
        B, T, _ = x.shape
        H, Dh = self.n_heads, self.head_dim
        offset = cache.length if (cache is not None and not self.cross) else 0
        q, k, v = self._project(x, memory, cache)  # q (B, H, T, Dh); k, v (B, H, S, Dh)
        if self.rotary is not None:
            q, k = self.rotary(q, offset), self.rotary(k, offset)
        if cache is not None and not self.cross:
            k, v = cache.append(k, v)  # (B, H, offset + T, Dh)

        recorder = active_recorder()
        dropout_p = self.attention_dropout if self.training else 0.0
        steps: dict[str, torch.Tensor] = {}
        if recorder is not None:
            full_mask = combine(mask, causal_mask(T, k.shape[2], x.device) if causal else None)
            steps = attention_steps(q, k, v, full_mask)
            out, weights = steps["context"], steps["weights"]
            recorder.add(self, weights)
            if dropout_p:
                out = (F.dropout(weights, dropout_p) @ v.float()).to(q.dtype)
        elif causal and offset == 0 and mask is None:
            out = fast_attention(q, k, v, None, dropout_p, True, self.kernels)
        else:
            # With a cache, one new query (T == 1) may see every past key; longer chunks need the shifted mask.
            need_causal = causal and T > 1
            full_mask = combine(mask, causal_mask(T, k.shape[2], x.device) if need_causal else None)
            out = fast_attention(q, k, v, full_mask, dropout_p, False, self.kernels)
        out = out.transpose(1, 2).reshape(B, T, H * Dh)  # (B, T, D): concatenate the heads
        result = self.out_proj(out)
        if recorder is not None and recorder.detail:
            recorder.add_detail(
                self, {"q": q, "k": k, "v": v, "mask": full_mask, **steps, "concat": out, "output": result}
            )
        return result

    def _project(
        self, x: torch.Tensor, memory: torch.Tensor | None, cache: AttentionCache | None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, T, _ = x.shape
        H, Dh = self.n_heads, self.head_dim
        if not self.cross:
            qkv = self.qkv_proj(x).view(B, T, 3, H, Dh)  # (B, T, 3, H, Dh)
            q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, T, Dh)
            return q, k, v
        q = self.q_proj(x).view(B, T, H, Dh).transpose(1, 2)  # (B, H, T, Dh)
        if cache is not None and cache.k is not None:
            return q, cache.k, cache.v  # memory keys/values were projected at the first step
        if memory is None:
            raise ValueError("encoder-decoder attention needs `memory` (the encoder output)")
        S = memory.shape[1]
        kv = self.kv_proj(memory).view(B, S, 2, H, Dh)  # (B, S, 2, H, Dh)
        k, v = kv.permute(2, 0, 3, 1, 4).unbind(0)  # each (B, H, S, Dh)
        if cache is not None:
            cache.set_static(k, v)
        return q, k, v
