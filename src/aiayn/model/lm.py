"""The decoder-only language model (GPT-style), built from the same layers as the Transformer's decoder,
without encoder-decoder attention.

Shapes: B batch, T sequence length, D d_model, V vocab.
"""

from __future__ import annotations

import torch

from aiayn.config import ModelConfig, TaskKind
from aiayn.model.cache import KVCache
from aiayn.model.layers import InputEmbedding, TokenEmbedding
from aiayn.model.transformer import Decoder, OutputProjection, TransformerFamily, init_linear_weights


class LanguageModel(TransformerFamily):
    """Predicts each next token from the ones before it: masked self-attention stacks (n_decoder_layers).

    `forward(ids)` returns logits for every position; with a cache, pass only the new tokens at each step.
    Implements aiayn.model.protocols.CausalLM.
    """

    arch = "lm"
    task = TaskKind.TEXT

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self._check_arch(config)
        self.config = config
        token = TokenEmbedding(config.vocab_size, config.d_model, config.scale_embeddings)
        self.embed = InputEmbedding(config, token)
        self.decoder = Decoder(config, cross=False)
        init_linear_weights(self)
        self.output = OutputProjection(config, token if config.tie_embeddings else None)

    def forward(self, ids: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """ids (B, T) -> logits (B, T, V). Positions continue from `cache.length` when a cache is given."""
        offset = cache.length if cache is not None else 0
        return self.output(self.decoder(self.embed(ids, offset), cache=cache))

    def hidden(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (B, T) -> the last states (B, T, D), before the pre-softmax Linear (see Transformer.hidden)."""
        return self.decoder(self.embed(ids))
