"""The Transformer, built from its parts: masks, attention, layers, the encoder-decoder and the LM."""

from aiayn.model.attention import (
    AttentionRecorder,
    KVCache,
    MultiHeadAttention,
    record_attention,
    scaled_dot_product_attention,
)
from aiayn.model.lm import LanguageModel
from aiayn.model.transformer import Transformer

__all__ = [
    "AttentionRecorder",
    "KVCache",
    "LanguageModel",
    "MultiHeadAttention",
    "Transformer",
    "build_model",
    "record_attention",
    "scaled_dot_product_attention",
]


def build_model(config):
    """The model family named by `config.arch`: Transformer ("seq2seq") or LanguageModel ("lm")."""
    return Transformer(config) if config.arch == "seq2seq" else LanguageModel(config)
