"""Typed configuration. No torch import here, so that reading a config (and `aiayn --help`) stays instant.

`ModelConfig` defaults are the paper's base model (Vaswani et al. 2017, Table 3, row "base"); every modern
variant is a string switch, so a config is plain data that YAML and JSON can hold.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_type_hints

# Special token ids, fixed so that every tokenizer, data file and checkpoint agrees on them.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

Arch = Literal["seq2seq", "lm"]
Norm = Literal["post", "pre"]
NormType = Literal["layernorm", "rmsnorm"]
Positional = Literal["sinusoidal", "learned", "rope"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swish", "swiglu"]


@dataclass(kw_only=True)
class ModelConfig:
    """The model's shape and variant switches. The defaults are the paper's base Transformer.

    arch: "seq2seq" (encoder-decoder, translation) or "lm" (decoder-only, GPT-style; uses n_decoder_layers).
    vocab_size: one vocabulary shared by source and target (paper §5.1: shared BPE of ~37,000 tokens).
    norm: "post" = LayerNorm(x + Sublayer(x)) as in the paper §3.1; "pre" = x + Sublayer(LayerNorm(x)).
    norm_type: "layernorm" (the paper) or "rmsnorm".
    positional: "sinusoidal" (paper §3.5), "learned" (Table 3 row E; GPT-2), "rope" (rotary, on q and k).
    activation: FFN non-linearity; "relu" is the paper's max(0, xW1 + b1)W2 + b2 (§3.3).
    tie_embeddings: source embedding = target embedding = pre-softmax weight (paper §3.4).
    scale_embeddings: multiply embeddings by sqrt(d_model) (paper §3.4; GPT-2 does not).
    """

    arch: Arch = "seq2seq"
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1  # §5.4: residual dropout on sublayer outputs and on embeddings + positions
    attention_dropout: float = 0.0  # dropout on attention weights; the paper names none
    max_len: int = 1024
    norm: Norm = "post"
    norm_type: NormType = "layernorm"
    norm_eps: float = 1e-5
    positional: Positional = "sinusoidal"
    rope_base: float = 10000.0
    activation: Activation = "relu"
    tie_embeddings: bool = True
    scale_embeddings: bool = True
    bias: bool = True  # biases in attention projections and the FFN
    output_bias: bool = False  # a bias on the pre-softmax Linear (Marian's final_logits_bias)
    pad_id: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ["vocab_size", "d_model", "n_heads", "d_ff", "max_len"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ["n_encoder_layers", "n_decoder_layers"]:
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 0")
        if self.n_decoder_layers < 1:
            raise ValueError(f"ModelConfig.n_decoder_layers={self.n_decoder_layers} must be >= 1")
        if self.arch == "seq2seq" and self.n_encoder_layers < 1:
            raise ValueError(f"ModelConfig.n_encoder_layers={self.n_encoder_layers} must be >= 1 for arch='seq2seq'")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"each head gets d_model / n_heads dimensions (paper §3.2.2)"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.positional='rope' needs an even head dimension, "
                f"got d_model / n_heads = {self.d_model} / {self.n_heads} = {self.head_dim}"
            )
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"ModelConfig.positional='sinusoidal' needs an even d_model, got {self.d_model}")
        for name in ["dropout", "attention_dropout"]:
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"ModelConfig.{name}={p} must be in [0, 1)")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"ModelConfig.norm_eps={self.norm_eps} must be a positive number")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ValueError(f"ModelConfig.rope_base={self.rope_base} must be a number > 1")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ModelConfig.pad_id={self.pad_id} must be in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        """d_k = d_v = d_model / n_heads (paper §3.2.2)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from plain data (YAML/JSON); an unknown key is an error naming the closest valid key."""
        return from_dict(cls, data)


def from_dict(cls: type, data: dict[str, Any], section: str | None = None):
    """Build the dataclass `cls` from `data`, refusing unknown keys with a 'did you mean' hint."""
    if not isinstance(data, dict):
        raise ValueError(f"{section or cls.__name__}: expected a mapping of keys to values, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ValueError(f"unknown key '{section + '.' if section else ''}{key}' in {cls.__name__}{hint}")
    return cls(**data)


def _check_types(config: Any) -> None:
    """Check each field against its annotation: Literal choices, bool/int/float. Names field, value, allowed."""
    hints = get_type_hints(type(config))
    name_of = type(config).__name__
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = hints[field.name]
        choices = get_args(kind) if getattr(kind, "__origin__", None) is Literal else None
        if choices is not None:
            if value not in choices:
                allowed = " | ".join(repr(c) for c in choices)
                raise ValueError(f"{name_of}.{field.name}={value!r} is not one of {allowed}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be true or false")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be an integer")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be a number")
            setattr(config, field.name, float(value))
