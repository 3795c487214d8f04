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

The pieces: aiayn.interop.hf_config converts and checks the configurations, aiayn.interop.hf_weights pairs and
copies the tensors (and holds the permutation); this module puts them together.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

import torch
from torch import nn

from aiayn.interop.hf_config import (
    _ACTIVATION_TO_HF,
    _check_gpt2_compatible,
    _check_marian_compatible,
    _config_from_gpt2,
    _config_from_marian,
)
from aiayn.interop.hf_weights import (
    _check_marian_positions,
    _copy_into_aiayn,
    _copy_into_hf,
    _gpt2_pairs,
    _marian_pairs,
    _split_to_interleaved,
)
from aiayn.model import LanguageModel, Transformer

if TYPE_CHECKING:
    from transformers import GPT2LMHeadModel, MarianMTModel

M = TypeVar("M", bound=nn.Module)


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
    frozen buffer: fine-tuning the Marian copy will not train it. The special ids are the model's own
    (ModelConfig.pad_id / bos_id / eos_id): generation starts from bos_id and ends at eos_id, as aiayn's own
    decoding does (a model that came from Marian starts from its pad token again).
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
            decoder_start_token_id=config.bos_id,
            bos_token_id=config.bos_id,
            eos_token_id=config.eos_id,
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

    ModelConfig.pad_id becomes pad_token_id; bos/eos_token_id are ModelConfig.bos_id / eos_id.
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
            bos_token_id=config.bos_id,
            eos_token_id=config.eos_id,
            pad_token_id=config.pad_id,
        )
    )
    _copy_into_hf(_gpt2_pairs(model, hf_model), perm=None)
    return _like(hf_model, model.embed.token.weight, model.training)


def _like(module: M, reference: torch.Tensor, training: bool) -> M:
    """The converted model in the source's dtype, device and train/eval mode."""
    return module.to(device=reference.device, dtype=reference.dtype).train(training)
