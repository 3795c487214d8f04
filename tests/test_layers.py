"""Embeddings, positional encodings, the FFN and Add & Norm against independent formulas."""

import math

import pytest
import torch

from aiayn import ModelConfig
from aiayn.model.layers import AddNorm, FeedForward, InputEmbedding, TokenEmbedding, sinusoidal_table


def config(**kw):
    base = dict(vocab_size=20, d_model=8, n_heads=2, d_ff=16, dropout=0.0)
    return ModelConfig(**{**base, **kw})


@pytest.mark.parametrize("pos,i", [(0, 0), (1, 0), (1, 3), (7, 1), (50, 2), (1000, 255), (4999, 100)])
def test_sinusoidal_values_match_the_paper_formula(pos, i):
    d_model = 512
    table = sinusoidal_table(5000, d_model)
    angle = pos / 10000 ** (2 * i / d_model)  # PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), 2i+1 = cos(...)
    assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
    assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_embedding_is_scaled_by_sqrt_d_model_and_adds_positions():
    c = config()
    token = TokenEmbedding(20, 8)
    embed = InputEmbedding(c, token)
    ids = torch.tensor([[3, 4, 5]])
    expected = token.weight[ids] * math.sqrt(8) + sinusoidal_table(3, 8)
    torch.testing.assert_close(embed(ids), expected)
    # With a cache offset, positions continue.
    torch.testing.assert_close(embed(ids[:, 2:], offset=2), expected[:, 2:])
    unscaled = TokenEmbedding(20, 8, scale=False)
    torch.testing.assert_close(unscaled(ids), unscaled.weight[ids])


def test_positions_beyond_max_len_are_refused():
    embed = InputEmbedding(config(max_len=4), TokenEmbedding(20, 8))
    with pytest.raises(ValueError, match="max_len=4"):
        embed(torch.ones(1, 5, dtype=torch.long))


def test_ffn_relu_is_max_0_xw1_b1_w2_b2():
    ffn = FeedForward(config())
    x = torch.randn(2, 3, 8)
    W1, b1, W2, b2 = ffn.w1.weight.T, ffn.w1.bias, ffn.w2.weight.T, ffn.w2.bias
    torch.testing.assert_close(ffn(x), torch.clamp(x @ W1 + b1, min=0) @ W2 + b2)


@pytest.mark.parametrize(
    "activation,f",
    [
        ("gelu", lambda h: 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))),
        ("gelu_tanh", lambda h: 0.5 * h * (1 + torch.tanh(math.sqrt(2 / math.pi) * (h + 0.044715 * h**3)))),
        ("swish", lambda h: h * torch.sigmoid(h)),
    ],
)
def test_ffn_activation_variants(activation, f):
    ffn = FeedForward(config(activation=activation))
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(ffn(x), ffn.w2(f(ffn.w1(x))), atol=1e-6, rtol=1e-5)


def test_ffn_swiglu():
    ffn = FeedForward(config(activation="swiglu"))
    x = torch.randn(2, 3, 8)
    W = ffn.w1.weight  # (2F, D): [gate; up]
    gate, up = x @ W[:16].T + ffn.w1.bias[:16], x @ W[16:].T + ffn.w1.bias[16:]
    torch.testing.assert_close(ffn(x), ffn.w2(gate * torch.sigmoid(gate) * up), atol=1e-6, rtol=1e-5)


def test_add_norm_orders():
    x = torch.randn(2, 3, 8)
    sub = torch.nn.Linear(8, 8)
    post, pre = AddNorm(config(norm="post")), AddNorm(config(norm="pre"))
    ln = torch.nn.functional.layer_norm
    torch.testing.assert_close(post(x, sub), ln(x + sub(x), (8,), eps=1e-5))  # LayerNorm(x + Sublayer(x))
    torch.testing.assert_close(pre(x, sub), x + sub(ln(x, (8,), eps=1e-5)))  # x + Sublayer(LayerNorm(x))
    rms = AddNorm(config(norm_type="rmsnorm"))
    y = x + sub(x)
    torch.testing.assert_close(rms(x, sub), y / torch.sqrt(y.pow(2).mean(-1, keepdim=True) + 1e-5))


def test_dropout_zeroes_p_of_the_elements_scales_the_rest_and_is_unbiased_in_every_lane():
    from aiayn.model.layers import Dropout

    torch.manual_seed(0)
    drop = Dropout(0.3).train()
    x = torch.ones(4_000_000, requires_grad=True)
    y = drop(x)
    zero = y == 0
    assert abs(zero.float().mean().item() - 0.3) < 2e-3
    assert torch.equal(y[~zero], torch.full_like(y[~zero], 1 / 0.7))
    # Four mask values come from each 64-bit random draw: every one of the four positions must be unbiased.
    for lane in range(4):
        assert abs(zero[lane::4].float().mean().item() - 0.3) < 3e-3, lane
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())  # d/dx of mask * x / (1 - p) is mask / (1 - p)
    assert drop(torch.ones(5, dtype=torch.bfloat16)).dtype == torch.bfloat16
    assert torch.equal(drop.eval()(x), x)
    assert torch.equal(Dropout(0.0).train()(x), x)
