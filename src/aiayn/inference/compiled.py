"""What inference decides about a model, and the model does not: the weight layout for CPU decoding, and a
compiled decoding step. `aiayn.load` applies the first on the CPU, and the second with compile=True.
"""

from __future__ import annotations

import torch

from aiayn.config import TaskKind
from aiayn.inference.onednn import OneDnnLinear
from aiayn.model import OutputProjection, kernels_of, use_kernels
from aiayn.model.recorder import recording


def inference_layout(model):
    """Store every weight matrix of `model`'s linear layers (and the output projection) column-major, in place,
    for decoding on the CPU; returns the model. Values, shapes and results do not change; only the memory order.

    `F.linear(x, W)` computes x @ W^T. With W (out, in) row-major, as PyTorch creates it, the CPU GEMM reads W^T
    transposed; with W stored column-major, W^T is an ordinary row-major (in, out) matrix, the order the CPU
    GEMM streams fastest when x has few rows, as in decoding (one row per sentence and beam). The measurements
    are in benchmarks/RESULTS.md (decoding). Training is unaffected: `aiayn.load` applies it, the trainer does not.
    """
    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            is_matrix = isinstance(weight, torch.nn.Parameter) and weight.dim() == 2 and weight.is_contiguous()
            if is_matrix and isinstance(module, torch.nn.Linear | OutputProjection):
                weight.data = weight.data.t().contiguous().t()  # same (out, in) shape, strides (1, out)
    return model


PACKED_COMPILED_MIN_ROWS = 16  # see compile_decoding


def compile_decoding(model):
    """Compile the step that decoding repeats, in place, with torch.compile; returns the model.

    That step is `Transformer.decode` (one new token against the cache and the encoder memory) or
    `LanguageModel.forward` with a cache. At batch 1 a step spends most of its time outside the matrix-vector
    products: in PyTorch's dispatch of ~15 small operations per layer and in Python. Compiled, each step is one
    call into generated code: 1.2-1.35x faster at batch 1 on a 2-core CPU (benchmarks/RESULTS.md). The first step of
    each batch (empty cache: it also projects the encoder memory, or reads the prompt) stays eager, and the
    decoders size the cache at their length limit up front, so one graph with dynamic shapes (batch, source
    length, steps so far) serves every later step; batches of one sentence get a second graph. Each costs
    ~10-20 s of compilation on a 2-core CPU, once per process: worth it for many calls at batch 1 (a service,
    interactive use), not for one batched file. On the CPU the generated code includes its C++ wrapper (inductor's
    cpp_wrapper), which removes the per-operation Python. Tokens and scores are the eager ones
    (tests/test_decoding.py). Calls without a cache (whole-sequence forward passes) and steps taken while
    `record_attention` is active run eager, so attention is still recorded. Compiling twice is a no-op.

    With oneDNN's packed linear layers (aiayn.inference.onednn, chosen where it measured faster), steps of fewer
    than PACKED_COMPILED_MIN_ROWS rows (batch x beam) stay eager: the compiled graph reaches oneDNN through a
    custom op (~20 us of dispatch per layer) and, on the AMD EPYC measured, beam 4 at batch 1 took 2.7-2.9 ms a
    step eager against 3.4-4.1 ms compiled, and greedy at batch 1 was a tie; at batch 64 compiled stayed faster
    (7.8-9.0 against 9.0-10.0 ms a step).
    """
    seq2seq = model.task is TaskKind.PAIRS
    eager = model.decode if seq2seq else model.forward
    if hasattr(eager, "compiled") or not getattr(model, "compiled_decoding", True):
        return model  # compiled already, or a family whose step is fused already (aiayn.model.rnn) stays eager
    use_kernels(model, kernels_of(model).replace(compiled_step_products=True))
    options = {"cpp_wrapper": True} if next(model.parameters()).device.type == "cpu" else None
    compiled = torch.compile(eager, dynamic=True, options=options)
    min_rows = PACKED_COMPILED_MIN_ROWS if any(isinstance(m, OneDnnLinear) for m in model.modules()) else 0

    def run(new: torch.Tensor, *rest, cache=None):
        if cache is None or cache.length == 0 or recording() or new.shape[0] < min_rows:
            return eager(new, *rest, cache=cache)
        # The new tokens arrive as (B, T) views with varying strides (argmax, top-k, gathers): one layout for
        # all, instead of one compiled graph per layout.
        return compiled(new.clone(memory_format=torch.contiguous_format), *rest, cache=cache)

    if seq2seq:

        def decode(tgt, memory, src_mask, cache=None):
            return run(tgt, memory, src_mask, cache=cache)

        decode.compiled = compiled
        model.decode = decode
    else:

        def forward(ids, cache=None):
            return run(ids, cache=cache)

        forward.compiled = compiled
        model.forward = forward
    return model
