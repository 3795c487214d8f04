"""Configuration conversion between aiayn's ModelConfig and Hugging Face's MarianConfig / GPT2Config.

`_config_from_marian` / `_config_from_gpt2` read a Hugging Face model's configuration into a ModelConfig;
`_check_marian_compatible` / `_check_gpt2_compatible` refuse a ModelConfig the other side cannot express. Every
refusal is a ValueError naming the field, its value and what is required (`_check`); settings that only change
training are carried over with a warning (`_warn_training_only`). Used by aiayn.interop.hf.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, ModelConfig
from aiayn.errors import ConfigError

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, MarianMTModel

_ACTIVATION_FROM_HF = {
    "relu": "relu",
    "gelu": "gelu",
    "gelu_new": "gelu_tanh",
    "gelu_pytorch_tanh": "gelu_tanh",
    "swish": "swish",
    "silu": "swish",
}
# gelu_new is GPT-2's own name for the tanh approximation; it equals F.gelu(approximate="tanh") to rounding.
_ACTIVATION_TO_HF = {"relu": "relu", "gelu": "gelu", "gelu_tanh": "gelu_new", "swish": "swish"}

# Marian builds every LayerNorm as nn.LayerNorm(d_model): torch's default eps, not configurable.
_MARIAN_NORM_EPS = 1e-5


def _check(ok: bool, field: str, value: object, target: str, requirement: str) -> None:
    """Raise the one-line refusal: '<field>=<value> cannot be converted to <target>: <requirement>'."""
    if not ok:
        raise ConfigError(f"{field}={value!r} cannot be converted to {target}: {requirement}")


def _warn_training_only(field: str, value: float, why: str) -> None:
    """Dropout-like settings do not change eval-mode outputs; dropping one is allowed but said out loud."""
    if value:
        warnings.warn(
            f"{field}={value} is not carried over ({why}): the converted model computes the same function in eval "
            f"mode but trains without it",
            stacklevel=4,  # the caller of from_marian / from_gpt2
        )


def _check_marian_compatible(config: ModelConfig) -> None:
    field = "ModelConfig"
    _check(config.norm == "post", f"{field}.norm", config.norm, "Marian", "Marian is post-LN (norm='post')")
    _check(
        config.norm_type == "layernorm",
        f"{field}.norm_type",
        config.norm_type,
        "Marian",
        "Marian uses LayerNorm (norm_type='layernorm')",
    )
    _check(
        config.norm_eps == _MARIAN_NORM_EPS,
        f"{field}.norm_eps",
        config.norm_eps,
        "Marian",
        f"Marian's LayerNorms use torch's default eps (norm_eps={_MARIAN_NORM_EPS})",
    )
    _check(
        config.positional == "sinusoidal",
        f"{field}.positional",
        config.positional,
        "Marian",
        "Marian adds the fixed sinusoidal encoding (positional='sinusoidal')",
    )
    _check_activation(config.activation, "Marian")
    _check(config.bias, f"{field}.bias", config.bias, "Marian", "every Marian projection has a bias (bias=True)")


def _check_gpt2_compatible(config: ModelConfig) -> None:
    field = "ModelConfig"
    _check(
        config.norm == "pre",
        f"{field}.norm",
        config.norm,
        "GPT-2",
        "GPT-2 is pre-LN with a final LayerNorm (norm='pre')",
    )
    _check(
        config.norm_type == "layernorm",
        f"{field}.norm_type",
        config.norm_type,
        "GPT-2",
        "GPT-2 uses LayerNorm (norm_type='layernorm')",
    )
    _check(
        config.positional == "learned",
        f"{field}.positional",
        config.positional,
        "GPT-2",
        "GPT-2 learns one embedding per position (positional='learned')",
    )
    _check_activation(config.activation, "GPT-2")
    _check(config.bias, f"{field}.bias", config.bias, "GPT-2", "every GPT-2 projection has a bias (bias=True)")
    _check(
        not config.scale_embeddings,
        f"{field}.scale_embeddings",
        config.scale_embeddings,
        "GPT-2",
        "GPT-2 does not scale its embeddings (scale_embeddings=False)",
    )
    _check(
        not config.output_bias,
        f"{field}.output_bias",
        config.output_bias,
        "GPT-2",
        "GPT-2's lm_head has no bias (output_bias=False)",
    )


def _check_activation(activation: str, target: str) -> None:
    _check(
        activation in _ACTIVATION_TO_HF,
        "ModelConfig.activation",
        activation,
        target,
        f"{target}'s FFN is not gated; activation must be one of {', '.join(_ACTIVATION_TO_HF)}",
    )


def _activation_from_hf(config_name: str, activation: str) -> str:
    _check(
        activation in _ACTIVATION_FROM_HF,
        f"{config_name}.activation_function",
        activation,
        "aiayn",
        f"ModelConfig.activation has an equivalent only for {', '.join(_ACTIVATION_FROM_HF)}",
    )
    return _ACTIVATION_FROM_HF[activation]


def _config_from_marian(hf_model: MarianMTModel) -> ModelConfig:
    c = hf_model.config
    _check(
        c.decoder_attention_heads == c.encoder_attention_heads,
        "MarianConfig.decoder_attention_heads",
        c.decoder_attention_heads,
        "aiayn",
        f"ModelConfig.n_heads is one value; it must equal encoder_attention_heads={c.encoder_attention_heads}",
    )
    _check(
        c.decoder_ffn_dim == c.encoder_ffn_dim,
        "MarianConfig.decoder_ffn_dim",
        c.decoder_ffn_dim,
        "aiayn",
        f"ModelConfig.d_ff is one value; it must equal encoder_ffn_dim={c.encoder_ffn_dim}",
    )
    _check(
        c.decoder_vocab_size == c.vocab_size,
        "MarianConfig.decoder_vocab_size",
        c.decoder_vocab_size,
        "aiayn",
        f"source and target share one vocabulary (ModelConfig.vocab_size); it must equal vocab_size={c.vocab_size}",
    )
    _check(
        c.pad_token_id is not None,
        "MarianConfig.pad_token_id",
        c.pad_token_id,
        "aiayn",
        "aiayn masks source padding by token id (ModelConfig.pad_id); a pad token is required",
    )
    _warn_training_only("MarianConfig.activation_dropout", c.activation_dropout, "aiayn has no dropout inside the FFN")
    _warn_training_only("MarianConfig.encoder_layerdrop", c.encoder_layerdrop, "aiayn has no LayerDrop")
    _warn_training_only("MarianConfig.decoder_layerdrop", c.decoder_layerdrop, "aiayn has no LayerDrop")
    return ModelConfig(
        arch="seq2seq",
        vocab_size=c.vocab_size,
        d_model=c.d_model,
        n_heads=c.encoder_attention_heads,
        n_encoder_layers=c.encoder_layers,
        n_decoder_layers=c.decoder_layers,
        d_ff=c.encoder_ffn_dim,
        dropout=c.dropout,
        attention_dropout=c.attention_dropout,
        max_len=c.max_position_embeddings,
        norm="post",
        norm_type="layernorm",
        norm_eps=_MARIAN_NORM_EPS,
        positional="sinusoidal",
        activation=_activation_from_hf("MarianConfig", c.activation_function),
        tie_embeddings=_marian_embeddings_tied(hf_model),
        scale_embeddings=c.scale_embedding,
        bias=True,
        output_bias=bool(hf_model.final_logits_bias.any()),
        # Marian starts decoding from its pad token: aiayn's decoding starts from bos_id and never emits it.
        **_special_ids(c.vocab_size, c.pad_token_id, c.decoder_start_token_id, c.eos_token_id),
    )


def _marian_embeddings_tied(hf_model: MarianMTModel) -> bool:
    """True when source embedding, target embedding and lm_head are one tensor, False when they are three.

    Read from the modules, not the config: what transformers ties for a given share_encoder_decoder_embeddings /
    tie_word_embeddings has changed across versions. aiayn ties all three or none (ModelConfig.tie_embeddings).
    """
    weights = [
        hf_model.model.encoder.embed_tokens.weight,
        hf_model.model.decoder.embed_tokens.weight,
        hf_model.lm_head.weight,
    ]
    distinct = len({id(w) for w in weights})
    c = hf_model.config
    _check(
        distinct != 2,
        "MarianConfig.share_encoder_decoder_embeddings",
        c.share_encoder_decoder_embeddings,
        "aiayn",
        f"with tie_word_embeddings={c.tie_word_embeddings} the model shares some but not all of the source "
        f"embedding, target embedding and lm_head; ModelConfig.tie_embeddings ties all three or none",
    )
    return distinct == 1


def _config_from_gpt2(hf_model: GPT2LMHeadModel) -> ModelConfig:
    c = hf_model.config
    _check(
        c.scale_attn_weights,
        "GPT2Config.scale_attn_weights",
        c.scale_attn_weights,
        "aiayn",
        "aiayn always scales attention scores by 1/sqrt(d_k) (scale_attn_weights=True)",
    )
    _check(
        not c.scale_attn_by_inverse_layer_idx,
        "GPT2Config.scale_attn_by_inverse_layer_idx",
        c.scale_attn_by_inverse_layer_idx,
        "aiayn",
        "aiayn scales every layer's attention alike (scale_attn_by_inverse_layer_idx=False)",
    )
    _check(
        not c.add_cross_attention,
        "GPT2Config.add_cross_attention",
        c.add_cross_attention,
        "aiayn",
        "LanguageModel has no cross-attention (add_cross_attention=False)",
    )
    if c.embd_pdrop != c.resid_pdrop:
        _warn_training_only(
            "GPT2Config.embd_pdrop", c.embd_pdrop, "ModelConfig.dropout is one value, taken from resid_pdrop"
        )
    return ModelConfig(
        arch="lm",
        vocab_size=c.vocab_size,
        d_model=c.n_embd,
        n_heads=c.n_head,
        n_encoder_layers=0,
        n_decoder_layers=c.n_layer,
        d_ff=c.n_inner if c.n_inner is not None else 4 * c.n_embd,
        dropout=c.resid_pdrop,
        attention_dropout=c.attn_pdrop,
        max_len=c.n_positions,
        norm="pre",
        norm_type="layernorm",
        norm_eps=c.layer_norm_epsilon,
        positional="learned",
        activation=_activation_from_hf("GPT2Config", c.activation_function),
        tie_embeddings=hf_model.lm_head.weight is hf_model.transformer.wte.weight,
        scale_embeddings=False,
        bias=True,
        output_bias=False,
        # GPT-2 usually has no pad token (or pads with its end token): a language model's padding is only what
        # the loss skips, so any other id serves.
        **_special_ids(c.vocab_size, _gpt2_pad(c.pad_token_id, c.eos_token_id), c.bos_token_id, c.eos_token_id),
    )


def _gpt2_pad(pad: int | None, eos: int | None) -> int:
    """GPT-2's pad id, or a stand-in for its missing one: aiayn's PAD_ID, or 1 where that is the end token."""
    if pad is not None and pad != eos:
        return pad
    return PAD_ID if eos != PAD_ID else 1


def _special_ids(vocab_size: int, pad: int, bos: int | None, eos: int | None) -> dict[str, int]:
    """ModelConfig's special ids from a Hugging Face config: its own where it names them, aiayn's otherwise (the
    end token kept apart from padding). The unknown token, which no HF model config names, is aiayn's."""
    if eos is None:
        eos = next(i for i in (EOS_ID, BOS_ID, UNK_ID) if i != pad)
    bos = BOS_ID if bos is None else bos
    return {"pad_id": pad, "bos_id": bos, "eos_id": eos, "unk_id": min(UNK_ID, vocab_size - 1)}
