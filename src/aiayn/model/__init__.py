"""The Transformer, built from its parts: masks, attention, layers, the encoder-decoder and the LM; and the
recurrent encoder-decoders (aiayn.model.rnn) it replaced.

`build(config)` makes the family `config.arch` names (aiayn.model.registry, the one place that reads it);
every family implements one of the protocols in aiayn.model.protocols.
"""

from aiayn.model.attention import MultiHeadAttention, scaled_dot_product_attention
from aiayn.model.cache import KVCache
from aiayn.model.kernels import SDPA, Kernels, kernels_of, use_kernels
from aiayn.model.lm import LanguageModel
from aiayn.model.protocols import Cache, CausalLM, Seq2SeqModel, Sublayer
from aiayn.model.recorder import AttentionRecorder, record_attention
from aiayn.model.registry import FAMILIES, build, family, task_kind
from aiayn.model.rnn import RNNSeq2Seq
from aiayn.model.transformer import OutputProjection, Transformer

__all__ = [
    "FAMILIES", "SDPA", "AttentionRecorder", "Cache", "CausalLM", "KVCache", "Kernels", "LanguageModel",
    "MultiHeadAttention", "OutputProjection", "RNNSeq2Seq", "Seq2SeqModel", "Sublayer", "Transformer", "build",
    "build_model", "compile_decoding",
    "family", "inference_layout", "kernels_of", "record_attention", "scaled_dot_product_attention", "task_kind",
    "use_kernels",
]  # fmt: skip

build_model = build  # the name before aiayn.model.build; kept for users' scripts


def __getattr__(name: str):
    """`compile_decoding` and `inference_layout` moved to aiayn.inference.compiled (compile and weight layout
    are inference's policy, not the model's); these names keep working for users' scripts. A lazy import, so
    that aiayn.model does not load the inference layer: the one upward import, listed in tests/test_imports.py."""
    if name in ("compile_decoding", "inference_layout"):
        from aiayn.inference import compiled

        return getattr(compiled, name)
    raise AttributeError(f"module 'aiayn.model' has no attribute {name!r}")
