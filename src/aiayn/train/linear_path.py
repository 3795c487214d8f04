"""The GEMM path of a CPU training run (`train.gemm`): PyTorch's F.linear (MKL on x86) or oneDNN's linear.

On an AMD EPYC (AVX-512, no AMX), torch 2.13, oneDNN's fp32 linear ran a training step's forward products 1.1-1.6x
and the products for the input gradient (grad @ W) ~1.2x faster than MKL, while MKL stayed faster for the weight
gradient (grad^T @ x); on Intel CPUs MKL is PyTorch's tuned default. So `auto` takes oneDNN on AMD CPUs (from the
CPU's vendor, not a timing: every process of a run, and its resume, must choose alike) and MKL elsewhere, and the
choice is written into the run's config.yaml like train.precision, so a resume keeps it.

Only fp32 products change path: under bf16 autocast PyTorch already hands matrix products to oneDNN, and compiled
code (train.compile) keeps its own. Values equal F.linear's up to summation order (tests/test_onednn.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from aiayn.errors import ConfigError
from aiayn.machine import cpu_info, linear_onednn, onednn_linear_available, replace_modules

__all__ = ["OneDnnTrainLinear", "resolve_gemm", "use_onednn_linears"]


class _OneDnnLinearFunction(torch.autograd.Function):
    """y = x W^T + b by oneDNN; dx = dy W by oneDNN (W^T as a strided view: no copy); dW = dy^T x by PyTorch's mm,
    the faster of the two for that product here; db = the column sums of dy."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
        x = x.contiguous()
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        return linear_onednn(x, weight, bias)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        grad = grad.contiguous()
        grad_x = linear_onednn(grad, weight.t(), None) if ctx.needs_input_grad[0] else None  # (..., in)
        rows = grad.reshape(-1, grad.shape[-1])  # (N, out)
        grad_w = rows.t() @ x.reshape(-1, x.shape[-1]) if ctx.needs_input_grad[1] else None  # (out, in)
        grad_b = rows.sum(0) if ctx.has_bias and ctx.needs_input_grad[2] else None  # (out,)
        return grad_x, grad_w, grad_b


class OneDnnTrainLinear(nn.Module):
    """An nn.Linear whose fp32 products go through oneDNN (see the module docstring); holds the replaced layer's
    own weight and bias Parameters, so parameters(), state_dict() and the optimizer see the same tensors."""

    def __init__(self, linear: nn.Linear) -> None:
        super().__init__()
        self.weight, self.bias = linear.weight, linear.bias
        self.in_features, self.out_features = linear.in_features, linear.out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        plain = x.dtype != torch.float32 or torch.is_autocast_enabled(x.device.type) or torch.compiler.is_compiling()
        if plain or x.device.type != "cpu":
            return F.linear(x, self.weight, self.bias)
        return _OneDnnLinearFunction.apply(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN"


def use_onednn_linears(model: nn.Module) -> int:
    """Replace every nn.Linear of `model` by a OneDnnTrainLinear sharing its parameters; returns how many."""
    return replace_modules(model, lambda m: type(m) is nn.Linear, OneDnnTrainLinear)


def resolve_gemm(asked: str, device: torch.device, recorded: str | None) -> str:
    """train.gemm as the run uses it: "mkl" or "onednn". "auto" keeps the resumed run's choice, else takes oneDNN
    on an AMD CPU with this torch's oneDNN linear, else MKL. "onednn" where it cannot run is one line of ConfigError."""
    if asked == "auto":
        if recorded in ("mkl", "onednn"):
            asked = recorded
        else:
            amd = device.type == "cpu" and cpu_info().vendor == "AMD"
            return "onednn" if amd and onednn_linear_available() else "mkl"
    if asked == "onednn" and device.type != "cpu":
        raise ConfigError(f"train.gemm='onednn' is for CPUs; on {device.type} use 'auto' or 'mkl'")
    if asked == "onednn" and not onednn_linear_available():
        raise ConfigError(f"train.gemm='onednn': torch {torch.__version__} has no oneDNN linear here; use 'mkl'")
    return asked
