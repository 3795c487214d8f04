"""The recurrent encoder and the bridge to the decoder's first state.

Shapes: B batch, S source length, D d_model (= H, the hidden size), E memory size (2H bidirectional, else H),
L layers, K states per layer (2 for the LSTM: h and c; 1 otherwise).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from aiayn.config import ModelConfig
from aiayn.model.layers import Dropout, TokenEmbedding

RecurrentState = tuple[torch.Tensor, ...]  # (h,) or (h, c), each (L, B, H): what torch.nn.RNN/GRU/LSTM carry


class Embedding(nn.Module):
    """Token embedding (the Transformer families' TokenEmbedding, shared or tied the same way), then dropout.
    No positions: a recurrent layer knows the order from reading the sequence in order."""

    def __init__(self, config: ModelConfig, token: TokenEmbedding) -> None:
        super().__init__()
        self.token = token
        self.position = None  # what `explain`'s embedding hook reads: nothing is added
        self.dropout = Dropout(config.dropout)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> (B, T, D)."""
        return self.dropout(self.token(ids))


def recurrent_layers(config: ModelConfig, n_layers: int, bidirectional: bool) -> nn.RNNBase:
    """The fused torch.nn.LSTM / GRU / RNN of rnn_cell: d_model in, d_model hidden, dropout between layers."""
    kwargs = dict(
        input_size=config.d_model, hidden_size=config.d_model, num_layers=n_layers, batch_first=True,
        bidirectional=bidirectional, dropout=config.dropout if n_layers > 1 else 0.0,
    )  # fmt: skip
    if config.rnn_cell == "lstm":
        return nn.LSTM(**kwargs)
    if config.rnn_cell == "gru":
        return nn.GRU(**kwargs)
    return nn.RNN(nonlinearity=config.rnn_nonlinearity, **kwargs)


def source_lengths(src_mask: torch.Tensor | None, batch: int, length: int, device: torch.device) -> torch.Tensor:
    """Real tokens per source (B,) from a padding mask (B, S) or (B, 1, 1, S) (None: every position is real).
    Right padding is assumed, as aiayn.data.batching makes it; an empty row counts one position."""
    if src_mask is None:
        return torch.full((batch,), length, dtype=torch.long, device=device)
    return src_mask.reshape(batch, length).sum(dim=1).clamp(min=1)  # (B, 1, 1, S) -> (B, S) -> (B,)


class Encoder(nn.Module):
    """Embedding, then the recurrent layers over the packed source, so that padding changes no sentence's states:
    a sentence alone and the same sentence padded in a batch get the same memory."""

    def __init__(self, config: ModelConfig, token: TokenEmbedding) -> None:
        super().__init__()
        self.embed = Embedding(config, token)
        self.rnn = recurrent_layers(config, config.n_encoder_layers, config.rnn_bidirectional)

    def forward(self, src: torch.Tensor, src_mask: torch.Tensor | None) -> torch.Tensor:
        """src (B, S) -> memory (B, S, E): the top layer's outputs (both directions concatenated), 0 at padding."""
        B, S = src.shape
        lengths = source_lengths(src_mask, B, S, src.device)
        # The packed lengths live on the CPU (PyTorch's requirement); enforce_sorted=False keeps the batch order.
        packed = pack_padded_sequence(self.embed(src), lengths.cpu(), batch_first=True, enforce_sorted=False)
        outputs, _ = self.rnn(packed)
        memory, _ = pad_packed_sequence(outputs, batch_first=True, total_length=S)  # (B, S, E)
        return memory


class Bridge(nn.Module):
    """The decoder's first state from the encoder's final states: one Linear + tanh maps [h_fwd; h_bwd] (E) to
    the initial h (and c for the LSTM) of every decoder layer (Bahdanau et al. 2015 use tanh(W_s h_bwd_1)).

    The final states are read from memory, so memory stays one plain tensor that beam search can repeat: the
    forward direction ends at each sentence's last real token, the backward direction at position 0.
    """

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.hidden, self.bidirectional = config.d_model, config.rnn_bidirectional
        self.n_layers, self.n_states = config.n_decoder_layers, 2 if config.rnn_cell == "lstm" else 1
        memory_size = self.hidden * (2 if self.bidirectional else 1)  # E
        self.proj = nn.Linear(memory_size, self.n_layers * self.n_states * self.hidden)

    def forward(self, memory: torch.Tensor, src_mask: torch.Tensor | None) -> RecurrentState:
        """memory (B, S, E), its padding mask -> the decoder's initial (h,) or (h, c), each (L, B, H)."""
        B, S, E = memory.shape
        H = self.hidden
        last = source_lengths(src_mask, B, S, memory.device) - 1  # (B,) position of each last real token
        at_last = memory.gather(1, last[:, None, None].expand(B, 1, E))[:, 0]  # (B, 1, E) -> (B, E)
        final = torch.cat([at_last[:, :H], memory[:, 0, H:]], dim=-1) if self.bidirectional else at_last  # (B, E)
        states = torch.tanh(self.proj(final)).view(B, self.n_layers, self.n_states, H)  # (B, L, K, H)
        return tuple(states.permute(2, 1, 0, 3).contiguous().unbind(0))  # K x (L, B, H)
