"""The recurrent encoder-decoder with attention (Bahdanau et al. 2015; Luong et al. 2015): arch "rnn".

The encoder reads the source with a (bidirectional) LSTM, GRU or plain RNN; its outputs are the memory. A bridge
maps the final states to the decoder's first state. The decoder runs its recurrent layers over the whole target
at once (no Python loop over time in training), then attends from every state to memory at once (Luong's
placement: after the recurrent step) and combines context and state, tanh(W_c [context; h_t]), into the d_model
vector the pre-softmax Linear reads. With rnn_attention "none" the decoder sees only the bridged final state,
Cho et al.'s fixed vector C.

Shapes: B batch, S source length, T target length, D d_model (= H), E memory size (2H or H), V vocab.
"""

from __future__ import annotations

import torch
from torch import nn

from aiayn.config import ModelConfig, TaskKind
from aiayn.model.family_base import FamilyBase
from aiayn.model.layers import Dropout, TokenEmbedding
from aiayn.model.masks import padding_mask
from aiayn.model.protocols import Sublayer
from aiayn.model.rnn.attention import AdditiveAttention, GeneralAttention
from aiayn.model.rnn.cache import RNNCache
from aiayn.model.rnn.encoder import Bridge, Embedding, Encoder, RecurrentState, recurrent_layers
from aiayn.model.transformer import OutputProjection


def make_attention(config: ModelConfig, memory_size: int) -> nn.Module | None:
    """rnn_attention's module: queries are decoder states (D), keys and values are memory (E)."""
    if config.rnn_attention == "additive":
        return AdditiveAttention(config.d_model, memory_size, config.rnn_attention_dim or config.d_model)
    if config.rnn_attention == "general":
        return GeneralAttention(config.d_model, memory_size)
    return None


class Decoder(nn.Module):
    """Embedding, the recurrent layers, then attention and the combination into the output's d_model vector."""

    def __init__(self, config: ModelConfig, token: TokenEmbedding) -> None:
        super().__init__()
        memory_size = config.d_model * (2 if config.rnn_bidirectional else 1)
        self.embed = Embedding(config, token)
        self.bridge = Bridge(config)
        self.rnn = recurrent_layers(config, config.n_decoder_layers, bidirectional=False)
        self.cross_attn = make_attention(config, memory_size)
        # W_c of h~_t = tanh(W_c [c_t; h_t]) (Luong et al. eq. 5); without attention h_t goes out as it is.
        self.combine = nn.Linear(memory_size + config.d_model, config.d_model) if self.cross_attn else None
        self.dropout = Dropout(config.dropout)

    def forward(
        self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None, cache: RNNCache | None = None
    ) -> torch.Tensor:
        """tgt (B, T) (the new tokens only, with a cache), memory (B, S, E) -> combined states (B, T, D)."""
        if cache is None or cache.state is None:
            state = self.bridge(memory, src_mask)
            keys = self.cross_attn.project_keys(memory) if self.cross_attn is not None else None  # (B, S, A)
        else:
            state, keys = cache.state, cache.keys
        outputs, state = self.rnn(self.embed(tgt), _as_torch_state(state))  # outputs (B, T, H)
        if cache is not None:
            cache.state, cache.keys = _as_tuple(state), keys
            cache.steps += tgt.shape[1]
        if self.cross_attn is None:
            return self.dropout(outputs)
        context, _ = self.cross_attn(outputs, keys, memory, src_mask)  # (B, T, E)
        return self.dropout(torch.tanh(self.combine(torch.cat([context, outputs], dim=-1))))  # (B, T, D)


def _as_torch_state(state: RecurrentState) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """(h, c) for nn.LSTM, h alone for nn.GRU / nn.RNN."""
    return state if len(state) == 2 else state[0]


def _as_tuple(state: torch.Tensor | tuple[torch.Tensor, ...]) -> RecurrentState:
    return tuple(state) if isinstance(state, tuple) else (state,)


class RNNSeq2Seq(FamilyBase):
    """The recurrent encoder-decoder: translation or any sequence-to-sequence task, with LSTM, GRU or plain RNN
    cells and additive, general or no attention (ModelConfig's rnn_* keys). Hidden size d_model, depth
    n_encoder_layers / n_decoder_layers. Implements aiayn.model.protocols.Seq2SeqModel.
    """

    arch = "rnn"
    task = TaskKind.PAIRS
    # compile_decoding leaves it eager: a step is a few fused calls (the recurrent layer, attention), already
    # the fast path.
    compiled_decoding = False

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._check_arch(config)
        self.config = config
        src_token = TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        tgt_token = (
            src_token
            if config.tie_embeddings
            else TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        )
        self.encoder = Encoder(config, src_token)
        self.decoder = Decoder(config, tgt_token)
        self.output = OutputProjection(config, tgt_token if config.tie_embeddings else None)

    def new_cache(self, capacity: int = 0) -> RNNCache:
        """An empty cache; capacity is not needed (the state has a fixed size, whatever the steps)."""
        return RNNCache()

    def sublayers(self) -> list[Sublayer]:
        """The embeddings, the recurrent layers (kind "recurrent"), the bridge and the attention, in order."""
        parts = [
            Sublayer("encoder.embed", "embedding", self.encoder.embed),
            Sublayer("encoder.rnn", "recurrent", self.encoder.rnn),
            Sublayer("decoder.bridge", "bridge", self.decoder.bridge),
            Sublayer("decoder.embed", "embedding", self.decoder.embed),
            Sublayer("decoder.rnn", "recurrent", self.decoder.rnn),
        ]
        if self.decoder.cross_attn is not None:
            parts.append(Sublayer("decoder.cross_attn", "attention", self.decoder.cross_attn))
        return parts

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) -> memory (B, S, E). src_mask defaults to the padding mask of src."""
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        return self.encoder(src, src_mask)

    def decode(
        self, tgt: torch.Tensor, memory: torch.Tensor, src_mask: torch.Tensor | None, cache: RNNCache | None = None
    ) -> torch.Tensor:
        """tgt (B, T) target ids (shifted right: starting with BOS) -> logits (B, T, V). With a cache, tgt holds
        only the new tokens; the first call also computes the bridge and the projected keys."""
        return self.output(self.decoder(tgt, memory, src_mask, cache))

    def hidden(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> the combined states (B, T, D) the pre-softmax Linear reads (the chunked
        loss takes these and `output_weight`)."""
        src_mask = padding_mask(src, self.config.pad_id)
        return self.decoder(tgt, self.encode(src, src_mask), src_mask)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.output(self.hidden(src, tgt))
