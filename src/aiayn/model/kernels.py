"""Which kernels a model runs: chosen once by whoever runs it (the trainer, inference) and handed to it with
`use_kernels(model, kernels)`, never read from a global. The model files hold no device, precision or compile
policy; they ask their `Kernels` (a plain attribute of each attention and dropout module) which way to go.

The variants, each equal in value to the plain path (tests/test_attention.py, tests/test_layers.py):
- short_fp32: on the CPU, half-precision attention over at most FP32_ATTENTION_MAX_KEYS keys runs in fp32.
  PyTorch's bf16 flash-attention backward on the CPU is much slower than its fp32 one for short sequences
  (causal, 8 heads, 4,096 tokens, forward + backward: 200 ms vs 31 ms at 14 tokens, 83 vs 33 at 64, 112 vs 63
  at 128, equal at 256; benchmarks/RESULTS.md). On GPUs the half-precision kernels are the fast ones.
- matmul_attention: fp32 attention on the CPU as two matrix products around a softmax, for training with
  train.matmul_precision='bf16' (the products then take the bf16 units; PyTorch's fused CPU kernel ignores them).
- compiled_step_products: one-query decoding steps inside compiled code as explicit products (compile_decoding).
- cpu_dropout: dropout on the CPU from 16-bit random integers (aiayn.model.layers.Dropout).

Shapes: B batch, H heads, T query length, S key length, Dh head dim.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from aiayn.model.masks import combine


@dataclass(frozen=True)
class Kernels:
    """The kernel choices of one model (see the module docstring); all False = PyTorch's plain kernels."""

    short_fp32: bool = False
    matmul_attention: bool = False
    compiled_step_products: bool = False
    cpu_dropout: bool = False

    def replace(self, **changes: bool) -> Kernels:
        return dataclasses.replace(self, **changes)


SDPA = Kernels()  # PyTorch's fused attention and dropout, as they are


def use_kernels(model: nn.Module, kernels: Kernels) -> nn.Module:
    """Hand `kernels` to every module of `model` that asks for them (attention, dropout); returns the model."""
    for module in model.modules():
        if hasattr(module, "kernels"):
            module.kernels = kernels
    return model


def kernels_of(model: nn.Module) -> Kernels:
    """The kernels `model` runs now (those of its first module that has any)."""
    return next((m.kernels for m in model.modules() if hasattr(m, "kernels")), SDPA)


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
    kernels: Kernels = SDPA,
) -> torch.Tensor:
    """The fast path: torch.nn.functional.scaled_dot_product_attention (fused kernels; no (T, S) weights kept),
    or the variant `kernels` chooses for the CPU (see Kernels). Same values, up to rounding."""
    cpu = q.device.type == "cpu"
    if cpu and kernels.matmul_attention and q.dtype == torch.float32:
        return _matmul_attention(q, k, v, mask, dropout_p, is_causal)
    if cpu and kernels.compiled_step_products and q.shape[-2] == 1 and torch.compiler.is_compiling():
        # A compiled decoding step: one query per row, whose two small matrix products and softmax the compiler
        # generates inline, faster than a call of the fused kernel.
        return _matmul_attention(q, k, v, mask, dropout_p, is_causal)
    half = q.dtype in (torch.bfloat16, torch.float16) or torch.is_autocast_enabled("cpu")
    if cpu and kernels.short_fp32 and half and k.shape[-2] <= FP32_ATTENTION_MAX_KEYS:
        dtype = torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu") else q.dtype
        large = q.numel() >= RECOMPUTE_MIN_NUMEL and torch.is_grad_enabled() and q.requires_grad
        if large and not torch.compiler.is_compiling():  # compiled graphs plan their own memory
            # Keep only the half-precision q, k, v for the backward and recompute the fp32 attention there:
            # saving the fp32 copies of large batches would cost more memory than the half-precision kernel.
            return checkpoint(_fp32_attention, q, k, v, mask, dropout_p, is_causal, dtype, use_reentrant=False)
        return _fp32_attention(q, k, v, mask, dropout_p, is_causal, dtype)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)


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


