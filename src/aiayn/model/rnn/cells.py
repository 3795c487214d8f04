"""One time step of the three recurrent cells, written out in PyTorch's weight layout.

These are the readable path: `torch.nn.RNN` / `LSTM` / `GRU` (the fused layers the family runs) compute the same
thing for a whole sequence at once, and tests/test_rnn.py proves it step by step. The weights are exactly the
fused layers' `weight_ih_l{k}`, `weight_hh_l{k}`, `bias_ih_l{k}`, `bias_hh_l{k}`: G gate blocks of H rows each,
stacked in PyTorch's gate order, so a trained layer's parameters can be passed in as they are.

Shapes: B batch, D_in input size, H hidden size, G gates (1 RNN, 4 LSTM, 3 GRU).
x (B, D_in); h, c (B, H); weight_ih (G*H, D_in); weight_hh (G*H, H); bias_ih, bias_hh (G*H,).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_NONLINEARITIES = {"tanh": torch.tanh, "relu": torch.relu}


def rnn_step(
    x: torch.Tensor,
    h: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
    nonlinearity: str = "tanh",
) -> torch.Tensor:
    """The plain (Elman) recurrent step: s_t = f(U x_t + W s_{t-1} + b), f = tanh or relu -> h (B, H).

    U is weight_ih, W is weight_hh; PyTorch keeps two biases (b = b_ih + b_hh), as cuDNN does.
    """
    if nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity={nonlinearity!r} is not one of 'tanh' | 'relu'")
    return _NONLINEARITIES[nonlinearity](F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh))


def lstm_step(
    x: torch.Tensor,
    h: torch.Tensor,
    c: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The LSTM step (Hochreiter & Schmidhuber 1997, with the forget gate of Gers et al. 2000) -> (h, c).

    The four gate blocks, in PyTorch's order i, f, g, o, all computed by one product each with x_t and h_{t-1}:
        Z_i = sigmoid(W_ii x_t + W_hi h_{t-1} + b_i)   input gate: how much of the candidate to write
        Z_f = sigmoid(W_if x_t + W_hf h_{t-1} + b_f)   forget gate: how much of the old cell to keep
        Z   = tanh(W_ig x_t + W_hg h_{t-1} + b_g)      candidate cell content ("g" in PyTorch)
        Z_o = sigmoid(W_io x_t + W_ho h_{t-1} + b_o)   output gate: how much of the cell to show
        c_t = Z_f ⊙ c_{t-1} + Z_i ⊙ Z                  the cell: an additive path through time
        h_t = Z_o ⊙ tanh(c_t)
    """
    gates = F.linear(x, weight_ih, bias_ih) + F.linear(h, weight_hh, bias_hh)  # (B, 4H)
    z_i, z_f, z, z_o = gates.chunk(4, dim=-1)  # each (B, H)
    c = torch.sigmoid(z_f) * c + torch.sigmoid(z_i) * torch.tanh(z)
    h = torch.sigmoid(z_o) * torch.tanh(c)
    return h, c


def gru_step(
    x: torch.Tensor,
    h: torch.Tensor,
    weight_ih: torch.Tensor,
    weight_hh: torch.Tensor,
    bias_ih: torch.Tensor | None = None,
    bias_hh: torch.Tensor | None = None,
) -> torch.Tensor:
    """The GRU step (Cho et al. 2014) -> h (B, H). Gate blocks in PyTorch's order r, z, n:
        r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)          reset gate
        z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)          update gate
        n_t = tanh(W_in x_t + b_in + r_t ⊙ (W_hn h_{t-1} + b_hn))     candidate state
        h_t = (1 - z_t) ⊙ n_t + z_t ⊙ h_{t-1}
    PyTorch (and cuDNN) apply the reset gate after the product, to W_hn h_{t-1} + b_hn; Cho et al. and many
    textbooks write W_hn (r_t ⊙ h_{t-1}) instead, which is not the same function. We follow PyTorch, so that
    these steps equal torch.nn.GRU's.
    """
    x_r, x_z, x_n = F.linear(x, weight_ih, bias_ih).chunk(3, dim=-1)  # each (B, H)
    h_r, h_z, h_n = F.linear(h, weight_hh, bias_hh).chunk(3, dim=-1)  # each (B, H)
    r = torch.sigmoid(x_r + h_r)
    z = torch.sigmoid(x_z + h_z)
    n = torch.tanh(x_n + r * h_n)
    return (1 - z) * n + z * h
