"""Convert weights between aiayn models and Hugging Face Marian (encoder-decoder) and GPT-2 (decoder-only) models.

`from_marian` / `to_marian` map a `MarianMTModel` to and from a `Transformer`; `from_gpt2` / `to_gpt2` map a
`GPT2LMHeadModel` to and from a `LanguageModel`. Weights are copied, never shared. A configuration the other side
cannot express is refused with a ValueError naming the field, its value and what is required: a conversion either
computes the same function or does not happen.

The one non-obvious step is the sinusoidal positional table. aiayn keeps the paper's interleaved layout (column 2i
is sin of frequency i, column 2i+1 its cos); Marian keeps a split layout (every sin first, then every cos). The two
tables hold the same columns in a different order, so the conversion permutes the hidden (d_model) dimension of
every weight: the columns of the embeddings and of every Linear that reads the hidden state, the rows (and bias) of
every Linear that writes it, every LayerNorm weight and bias. LayerNorm, attention and the FFN commute with such a
permutation, and the output projection reads the permuted state with permuted columns, so the logits are unchanged.

`transformers` is imported inside the functions: aiayn does not depend on it at run time (it is a dev extra).

Shapes: D d_model, V vocab.
"""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from aiayn.config import BOS_ID, EOS_ID, ModelConfig
from aiayn.model import LanguageModel, Transformer
from aiayn.model.attention import MultiHeadAttention
from aiayn.model.layers import sinusoidal_table

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, MarianMTModel

# One aiayn tensor, the Hugging Face tensors it is made of (concatenated along dim 0, in nn.Linear layout), and
# the dims of the aiayn tensor that index the hidden state, which follow the positional permutation.
Pair = tuple[torch.Tensor, list[torch.Tensor], tuple[int, ...]]
# A Hugging Face projection as (weight (out, in), bias (out,)), the layout of nn.Linear.
LinearWeights = tuple[torch.Tensor, torch.Tensor]
M = TypeVar("M", bound=nn.Module)

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


def from_marian(hf_model: MarianMTModel) -> Transformer:
    """A Transformer computing the same logits as `hf_model` (a transformers.MarianMTModel).

    Call it as `model(input_ids, decoder_input_ids)`: aiayn derives the source padding mask from
    ModelConfig.pad_id (Marian's pad_token_id), where Marian takes `attention_mask`. Marian starts decoding from
    the pad token (decoder_start_token_id); give aiayn's decoding that start token.

    Marian's final_logits_bias becomes the output bias (ModelConfig.output_bias=True) only when it is nonzero: a
    zero bias is no bias, and leaving it out keeps the model the same to train (Marian's bias is a frozen buffer;
    aiayn's would be a trained parameter).

    Accepted with a warning because they only change training, not the function computed in eval mode:
    activation_dropout (aiayn has no dropout inside the FFN) and encoder_layerdrop / decoder_layerdrop.
    The result is in `hf_model`'s train/eval mode, dtype and device.
    """
    from transformers import MarianMTModel

    if not isinstance(hf_model, MarianMTModel):
        raise TypeError(f"from_marian needs a transformers.MarianMTModel, got {type(hf_model).__name__}")
    _check_marian_positions(hf_model)
    model = Transformer(_config_from_marian(hf_model))
    _copy_into_aiayn(_marian_pairs(model, hf_model), _split_to_interleaved(model.config.d_model))
    return _like(model, hf_model.model.encoder.embed_tokens.weight, hf_model.training)


def to_marian(model: Transformer) -> MarianMTModel:
    """A transformers.MarianMTModel computing the same logits as `model` (an aiayn Transformer).

    Pass Marian `attention_mask = input_ids != pad_token_id` to match aiayn's padding mask. Tied embeddings
    (ModelConfig.tie_embeddings) become share_encoder_decoder_embeddings=tie_word_embeddings=True, untied ones
    False for both. The output bias (ModelConfig.output_bias) goes into final_logits_bias, which Marian keeps as a
    frozen buffer: fine-tuning the Marian copy will not train it. The special ids are aiayn's fixed ones
    (aiayn.config BOS_ID / EOS_ID): generation starts from BOS and ends at EOS, as aiayn's own decoding does.
    (A model that came from Marian started from its pad token; set hf_model.generation_config if you need that.)
    The result is in `model`'s train/eval mode, dtype and device.
    """
    from transformers import MarianConfig, MarianMTModel

    if not isinstance(model, Transformer):
        raise TypeError(f"to_marian needs an aiayn Transformer, got {type(model).__name__}; use to_gpt2 for a LM")
    config = model.config
    _check_marian_compatible(config)
    tied = config.tie_embeddings
    hf_model = MarianMTModel(
        MarianConfig(
            vocab_size=config.vocab_size,
            decoder_vocab_size=config.vocab_size,
            d_model=config.d_model,
            encoder_layers=config.n_encoder_layers,
            decoder_layers=config.n_decoder_layers,
            encoder_attention_heads=config.n_heads,
            decoder_attention_heads=config.n_heads,
            encoder_ffn_dim=config.d_ff,
            decoder_ffn_dim=config.d_ff,
            max_position_embeddings=config.max_len,
            activation_function=_ACTIVATION_TO_HF[config.activation],
            dropout=config.dropout,
            attention_dropout=config.attention_dropout,
            activation_dropout=0.0,
            encoder_layerdrop=0.0,
            decoder_layerdrop=0.0,
            scale_embedding=config.scale_embeddings,
            pad_token_id=config.pad_id,
            decoder_start_token_id=BOS_ID,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            forced_eos_token_id=None,
            share_encoder_decoder_embeddings=tied,
            tie_word_embeddings=tied,
        )
    )
    _check_marian_positions(hf_model)  # the layout this module converts to; a transformers change must not slip by
    interleaved_to_split = torch.argsort(_split_to_interleaved(config.d_model))
    _copy_into_hf(_marian_pairs(model, hf_model), interleaved_to_split)
    return _like(hf_model, model.src_embed.token.weight, model.training)


def from_gpt2(hf_model: GPT2LMHeadModel) -> LanguageModel:
    """A LanguageModel computing the same logits as `hf_model` (a transformers.GPT2LMHeadModel).

    GPT-2 is pre-LN with a final LayerNorm, learned positions, unscaled embeddings and a bias-free lm_head, tied to
    the token embedding or not (both convert). GPT-2 usually has no pad token; pad_id is then ModelConfig's
    default 0, which LanguageModel.forward does not use. reorder_and_upcast_attn only changes mixed-precision
    rounding and is accepted. embd_pdrop is accepted with a warning when it differs from resid_pdrop: aiayn has one
    ModelConfig.dropout for both, taken from resid_pdrop; it only changes training.
    The result is in `hf_model`'s train/eval mode, dtype and device.
    """
    from transformers import GPT2LMHeadModel

    if not isinstance(hf_model, GPT2LMHeadModel):
        raise TypeError(f"from_gpt2 needs a transformers.GPT2LMHeadModel, got {type(hf_model).__name__}")
    model = LanguageModel(_config_from_gpt2(hf_model))
    _copy_into_aiayn(_gpt2_pairs(model, hf_model), perm=None)
    return _like(model, hf_model.transformer.wte.weight, hf_model.training)


def to_gpt2(model: LanguageModel) -> GPT2LMHeadModel:
    """A transformers.GPT2LMHeadModel computing the same logits as `model` (an aiayn LanguageModel).

    ModelConfig.pad_id becomes pad_token_id; bos/eos_token_id are aiayn's fixed BOS_ID / EOS_ID.
    The result is in `model`'s train/eval mode, dtype and device.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    if not isinstance(model, LanguageModel):
        raise TypeError(f"to_gpt2 needs an aiayn LanguageModel, got {type(model).__name__}; use to_marian")
    config = model.config
    _check_gpt2_compatible(config)
    hf_model = GPT2LMHeadModel(
        GPT2Config(
            vocab_size=config.vocab_size,
            n_positions=config.max_len,
            n_embd=config.d_model,
            n_layer=config.n_decoder_layers,
            n_head=config.n_heads,
            n_inner=config.d_ff,
            activation_function=_ACTIVATION_TO_HF[config.activation],
            resid_pdrop=config.dropout,
            embd_pdrop=config.dropout,
            attn_pdrop=config.attention_dropout,
            layer_norm_epsilon=config.norm_eps,
            scale_attn_weights=True,
            scale_attn_by_inverse_layer_idx=False,
            add_cross_attention=False,
            tie_word_embeddings=config.tie_embeddings,
            bos_token_id=BOS_ID,
            eos_token_id=EOS_ID,
            pad_token_id=config.pad_id,
        )
    )
    _copy_into_hf(_gpt2_pairs(model, hf_model), perm=None)
    return _like(hf_model, model.embed.token.weight, model.training)


# --- the positional permutation ---------------------------------------------------------------------------------


def _split_to_interleaved(d_model: int) -> torch.Tensor:
    """The permutation P with split_table[:, P] == interleaved_table: (D,) long.

    Column 2i of the paper's table is sin of frequency i, which Marian keeps in column i; column 2i+1 (its cos) is
    Marian's column D/2 + i. So P = [0, D/2, 1, D/2 + 1, ...], and aiayn's hidden state is Marian's indexed by P.
    """
    half = torch.arange(d_model // 2)
    return torch.stack((half, half + d_model // 2), dim=1).flatten()


def _check_marian_positions(hf_model: MarianMTModel) -> None:
    """Refuse a Marian model whose positional tables are not the split sinusoid that `_split_to_interleaved` maps
    onto aiayn's table: the tables are frozen weights, and any other content would silently change the model."""
    d_model, max_len = hf_model.config.d_model, hf_model.config.max_position_embeddings
    _check(
        d_model % 2 == 0,
        "MarianConfig.d_model",
        d_model,
        "aiayn",
        "the paper's sinusoidal table pairs a sin and a cos column per frequency, so d_model must be even",
    )
    split = sinusoidal_table(max_len, d_model)[:, torch.argsort(_split_to_interleaved(d_model))]  # (max_len, D)
    for name, table in [
        ("model.encoder.embed_positions.weight", hf_model.model.encoder.embed_positions.weight),
        ("model.decoder.embed_positions.weight", hf_model.model.decoder.embed_positions.weight),
    ]:
        tolerance = max(1e-5, 4 * torch.finfo(table.dtype).eps)  # both are rounded from fp64 to table.dtype
        if table.shape != split.shape or not torch.allclose(table.detach().float().cpu(), split, atol=tolerance):
            raise ValueError(
                f"{name} is not the split sinusoidal table (sin in the first half of d_model, cos in the second) "
                f"that this converter maps onto aiayn's positional='sinusoidal'"
            )


# --- configurations ---------------------------------------------------------------------------------------------


def _check(ok: bool, field: str, value: object, target: str, requirement: str) -> None:
    """Raise the one-line refusal: '<field>=<value> cannot be converted to <target>: <requirement>'."""
    if not ok:
        raise ValueError(f"{field}={value!r} cannot be converted to {target}: {requirement}")


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
        pad_id=c.pad_token_id,
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
        pad_id=c.pad_token_id if c.pad_token_id is not None else 0,
    )


# --- which tensor goes where ------------------------------------------------------------------------------------

_COLS = (1,)  # a (rows, D) tensor that reads the hidden state: embeddings, Linears into the residual stream
_ROWS = (0,)  # a (D, ...) tensor that writes it: Linears out of the residual stream, their biases, norm vectors


def _linear_pairs(
    ours: nn.Linear, theirs: list[LinearWeights], reads: bool = False, writes: bool = False
) -> list[Pair]:
    """`ours` is `theirs` stacked by rows (fused q, k, v). `reads` / `writes`: its input / output is the hidden
    state. Attention heads and the FFN's inner dimension are not the hidden state and are never permuted."""
    weight_dims = (_ROWS if writes else ()) + (_COLS if reads else ())
    return [
        (ours.weight, [w for w, _ in theirs], weight_dims),
        (ours.bias, [b for _, b in theirs], _ROWS if writes else ()),
    ]


def _norm_pairs(ours: nn.LayerNorm, theirs: nn.LayerNorm) -> list[Pair]:
    return [(ours.weight, [theirs.weight], _ROWS), (ours.bias, [theirs.bias], _ROWS)]


def _linear(module: nn.Linear) -> LinearWeights:
    return module.weight, module.bias


def _conv1d(module: nn.Module) -> LinearWeights:
    """GPT-2's Conv1D computes x @ weight + bias: its weight (in, out) is a Linear's transposed (a view, so copying
    into it writes the Conv1D)."""
    return module.weight.T, module.bias


def _marian_attention_pairs(ours: MultiHeadAttention, theirs: nn.Module) -> list[Pair]:
    """Marian projects q, k and v separately; aiayn fuses them as [q; k; v] (self) or q and [k; v] (cross)."""
    q, k, v, out = (_linear(m) for m in (theirs.q_proj, theirs.k_proj, theirs.v_proj, theirs.out_proj))
    if ours.cross:
        pairs = _linear_pairs(ours.q_proj, [q], reads=True) + _linear_pairs(ours.kv_proj, [k, v], reads=True)
    else:
        pairs = _linear_pairs(ours.qkv_proj, [q, k, v], reads=True)
    return pairs + _linear_pairs(ours.out_proj, [out], writes=True)


def _ffn_pairs(ours: nn.Module, fc1: LinearWeights, fc2: LinearWeights) -> list[Pair]:
    return _linear_pairs(ours.w1, [fc1], reads=True) + _linear_pairs(ours.w2, [fc2], writes=True)


def _marian_pairs(model: Transformer, hf_model: MarianMTModel) -> list[Pair]:
    """Every parameter of `model` with the Marian tensors that hold it (the positional tables are not
    parameters: both sides build them)."""
    hf = hf_model.model
    pairs: list[Pair] = [(model.src_embed.token.weight, [hf.encoder.embed_tokens.weight], _COLS)]
    if not model.config.tie_embeddings:
        pairs += [
            (model.tgt_embed.token.weight, [hf.decoder.embed_tokens.weight], _COLS),
            (model.output.weight, [hf_model.lm_head.weight], _COLS),
        ]
    if model.output.bias is not None:
        pairs.append((model.output.bias, [hf_model.final_logits_bias[0]], ()))  # final_logits_bias is (1, V)
    for ours, theirs in zip(model.encoder.layers, hf.encoder.layers, strict=True):
        pairs += _marian_attention_pairs(ours.self_attn, theirs.self_attn)
        pairs += _norm_pairs(ours.self_attn_block.norm, theirs.self_attn_layer_norm)
        pairs += _ffn_pairs(ours.ffn, _linear(theirs.fc1), _linear(theirs.fc2))
        pairs += _norm_pairs(ours.ffn_block.norm, theirs.final_layer_norm)
    for ours, theirs in zip(model.decoder.layers, hf.decoder.layers, strict=True):
        pairs += _marian_attention_pairs(ours.self_attn, theirs.self_attn)
        pairs += _norm_pairs(ours.self_attn_block.norm, theirs.self_attn_layer_norm)
        pairs += _marian_attention_pairs(ours.cross_attn, theirs.encoder_attn)
        pairs += _norm_pairs(ours.cross_attn_block.norm, theirs.encoder_attn_layer_norm)
        pairs += _ffn_pairs(ours.ffn, _linear(theirs.fc1), _linear(theirs.fc2))
        pairs += _norm_pairs(ours.ffn_block.norm, theirs.final_layer_norm)
    return pairs


def _gpt2_pairs(model: LanguageModel, hf_model: GPT2LMHeadModel) -> list[Pair]:
    """Every parameter of `model` with the GPT-2 tensors that hold it. GPT-2's c_attn is already [q; k; v]."""
    hf = hf_model.transformer
    pairs: list[Pair] = [
        (model.embed.token.weight, [hf.wte.weight], _COLS),
        (model.embed.position.weight, [hf.wpe.weight], _COLS),
    ]
    if not model.config.tie_embeddings:
        pairs.append((model.output.weight, [hf_model.lm_head.weight], _COLS))
    for ours, theirs in zip(model.decoder.layers, hf.h, strict=True):
        pairs += _norm_pairs(ours.self_attn_block.norm, theirs.ln_1)
        pairs += _linear_pairs(ours.self_attn.qkv_proj, [_conv1d(theirs.attn.c_attn)], reads=True)
        pairs += _linear_pairs(ours.self_attn.out_proj, [_conv1d(theirs.attn.c_proj)], writes=True)
        pairs += _norm_pairs(ours.ffn_block.norm, theirs.ln_2)
        pairs += _ffn_pairs(ours.ffn, _conv1d(theirs.mlp.c_fc), _conv1d(theirs.mlp.c_proj))
    return pairs + _norm_pairs(model.decoder.norm, hf.ln_f)


# --- copying ----------------------------------------------------------------------------------------------------


def _permute(tensor: torch.Tensor, dims: tuple[int, ...], perm: torch.Tensor | None) -> torch.Tensor:
    """Reorder the hidden-state dims of `tensor` by `perm` (None: keep the order)."""
    if perm is None:
        return tensor
    for dim in dims:
        tensor = tensor.index_select(dim, perm.to(tensor.device))
    return tensor


@torch.no_grad()
def _copy_into_aiayn(pairs: list[Pair], perm: torch.Tensor | None) -> None:
    """Hugging Face -> aiayn. perm maps Hugging Face's hidden order to aiayn's (aiayn = hf[perm])."""
    for ours, theirs, dims in pairs:
        ours.copy_(_permute(torch.cat([t.to(ours.device) for t in theirs]), dims, perm))


@torch.no_grad()
def _copy_into_hf(pairs: list[Pair], perm: torch.Tensor | None) -> None:
    """aiayn -> Hugging Face. perm maps aiayn's hidden order to Hugging Face's (hf = aiayn[perm])."""
    for ours, theirs, dims in pairs:
        parts = _permute(ours, dims, perm).split([t.shape[0] for t in theirs])
        for target, part in zip(theirs, parts, strict=True):
            target.copy_(part)


def _like(module: M, reference: torch.Tensor, training: bool) -> M:
    """The converted model in the source's dtype, device and train/eval mode."""
    return module.to(device=reference.device, dtype=reference.dtype).train(training)
