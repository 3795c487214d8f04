"""Conversion to and from Hugging Face Marian and GPT-2: same logits both ways, refusals that name the field.

Every parameter (LayerNorms and Marian's final_logits_bias included) is randomised, so a weight copied to the
wrong place, transposed or left unpermuted changes the logits well beyond the 1e-4 tolerance.
"""

import re

import pytest
import torch

pytest.importorskip("transformers")

from transformers import GPT2Config, GPT2LMHeadModel, MarianConfig, MarianMTModel  # noqa: E402
from transformers.models.marian.modeling_marian import MarianSinusoidalPositionalEmbedding  # noqa: E402

from aiayn.config import BOS_ID, EOS_ID, ModelConfig  # noqa: E402
from aiayn.interop.hf import (  # noqa: E402
    _gpt2_pairs,
    _marian_pairs,
    _split_to_interleaved,
    from_gpt2,
    from_marian,
    to_gpt2,
    to_marian,
)
from aiayn.model import LanguageModel, Transformer  # noqa: E402
from aiayn.model.layers import sinusoidal_table  # noqa: E402

VOCAB, D_MODEL, HEADS, D_FF, LAYERS, MAX_LEN, PAD = 100, 32, 4, 64, 2, 64, 1
ATOL = 1e-4


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Normal(0, 0.3) for every parameter except Marian's frozen positional tables."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "embed_positions" not in name:
                param.normal_(0.0, 0.3)


def _marian(seed: int = 0, logits_bias: bool = True, **overrides) -> MarianMTModel:
    config = dict(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        encoder_layers=LAYERS,
        decoder_layers=LAYERS,
        encoder_attention_heads=HEADS,
        decoder_attention_heads=HEADS,
        encoder_ffn_dim=D_FF,
        decoder_ffn_dim=D_FF,
        max_position_embeddings=MAX_LEN,
        pad_token_id=PAD,
        decoder_start_token_id=PAD,
        eos_token_id=None,
        forced_eos_token_id=None,
    )
    hf = MarianMTModel(MarianConfig(**{**config, **overrides})).eval()
    _randomize(hf, seed)
    if logits_bias:
        with torch.no_grad():
            hf.final_logits_bias.normal_()
    return hf


def _gpt2(seed: int = 0, **overrides) -> GPT2LMHeadModel:
    config = dict(
        vocab_size=VOCAB,
        n_positions=MAX_LEN,
        n_embd=D_MODEL,
        n_layer=LAYERS,
        n_head=HEADS,
        bos_token_id=None,
        eos_token_id=None,
    )
    hf = GPT2LMHeadModel(GPT2Config(**{**config, **overrides})).eval()
    _randomize(hf, seed)
    return hf


def _aiayn_config(**overrides) -> ModelConfig:
    config = dict(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        n_heads=HEADS,
        n_encoder_layers=LAYERS,
        n_decoder_layers=LAYERS,
        d_ff=D_FF,
        max_len=MAX_LEN,
        pad_id=PAD,
    )
    return ModelConfig(**{**config, **overrides})


def _translation_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """src (2, 7), the second row right-padded; tgt (2, 5) starting from pad, Marian's decoder start token."""
    torch.manual_seed(1)
    src = torch.randint(2, VOCAB, (2, 7))
    src[1, 4:] = PAD
    tgt = torch.randint(2, VOCAB, (2, 5))
    tgt[:, 0] = PAD
    return src, tgt


def _marian_logits(hf: MarianMTModel, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return hf(input_ids=src, attention_mask=(src != PAD).long(), decoder_input_ids=tgt).logits


def _aiayn_logits(model: Transformer, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(src, tgt)


def _embedding_params(hf: MarianMTModel) -> int:
    """How many distinct tensors hold source embedding, target embedding and lm_head (1 tied, 3 untied)."""
    weights = [hf.model.encoder.embed_tokens.weight, hf.model.decoder.embed_tokens.weight, hf.lm_head.weight]
    return len({id(w) for w in weights})


# --- the positional permutation ---------------------------------------------------------------------------------


def test_interleaved_table_is_marians_split_table_permuted():
    d_model, n = 16, 50
    split = MarianSinusoidalPositionalEmbedding(n, d_model).create_weight()  # Marian's own table
    interleaved = sinusoidal_table(n, d_model)
    perm = _split_to_interleaved(d_model)
    assert perm.tolist()[:4] == [0, 8, 1, 9]
    assert sorted(perm.tolist()) == list(range(d_model))
    assert not torch.allclose(split, interleaved, atol=1e-2)  # the layouts really differ
    torch.testing.assert_close(split[:, perm], interleaved, atol=1e-6, rtol=0)
    torch.testing.assert_close(interleaved[:, torch.argsort(perm)], split, atol=1e-6, rtol=0)


# --- Marian -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides, logits_bias",
    [
        (dict(scale_embedding=True, activation_function="swish"), True),
        (dict(scale_embedding=False, activation_function="gelu"), False),
        (dict(scale_embedding=True, activation_function="gelu_new"), True),
        (
            dict(
                scale_embedding=False,
                activation_function="relu",
                share_encoder_decoder_embeddings=False,
                tie_word_embeddings=False,
            ),
            True,
        ),
    ],
)
def test_from_marian_and_back_give_the_same_logits(overrides, logits_bias):
    hf = _marian(logits_bias=logits_bias, **overrides)
    src, tgt = _translation_batch()
    expected = _marian_logits(hf, src, tgt)

    model = from_marian(hf)
    assert not model.training
    assert model.config.scale_embeddings == overrides["scale_embedding"]
    assert model.config.tie_embeddings == overrides.get("tie_word_embeddings", True)
    assert model.config.output_bias == logits_bias  # a zero final_logits_bias is no bias
    torch.testing.assert_close(_aiayn_logits(model, src, tgt), expected, atol=ATOL, rtol=0)

    back = to_marian(model)
    assert _embedding_params(back) == _embedding_params(hf)
    torch.testing.assert_close(_marian_logits(back, src, tgt), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize(
    "overrides",
    [
        dict(activation="gelu_tanh", scale_embeddings=True, tie_embeddings=True, output_bias=True),
        dict(activation="swish", scale_embeddings=False, tie_embeddings=False, output_bias=False),
    ],
)
def test_to_marian_gives_the_same_logits(overrides):
    torch.manual_seed(0)
    model = Transformer(_aiayn_config(**overrides)).eval()
    _randomize(model, seed=2)
    src, tgt = _translation_batch()

    hf = to_marian(model)
    assert not hf.training
    assert _embedding_params(hf) == (1 if overrides["tie_embeddings"] else 3)
    torch.testing.assert_close(_marian_logits(hf, src, tgt), _aiayn_logits(model, src, tgt), atol=ATOL, rtol=0)


def test_marian_pairs_cover_every_parameter_on_both_sides():
    for tied in (True, False):
        hf = _marian(share_encoder_decoder_embeddings=tied, tie_word_embeddings=tied)
        model = from_marian(hf)
        pairs = _marian_pairs(model, hf)
        assert {id(ours) for ours, _, _ in pairs} == {id(p) for p in model.parameters()}
        covered = {t.data_ptr() for _, theirs, _ in pairs for t in theirs}
        needed = {p.data_ptr() for name, p in hf.named_parameters() if "embed_positions" not in name}
        assert needed <= covered


# --- GPT-2 ------------------------------------------------------------------------------------------------------


def _lm_batch() -> tuple[torch.Tensor, torch.Tensor]:
    """ids (2, 6), the second row right-padded, and its attention mask (True = real token)."""
    torch.manual_seed(3)
    ids = torch.randint(0, VOCAB, (2, 6))
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[1, 4:] = False
    return ids.masked_fill(~mask, PAD), mask


def _gpt2_logits(hf: GPT2LMHeadModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Logits of the real tokens only, (n_real, V): GPT-2 masks padded keys, aiayn's LM does not, and with right
    padding only the pad positions themselves see a difference."""
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask.long()).logits[mask]


def _lm_logits(model: LanguageModel, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(ids)[mask]


@pytest.mark.parametrize(
    "overrides",
    [
        dict(activation_function="gelu_new", tie_word_embeddings=True, layer_norm_epsilon=1e-5),
        dict(activation_function="relu", tie_word_embeddings=False, layer_norm_epsilon=0.1, n_inner=48),
    ],
)
def test_from_gpt2_and_back_give_the_same_logits(overrides):
    hf = _gpt2(**overrides)
    ids, mask = _lm_batch()
    expected = _gpt2_logits(hf, ids, mask)

    model = from_gpt2(hf)
    assert model.config.tie_embeddings == overrides["tie_word_embeddings"]
    assert model.config.d_ff == overrides.get("n_inner", 4 * D_MODEL)
    torch.testing.assert_close(_lm_logits(model, ids, mask), expected, atol=ATOL, rtol=0)

    back = to_gpt2(model)
    assert (back.lm_head.weight is back.transformer.wte.weight) == overrides["tie_word_embeddings"]
    torch.testing.assert_close(_gpt2_logits(back, ids, mask), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("tie_embeddings", [True, False])
def test_to_gpt2_gives_the_same_logits(tie_embeddings):
    config = _aiayn_config(
        arch="lm",
        norm="pre",
        positional="learned",
        activation="gelu_tanh",
        scale_embeddings=False,
        tie_embeddings=tie_embeddings,
        norm_eps=0.1,  # large, so that an eps left behind changes the logits
    )
    model = LanguageModel(config).eval()
    _randomize(model, seed=4)
    ids, mask = _lm_batch()
    hf = to_gpt2(model)
    assert not hf.training
    torch.testing.assert_close(_gpt2_logits(hf, ids, mask), _lm_logits(model, ids, mask), atol=ATOL, rtol=0)


def test_gpt2_pairs_cover_every_parameter_on_both_sides():
    for tied in (True, False):
        hf = _gpt2(tie_word_embeddings=tied)
        model = from_gpt2(hf)
        pairs = _gpt2_pairs(model, hf)
        assert {id(ours) for ours, _, _ in pairs} == {id(p) for p in model.parameters()}
        assert {p.data_ptr() for p in hf.parameters()} <= {t.data_ptr() for _, theirs, _ in pairs for t in theirs}


# --- refusals ---------------------------------------------------------------------------------------------------

SEQ2SEQ_REFUSALS = [
    (dict(norm="pre"), "ModelConfig.norm='pre'"),
    (dict(positional="rope"), "ModelConfig.positional='rope'"),
    (dict(positional="learned"), "ModelConfig.positional='learned'"),
    (dict(activation="swiglu"), "ModelConfig.activation='swiglu'"),
    (dict(norm_type="rmsnorm"), "ModelConfig.norm_type='rmsnorm'"),
    (dict(norm_eps=1e-6), "ModelConfig.norm_eps=1e-06"),
    (dict(bias=False), "ModelConfig.bias=False"),
]


@pytest.mark.parametrize("overrides, message", SEQ2SEQ_REFUSALS)
def test_to_marian_refuses(overrides, message):
    model = Transformer(_aiayn_config(**overrides))
    with pytest.raises(ValueError, match=re.escape(message) + " cannot be converted to Marian"):
        to_marian(model)


LM_REFUSALS = [
    (dict(norm="post"), "ModelConfig.norm='post'"),
    (dict(positional="sinusoidal"), "ModelConfig.positional='sinusoidal'"),
    (dict(activation="swiglu"), "ModelConfig.activation='swiglu'"),
    (dict(norm_type="rmsnorm"), "ModelConfig.norm_type='rmsnorm'"),
    (dict(scale_embeddings=True), "ModelConfig.scale_embeddings=True"),
    (dict(output_bias=True), "ModelConfig.output_bias=True"),
    (dict(bias=False), "ModelConfig.bias=False"),
]


@pytest.mark.parametrize("overrides, message", LM_REFUSALS)
def test_to_gpt2_refuses(overrides, message):
    gpt2_like = dict(arch="lm", norm="pre", positional="learned", scale_embeddings=False)
    model = LanguageModel(_aiayn_config(**{**gpt2_like, **overrides}))
    with pytest.raises(ValueError, match=re.escape(message) + " cannot be converted to GPT-2"):
        to_gpt2(model)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(scale_attn_by_inverse_layer_idx=True), "GPT2Config.scale_attn_by_inverse_layer_idx=True"),
        (dict(scale_attn_weights=False), "GPT2Config.scale_attn_weights=False"),
        (dict(add_cross_attention=True), "GPT2Config.add_cross_attention=True"),
        (dict(activation_function="gelu_fast"), "GPT2Config.activation_function='gelu_fast'"),
    ],
)
def test_from_gpt2_refuses(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message) + " cannot be converted to aiayn"):
        from_gpt2(_gpt2(**overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(decoder_ffn_dim=32), "MarianConfig.decoder_ffn_dim=32"),
        (dict(decoder_attention_heads=2), "MarianConfig.decoder_attention_heads=2"),
        (dict(activation_function="tanh"), "MarianConfig.activation_function='tanh'"),
        (dict(d_model=33, encoder_attention_heads=3, decoder_attention_heads=3), "MarianConfig.d_model=33"),
        (
            dict(share_encoder_decoder_embeddings=False, tie_word_embeddings=True),
            "MarianConfig.share_encoder_decoder_embeddings=False",
        ),
    ],
)
def test_from_marian_refuses(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message) + " cannot be converted to aiayn"):
        from_marian(_marian(**overrides))


def test_from_marian_refuses_a_positional_table_it_does_not_know():
    hf = _marian()
    with torch.no_grad():
        hf.model.decoder.embed_positions.weight[:, 0] += 1.0
    with pytest.raises(ValueError, match=re.escape("model.decoder.embed_positions.weight")):
        from_marian(hf)


def test_wrong_model_kinds_are_refused():
    with pytest.raises(TypeError, match="MarianMTModel"):
        from_marian(_gpt2())
    with pytest.raises(TypeError, match="GPT2LMHeadModel"):
        from_gpt2(_marian())
    with pytest.raises(TypeError, match="use to_gpt2"):
        to_marian(LanguageModel(_aiayn_config(arch="lm")))
    with pytest.raises(TypeError, match="use to_marian"):
        to_gpt2(Transformer(_aiayn_config()))


def test_training_only_settings_convert_with_a_warning():
    hf = _marian(activation_dropout=0.1, encoder_layerdrop=0.2)
    src, tgt = _translation_batch()
    with pytest.warns(UserWarning) as caught:
        model = from_marian(hf)
    messages = [str(w.message) for w in caught]
    assert any(m.startswith("MarianConfig.activation_dropout=0.1 is not carried over") for m in messages)
    assert any(m.startswith("MarianConfig.encoder_layerdrop=0.2 is not carried over") for m in messages)
    torch.testing.assert_close(_aiayn_logits(model, src, tgt), _marian_logits(hf, src, tgt), atol=ATOL, rtol=0)

    with pytest.warns(UserWarning, match="GPT2Config.embd_pdrop=0.3"):
        lm = from_gpt2(_gpt2(embd_pdrop=0.3, resid_pdrop=0.1))
    assert lm.config.dropout == 0.1


def test_dropouts_and_token_ids_are_carried_both_ways():
    model = from_marian(_marian(dropout=0.2, attention_dropout=0.05))
    c = model.config
    assert (c.dropout, c.attention_dropout, c.max_len, c.pad_id) == (0.2, 0.05, MAX_LEN, PAD)
    back = to_marian(model).config
    assert (back.dropout, back.attention_dropout, back.activation_dropout) == (0.2, 0.05, 0.0)
    assert (back.max_position_embeddings, back.pad_token_id) == (MAX_LEN, PAD)
    # The model's special ids go back as they came (Marian's start token is its pad token, here also aiayn's BOS).
    assert (back.decoder_start_token_id, back.bos_token_id, back.eos_token_id) == (BOS_ID, BOS_ID, EOS_ID)

    lm = from_gpt2(_gpt2(resid_pdrop=0.2, embd_pdrop=0.2, attn_pdrop=0.05, pad_token_id=PAD))
    c = lm.config
    assert (c.dropout, c.attention_dropout, c.max_len, c.pad_id) == (0.2, 0.05, MAX_LEN, PAD)
    back = to_gpt2(lm).config
    assert (back.resid_pdrop, back.embd_pdrop, back.attn_pdrop) == (0.2, 0.2, 0.05)
    assert (back.n_positions, back.pad_token_id, back.bos_token_id, back.eos_token_id) == (MAX_LEN, PAD, BOS_ID, EOS_ID)
