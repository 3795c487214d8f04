"""The model's configuration: its shape, its variant switches, its special token ids, and the task kind.

`ModelConfig` defaults are the paper's base model (Vaswani et al. 2017, Table 3, row "base"); every modern
variant is a string switch, so a config is plain data that YAML and JSON can hold.
"""

from __future__ import annotations

import dataclasses
import enum
import math
from dataclasses import dataclass
from typing import Any, Literal

from aiayn.config.fields import check_types, from_dict
from aiayn.errors import ConfigError

# The special token ids of every tokenizer aiayn trains (the defaults of ModelConfig's *_id fields). A model
# converted from elsewhere (Marian, GPT-2) records its own ids in its config instead.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

Arch = Literal["seq2seq", "lm", "rnn"]
RNNCell = Literal["lstm", "gru", "rnn"]
RNNNonlinearity = Literal["tanh", "relu"]
RNNAttention = Literal["additive", "general", "none"]
Norm = Literal["post", "pre"]
NormType = Literal["layernorm", "rmsnorm"]
Positional = Literal["sinusoidal", "learned", "rope"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swish", "swiglu"]


class TaskKind(str, enum.Enum):
    """What a model family learns from: pairs of texts (translation: source -> target) or plain text (a
    language model). Data, the trainer and inference branch on this, never on an architecture name."""

    PAIRS = "pairs"
    TEXT = "text"


@dataclass(frozen=True)
class SpecialIds:
    """The one source of special token ids, read by masks, padding, the loss and decoding alike.

    pad: fills rows to one length and is ignored by the loss; bos: the decoder's start token (Marian starts
    with its pad token); eos: ends a sequence; unk: out-of-vocabulary text. `never_emit`: ids decoding must
    never produce (padding and the start token, unless the start token is also the end).
    """

    pad: int = PAD_ID
    bos: int = BOS_ID
    eos: int = EOS_ID
    unk: int = UNK_ID
    never: tuple[int, ...] | None = None  # the model's own list (an imported model's); None: derived as below

    @property
    def never_emit(self) -> tuple[int, ...]:
        if self.never is not None:
            return tuple(sorted(set(self.never)))
        return tuple(sorted({self.pad, self.bos} - {self.eos}))


# What a recurrent encoder-decoder (arch "rnn") does not read: multi-head attention, positions, normalisation,
# the FFN and the biases of attention projections.
TRANSFORMER_ONLY_KEYS = ("n_heads", "d_ff", "attention_dropout", "norm", "norm_type", "norm_eps", "positional",
                         "rope_base", "activation", "bias")  # fmt: skip


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

    arch "rnn" (aiayn.model.rnn: recurrent encoder-decoder) reads d_model (the hidden size), the layer counts,
    dropout, max_len, the embedding and output switches and the rnn_* keys; `ignored_keys` lists the rest.
    rnn_cell: "lstm", "gru" or "rnn" (Elman, with rnn_nonlinearity "tanh" or "relu").
    rnn_attention: "additive" (Bahdanau), "general" (Luong q^T W k) or "none" (the fixed vector C only).
    rnn_attention_dim: A, the additive attention's size (None: d_model). rnn_bidirectional: the encoder's.
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
    pad_id: int = PAD_ID
    bos_id: int = BOS_ID  # the decoder's start token
    eos_id: int = EOS_ID
    unk_id: int = UNK_ID
    # The ids decoding must never produce. null: padding and the start token (unless it is also the end), right
    # for every model aiayn trains. An imported model records its own: GPT-2 none (its pad is a real token),
    # Marian the ids its generation config bans (bad_words_ids).
    never_emit_ids: list[int] | None = None
    rnn_cell: RNNCell = "lstm"
    rnn_nonlinearity: RNNNonlinearity = "tanh"
    rnn_attention: RNNAttention = "additive"
    rnn_attention_dim: int | None = None
    rnn_bidirectional: bool = True

    def __post_init__(self) -> None:
        check_types(self)
        positive = ["vocab_size", "d_model", "n_heads", "d_ff", "max_len"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ["n_encoder_layers", "n_decoder_layers"]:
            if getattr(self, name) < 0:
                raise ConfigError(f"ModelConfig.{name}={getattr(self, name)} must be >= 0")
        if self.n_decoder_layers < 1:
            raise ConfigError(f"ModelConfig.n_decoder_layers={self.n_decoder_layers} must be >= 1")
        if self.arch in ("seq2seq", "rnn") and self.n_encoder_layers < 1:
            raise ConfigError(
                f"ModelConfig.n_encoder_layers={self.n_encoder_layers} must be >= 1 for arch={self.arch!r}"
            )
        self._check_rnn()
        if self.arch != "rnn":  # heads and positions mean nothing to a recurrent model (ignored_keys)
            self._check_heads()
        for name in ["dropout", "attention_dropout"]:
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"ModelConfig.{name}={p} must be in [0, 1)")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ConfigError(f"ModelConfig.norm_eps={self.norm_eps} must be a positive number")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ConfigError(f"ModelConfig.rope_base={self.rope_base} must be a number > 1")
        for name in ("pad_id", "bos_id", "eos_id", "unk_id"):
            if not 0 <= getattr(self, name) < self.vocab_size:
                raise ConfigError(
                    f"ModelConfig.{name}={getattr(self, name)} must be in [0, vocab_size={self.vocab_size})"
                )
        if self.never_emit_ids is not None and not isinstance(self.never_emit_ids, list):
            raise ConfigError(f"ModelConfig.never_emit_ids={self.never_emit_ids!r} must be a list of ids, or null")
        for i in self.never_emit_ids or []:
            if isinstance(i, bool) or not isinstance(i, int) or not 0 <= i < self.vocab_size:
                raise ConfigError(f"ModelConfig.never_emit_ids: {i!r} must be a token id in [0, {self.vocab_size})")
        if self.eos_id == self.pad_id:
            raise ConfigError(f"ModelConfig.eos_id={self.eos_id} equals pad_id: a text's end must be its own token")

    def _check_heads(self) -> None:
        if self.d_model % self.n_heads:
            raise ConfigError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"each head gets d_model / n_heads dimensions (paper §3.2.2)"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ConfigError(
                f"ModelConfig.positional='rope' needs an even head dimension, "
                f"got d_model / n_heads = {self.d_model} / {self.n_heads} = {self.head_dim}"
            )
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ConfigError(f"ModelConfig.positional='sinusoidal' needs an even d_model, got {self.d_model}")

    def _check_rnn(self) -> None:
        dim = self.rnn_attention_dim
        if dim is not None and (isinstance(dim, bool) or not isinstance(dim, int) or dim < 1):
            raise ConfigError(f"ModelConfig.rnn_attention_dim={dim!r} must be an integer >= 1, or null for d_model")
        if self.arch == "rnn" and self.rnn_cell != "rnn" and self.rnn_nonlinearity != "tanh":
            raise ConfigError(
                f"ModelConfig.rnn_nonlinearity={self.rnn_nonlinearity!r} applies only to rnn_cell='rnn', "
                f"not {self.rnn_cell!r}"
            )

    @property
    def ignored_keys(self) -> list[str]:
        """The keys this config's family does not read (set or not): for arch 'rnn' the Transformer's attention,
        positions, normalisation and FFN keys; for the Transformer families the rnn_* keys."""
        if self.arch == "rnn":
            return list(TRANSFORMER_ONLY_KEYS)
        return [f.name for f in dataclasses.fields(self) if f.name.startswith("rnn_")]

    @property
    def head_dim(self) -> int:
        """d_k = d_v = d_model / n_heads (paper §3.2.2)."""
        return self.d_model // self.n_heads

    @property
    def special_ids(self) -> SpecialIds:
        never = None if self.never_emit_ids is None else tuple(self.never_emit_ids)
        return SpecialIds(pad=self.pad_id, bos=self.bos_id, eos=self.eos_id, unk=self.unk_id, never=never)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from plain data (YAML/JSON); an unknown key is an error naming the closest valid key."""
        return from_dict(cls, data)
