"""Which aiayn tensor holds which Hugging Face tensors, and the copy between them (with the positional permutation).

aiayn.interop.hf's docstring explains the permutation: Marian's sinusoidal table is split (every sin, then every
cos), aiayn's is the paper's interleaved one, so the hidden (d_model) dimension of every weight is reordered.

Shapes: D d_model, V vocab.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from aiayn.errors import ConfigError
from aiayn.interop.hf_config import _check
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
            raise ConfigError(
                f"{name} is not the split sinusoidal table (sin in the first half of d_model, cos in the second) "
                f"that this converter maps onto aiayn's positional='sinusoidal'"
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
