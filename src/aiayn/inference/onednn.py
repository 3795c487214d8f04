"""oneDNN's linear on prepacked weights, for CPU decoding where it is faster than PyTorch's default (MKL).

On an AMD EPYC (AVX-512, AVX512-BF16, no AMX), with torch 2.13, MKL's fp32 products of several rows ran at a half to
a quarter of oneDNN's speed on weights that oneDNN had packed into its blocked layout once
(`torch.ops.mkldnn._reorder_linear_weight`, the packing inductor's freezing uses): the 19 products of a decoder
step at 4 rows (beam 4) 3.3-3.7 ms against 1.3-2.1 ms, at 64 rows 1.2-1.5x; for one row (greedy, one sentence)
neither wins reliably, so single rows keep the plain path. `aiayn.machine.gemm_choice` measures both once per
process and `aiayn.load` packs only where oneDNN won (benchmarks/RESULTS.md, issue 21).

The packed copy is made once, at load: change a weight after loading and that layer keeps computing with the old
one (aiayn.load is for inference; train with aiayn.train). The original fp32 weights stay in place for scoring,
export and int8. Under torch.compile the call is an opaque custom op (inductor's own lowering of the oneDNN
linear accepts only weights frozen into the graph), so compiled decoding steps take it too.
"""

from __future__ import annotations

import weakref

import torch
import torch.nn.functional as F
from torch import nn

from aiayn.machine import linear_onednn, replace_modules
from aiayn.model import OutputProjection

__all__ = ["OneDnnLinear", "pack_linears"]

# Packed weights by the data pointer of the fp32 weight they were made from: the custom op receives the fp32
# parameter (a tensor the compiler can trace) and finds its packed copy here. Each entry keeps a weak reference to
# its parameter: an entry whose parameter is gone, or now points elsewhere, is never used (memory may be reused),
# and is removed when the parameter is freed.
_PACKED: dict[int, tuple[weakref.ref, torch.Tensor]] = {}


def _packed_for(weight: torch.Tensor) -> torch.Tensor | None:
    ptr = weight.data_ptr()
    entry = _PACKED.get(ptr)
    if entry is None:
        return None
    owner = entry[0]()
    if owner is None or owner.data_ptr() != ptr or owner.shape != weight.shape:
        del _PACKED[ptr]
        return None
    return entry[1]


@torch.library.custom_op("aiayn::onednn_linear", mutates_args=())
def onednn_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) by oneDNN on weight's packed copy (F.linear itself when it has none)."""
    packed = _packed_for(weight)
    if packed is None:
        return F.linear(x, weight, bias)
    return linear_onednn(x, packed, bias)


@onednn_linear.register_fake
def _(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    return x.new_empty((*x.shape[:-1], weight.shape[0]))


class OneDnnLinear(nn.Module):
    """A linear layer (nn.Linear or the model's OutputProjection) computed by oneDNN on packed weights for inputs
    of at least MIN_ROWS rows, by F.linear for fewer. Holds the original module's own weight and bias Parameters,
    so `.weight`, `.bias`, state_dict() and parameters() are those of the module it replaces."""

    MIN_ROWS = 2

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.weight, self.bias = module.weight, module.bias
        self.in_features, self.out_features = module.weight.shape[1], module.weight.shape[0]
        with torch.no_grad():
            self.packed = torch.ops.mkldnn._reorder_linear_weight(module.weight.detach().contiguous(), 64)
        ptr = self.weight.data_ptr()
        _PACKED[ptr] = (weakref.ref(self.weight), self.packed)
        weakref.finalize(self.weight, _PACKED.pop, ptr, None)  # the packed copy goes with its parameter

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.numel() >= self.MIN_ROWS * self.in_features:  # (..., in): rows = numel / in
            if torch.compiler.is_compiling():  # an opaque op for the compiler; eagerly, no custom-op dispatch
                return onednn_linear(x, self.weight, self.bias)  # (~20 us a call)
            return linear_onednn(x, self.packed, self.bias)
        return F.linear(x, self.weight, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed for oneDNN"


def pack_linears(model: nn.Module) -> int:
    """Replace every nn.Linear and OutputProjection of `model` (fp32, on the CPU) by a OneDnnLinear sharing its
    parameters; returns how many were replaced. Values equal the plain path's up to rounding (another
    summation order: ~1e-6 relative)."""

    def fp32_linear(m: nn.Module) -> bool:
        weight = getattr(m, "weight", None)
        is_linear = type(m) is nn.Linear or isinstance(m, OutputProjection)
        return is_linear and isinstance(weight, nn.Parameter) and weight.dtype == torch.float32

    return replace_modules(model, fp32_linear, OneDnnLinear)
