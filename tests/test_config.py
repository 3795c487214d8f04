"""ModelConfig: the paper's defaults, and errors that name the field, the value and what is allowed."""

import pytest

from aiayn import ModelConfig


def test_defaults_are_the_paper_base_model():
    c = ModelConfig(vocab_size=37000)
    assert (c.d_model, c.n_heads, c.n_encoder_layers, c.n_decoder_layers, c.d_ff, c.dropout) == (
        512, 8, 6, 6, 2048, 0.1,
    )  # fmt: skip
    assert (c.norm, c.positional, c.activation, c.tie_embeddings, c.head_dim) == (
        "post", "sinusoidal", "relu", True, 64,
    )  # fmt: skip


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(d_model=500, n_heads=8), "d_model=500 is not divisible by n_heads=8"),
        (dict(norm="middle"), "ModelConfig.norm='middle' is not one of 'post' | 'pre'"),
        (dict(positional="alibi"), "positional='alibi' is not one of 'sinusoidal' | 'learned' | 'rope'"),
        (dict(activation="tanh"), "activation='tanh' is not one of 'relu' | 'gelu'"),
        (dict(arch="bert"), "arch='bert'"),
        (dict(dropout=1.5), "ModelConfig.dropout=1.5 must be in [0, 1)"),
        (dict(vocab_size=0), "ModelConfig.vocab_size=0 must be >= 1"),
        (dict(n_heads=0), "ModelConfig.n_heads=0 must be >= 1"),
        (dict(pad_id=100, vocab_size=10), "pad_id=100 must be in [0, vocab_size=10)"),
        (dict(tie_embeddings="yes"), "tie_embeddings='yes' must be true or false"),
        (dict(d_model=512.0), "d_model=512.0 must be an integer"),
        (dict(positional="rope", d_model=24, n_heads=8), "needs an even head dimension"),
        (dict(arch="seq2seq", n_encoder_layers=0), "n_encoder_layers=0 must be >= 1 for arch='seq2seq'"),
    ],
)
def test_invalid_values_name_field_value_and_allowed(kwargs, message):
    with pytest.raises(ValueError) as e:
        ModelConfig(**{"vocab_size": 100, **kwargs})
    assert message in str(e.value)


def test_from_dict_refuses_unknown_keys_with_a_hint():
    with pytest.raises(ValueError, match="unknown key 'd_modle'.*did you mean 'd_model'"):
        ModelConfig.from_dict({"vocab_size": 10, "d_modle": 64})
    c = ModelConfig.from_dict({"vocab_size": 10, "d_model": 64, "n_heads": 4, "dropout": 0})
    assert c.dropout == 0.0 and isinstance(c.dropout, float)
    assert ModelConfig.from_dict(c.to_dict()) == c


def test_lm_needs_no_encoder_layers():
    c = ModelConfig(arch="lm", vocab_size=10, n_encoder_layers=0)
    assert c.n_decoder_layers == 6
