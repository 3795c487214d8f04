"""The Transformer, built from its parts: masks, attention, layers, the encoder-decoder and the LM."""

from aiayn.model.attention import (
    AttentionRecorder,
    KVCache,
    MultiHeadAttention,
    record_attention,
    scaled_dot_product_attention,
)
from aiayn.model.lm import LanguageModel
from aiayn.model.transformer import OutputProjection, Transformer

__all__ = [
    "AttentionRecorder",
    "KVCache",
    "LanguageModel",
    "MultiHeadAttention",
    "Transformer",
    "build_model",
    "inference_layout",
    "record_attention",
    "scaled_dot_product_attention",
]


def build_model(config):
    """The model family named by `config.arch`: Transformer ("seq2seq") or LanguageModel ("lm")."""
    return Transformer(config) if config.arch == "seq2seq" else LanguageModel(config)


def inference_layout(model):
    """Store every weight matrix of `model`'s linear layers (and the output projection) column-major, in place,
    for decoding on the CPU; returns the model. Values, shapes and results do not change; only the memory order.

    `F.linear(x, W)` computes x @ W^T. With W (out, in) row-major, as PyTorch creates it, the CPU GEMM reads W^T
    transposed; with W stored column-major, W^T is an ordinary row-major (in, out) matrix, the order the CPU
    GEMM streams fastest when x has few rows, as in decoding (one row per sentence and beam). The measurements
    are in benchmarks/RESULTS.md (decoding). Training is unaffected: `aiayn.load` applies it, the trainer does not.
    """
    import torch

    with torch.no_grad():
        for module in model.modules():
            weight = getattr(module, "weight", None)
            is_matrix = isinstance(weight, torch.nn.Parameter) and weight.dim() == 2 and weight.is_contiguous()
            if is_matrix and isinstance(module, torch.nn.Linear | OutputProjection):
                weight.data = weight.data.t().contiguous().t()  # same (out, in) shape, strides (1, out)
    return model
