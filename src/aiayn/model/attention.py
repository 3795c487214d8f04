"""Scaled dot-product attention (paper §3.2.1), multi-head attention (§3.2.2), the KV cache, and the
opt-in attention recorder.

Two paths compute the same thing, and a test proves they agree:
- the readable path, `scaled_dot_product_attention`: softmax(QK^T / sqrt(d_k)) V written out, returning the
  weights too. The recorder and `aiayn explain` use it.
- the fast path, torch.nn.functional.scaled_dot_product_attention (fused kernels, no (T, S) weights kept).

Shapes: B batch, T query length, S key length, D d_model, H heads, Dh head dim (d_k = d_v = D / H).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aiayn.config import ModelConfig
from aiayn.model.masks import causal_mask, combine


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


# Longest key sequence for which CPU half-precision attention runs in fp32 (see fast_attention).
FP32_ATTENTION_MAX_KEYS = 128
# From this many query elements on (4 MB per fp32 copy), that fp32 attention is recomputed in the backward instead
# of keeping fp32 copies of q, k, v. Below it the copies are small and recomputing costs more time than it saves: a
# Shakespeare step (q: 98,304 elements) took 22 ms with recomputation and 18 ms without (benchmarks/RESULTS.md).
RECOMPUTE_MIN_NUMEL = 2**20


def fast_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
) -> torch.Tensor:
    """The fast path: torch.nn.functional.scaled_dot_product_attention (fused kernels; no (T, S) weights kept).

    On the CPU, half-precision inputs of up to FP32_ATTENTION_MAX_KEYS keys run in fp32: PyTorch's bf16
    flash-attention backward on the CPU is much slower than its fp32 one for short sequences (causal, 8 heads,
    4,096 tokens, forward + backward: 200 ms vs 31 ms at 14 tokens, 83 vs 33 at 64, 112 vs 63 at 128, equal at 256;
    see benchmarks/RESULTS.md). Elsewhere (GPUs) the half-precision kernels are the fast ones and run as they are.
    """
    half = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    if q.device.type == "cpu" and q.dtype == torch.float32 and bf16_matmuls():
        return _matmul_attention(q, k, v, mask, dropout_p, is_causal)
    if q.device.type == "cpu" and q.shape[-2] == 1 and torch.compiler.is_compiling():
        # A compiled decoding step (aiayn.model.compile_decoding): one query per row, whose two small matrix
        # products and softmax the compiler generates inline, faster than a call of the fused kernel.
        return _matmul_attention(q, k, v, mask, dropout_p, is_causal)
    if q.device.type == "cpu" and half and k.shape[-2] <= FP32_ATTENTION_MAX_KEYS:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
        large = q.numel() >= RECOMPUTE_MIN_NUMEL and torch.is_grad_enabled() and q.requires_grad
        if large and not torch.compiler.is_compiling():  # compiled graphs plan their own memory
            # Keep only the half-precision q, k, v for the backward and recompute the fp32 attention there:
            # saving the fp32 copies of large batches would cost more memory than the half-precision kernel.
            return checkpoint(_fp32_attention, q, k, v, mask, dropout_p, is_causal, dtype, use_reentrant=False)
        return _fp32_attention(q, k, v, mask, dropout_p, is_causal, dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


# What bf16_matmuls() read last. torch.compile cannot trace the read of PyTorch's setting (a graph break in every
# layer), so compiled code reads this module global instead, a constant it guards on.
_BF16_MATMULS = False


def bf16_matmuls() -> bool:
    """Whether fp32 matrix multiplications on the CPU run with bf16 inputs (train.matmul_precision='bf16').

    Eager calls read PyTorch's setting and remember it; compiled code gets the value remembered last
    (aiayn.train.distributed.matmul_precision refreshes it when it changes the setting). Marking the read as a
    constant with torch.compiler.assume_constant_result instead would import torch._dynamo with this module,
    ~1 s at the start of every command.
    """
    global _BF16_MATMULS
    if not torch.compiler.is_compiling():
        _BF16_MATMULS = torch.backends.mkldnn.matmul.fp32_precision == "bf16"
    return _BF16_MATMULS


def _matmul_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, mask: torch.Tensor | None, dropout_p: float, is_causal: bool
) -> torch.Tensor:
    """Attention as two matrix multiplications around a softmax, for CPU training with
    train.matmul_precision='bf16': there PyTorch's fused CPU kernel without dropout runs ~10x slower than in
    plain fp32 (75 vs 8 ms forward + backward, 160 sentences x 26 tokens, 4 heads), while these two matmuls take
    the bf16 units (5 ms; see benchmarks/RESULTS.md). Masked keys get the most negative finite score and weight
    exactly 0, as in the readable path."""
    if is_causal:
        # (T, S): SDPA's is_causal aligns the diagonal at the top left; causal_mask aligns it at the bottom right.
        # The two agree when T == S, the only case training uses.
        mask = combine(mask, torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril())
    scores = (q * q.shape[-1] ** -0.5) @ k.transpose(-2, -1)  # (..., T, Dh) @ (..., Dh, S) -> (..., T, S)
    if mask is not None:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    weights = scores.softmax(dim=-1)
    if mask is not None:
        # A query with every key masked (a padding-only sequence) gets zero weights, as in the fused kernel.
        weights = weights.masked_fill(~mask.any(dim=-1, keepdim=True), 0.0)
    if dropout_p:
        weights = F.dropout(weights, dropout_p)
    return weights @ v  # (..., T, S) @ (..., S, Dv) -> (..., T, Dv)


def _fp32_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor | None,
    dropout_p: float,
    is_causal: bool,
    dtype: torch.dtype,
) -> torch.Tensor:
    with torch.autocast("cpu", enabled=False):  # autocast would cast the fp32 inputs straight back
        out = F.scaled_dot_product_attention(
            q.float(), k.float(), v.float(), attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal
        )
    return out.to(dtype)


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


_RECORDER: ContextVar[AttentionRecorder | None] = ContextVar("aiayn_attention_recorder", default=None)


class AttentionRecorder:
    """Collects the attention weights of every layer and head while active.

    Use `record_attention(model)`. While it is active, attention runs the readable path (so the weights exist)
    and each call appends its weights (B, H, T, S) to `weights[name]`, where name is the module's name in the
    model, e.g. "encoder.layers.0.self_attn" or "decoder.layers.5.cross_attn". Step-by-step decoding appends
    one entry per step. Outside the context the model runs its fast path and nothing is stored.
    """

    def __init__(self, model: nn.Module, detail: bool = False) -> None:
        self._names = {id(m): name for name, m in model.named_modules() if isinstance(m, MultiHeadAttention)}
        self.weights: dict[str, list[torch.Tensor]] = {}
        self.detail = detail  # also keep every step: q, k, v, mask, scores, scaled, masked, context, concat, output
        self.details: dict[str, list[dict[str, torch.Tensor | None]]] = {}

    def add(self, module: MultiHeadAttention, weights: torch.Tensor) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self.weights.setdefault(name, []).append(weights.detach())

    def add_detail(self, module: MultiHeadAttention, steps: dict[str, torch.Tensor | None]) -> None:
        name = self._names.get(id(module))
        if name is not None:
            kept = {key: None if t is None else t.detach() for key, t in steps.items()}
            self.details.setdefault(name, []).append(kept)


def recording() -> bool:
    """Whether a `record_attention` context is active (compiled decoding steps then run eager)."""
    return _RECORDER.get() is not None


@contextlib.contextmanager
def record_attention(model: nn.Module, detail: bool = False) -> Iterator[AttentionRecorder]:
    """`with record_attention(model) as rec: model(src, tgt)` then read `rec.weights` (and, with detail=True,
    `rec.details`: every intermediate step of each attention call)."""
    recorder = AttentionRecorder(model, detail)
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


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
            raise ValueError(f"position {offset + t - 1} is beyond max_len={self.max_len}")
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

    def __init__(self, config: ModelConfig, cross: bool = False, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
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

        # torch.compile cannot trace ContextVar.get (a graph break in every layer); compiled code never records.
        recorder = None if torch.compiler.is_compiling() else _RECORDER.get()
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
            out = fast_attention(q, k, v, None, dropout_p, is_causal=True)
        else:
            # With a cache, one new query (T == 1) may see every past key; longer chunks need the shifted mask.
            need_causal = causal and T > 1
            full_mask = combine(mask, causal_mask(T, k.shape[2], x.device) if need_causal else None)
            out = fast_attention(q, k, v, full_mask, dropout_p)
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
