"""Recurrent encoder-decoders with attention (arch "rnn"): the cells' steps written out, additive and general
attention, and the family `RNNSeq2Seq` (LSTM, GRU or plain RNN; fused layers over whole sequences)."""

from aiayn.model.rnn.attention import AdditiveAttention, GeneralAttention, additive_attention, masked_softmax
from aiayn.model.rnn.cache import RNNCache
from aiayn.model.rnn.cells import gru_step, lstm_step, rnn_step
from aiayn.model.rnn.encoder import Bridge, Embedding, Encoder
from aiayn.model.rnn.family import Decoder, RNNSeq2Seq

__all__ = [
    "AdditiveAttention", "Bridge", "Decoder", "Embedding", "Encoder", "GeneralAttention", "RNNCache", "RNNSeq2Seq",
    "additive_attention", "gru_step", "lstm_step", "masked_softmax", "rnn_step",
]  # fmt: skip
