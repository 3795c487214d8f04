"""Encoder and decoder layers and stacks (paper §3.1, Figure 1), and the encoder-decoder Transformer.

Shapes: B batch, S source length, T target length, D d_model, V vocab.
"""

from __future__ import annotations

import torch
from torch import nn

from aiayn.config import ModelConfig, TaskKind
from aiayn.model.attention import MultiHeadAttention, RotaryEmbedding
from aiayn.model.cache import KVCache, LayerCache
from aiayn.model.family_base import FamilyBase
from aiayn.model.layers import AddNorm, FeedForward, InputEmbedding, TokenEmbedding, make_norm
from aiayn.model.masks import padding_mask
from aiayn.model.protocols import Sublayer


def make_rotary(config: ModelConfig) -> RotaryEmbedding | None:
    """One rotary table shared by every self-attention of a stack (None unless positional == "rope")."""
    if config.positional != "rope":
        return None
    return RotaryEmbedding(config.head_dim, config.max_len, config.rope_base)


class EncoderLayer(nn.Module):
    """Multi-head self-attention, then the position-wise FFN, each wrapped in Add & Norm."""

    def __init__(self, config: ModelConfig, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config, rotary=rotary)
        self.ffn = FeedForward(config)
        self.self_attn_block = AddNorm(config)
        self.ffn_block = AddNorm(config)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """x (B, S, D), mask (B, 1, 1, S) padding of the source -> (B, S, D)."""
        x = self.self_attn_block(x, lambda h: self.self_attn(h, mask=mask))
        return self.ffn_block(x, self.ffn)


class DecoderLayer(nn.Module):
    """Masked self-attention, encoder-decoder attention over the encoder output (`memory`), then the FFN.

    With cross=False it is the block of a decoder-only language model (self-attention and FFN only).
    """

    def __init__(self, config: ModelConfig, cross: bool = True, rotary: RotaryEmbedding | None = None) -> None:
        super().__init__()
        self.self_attn = MultiHeadAttention(config, rotary=rotary)
        self.self_attn_block = AddNorm(config)
        if cross:
            self.cross_attn = MultiHeadAttention(config, cross=True)
            self.cross_attn_block = AddNorm(config)
        else:
            self.cross_attn = None
        self.ffn = FeedForward(config)
        self.ffn_block = AddNorm(config)

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: LayerCache | None = None,
    ) -> torch.Tensor:
        """x (B, T, D); memory (B, S, D) with its padding mask (B, 1, 1, S) -> (B, T, D)."""
        self_cache = cache.self_attn if cache is not None else None
        x = self.self_attn_block(x, lambda h: self.self_attn(h, causal=True, cache=self_cache))
        if self.cross_attn is not None:
            cross_cache = cache.cross_attn if cache is not None else None
            x = self.cross_attn_block(
                x, lambda h: self.cross_attn(h, memory=memory, mask=memory_mask, cache=cross_cache)
            )
        return self.ffn_block(x, self.ffn)


class Encoder(nn.Module):
    """N encoder layers; with pre-LN a final norm, since the last layer's output is not normalised."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        rotary = make_rotary(config)
        self.layers = nn.ModuleList(EncoderLayer(config, rotary) for _ in range(config.n_encoder_layers))
        self.norm = make_norm(config) if config.norm == "pre" else None

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return self.norm(x) if self.norm is not None else x


class Decoder(nn.Module):
    """N decoder layers (with or without encoder-decoder attention); final norm with pre-LN."""

    def __init__(self, config: ModelConfig, cross: bool = True) -> None:
        super().__init__()
        rotary = make_rotary(config)
        self.layers = nn.ModuleList(DecoderLayer(config, cross, rotary) for _ in range(config.n_decoder_layers))
        self.norm = make_norm(config) if config.norm == "pre" else None

    def forward(
        self,
        x: torch.Tensor,
        memory: torch.Tensor | None = None,
        memory_mask: torch.Tensor | None = None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        for i, layer in enumerate(self.layers):
            x = layer(x, memory, memory_mask, cache.layers[i] if cache is not None else None)
        return self.norm(x) if self.norm is not None else x


def init_linear_weights(module: nn.Module) -> None:
    """Xavier-uniform weights and zero biases for every Linear (as torch.nn.Transformer and the Annotated
    Transformer do; the paper does not say)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class OutputProjection(nn.Module):
    """The pre-softmax Linear: (B, T, D) -> logits (B, T, V). Softmax is left to whoever needs
    probabilities (the loss uses log-softmax; decoding may apply a temperature first)."""

    def __init__(self, config: ModelConfig, tied: TokenEmbedding | None) -> None:
        super().__init__()
        if tied is not None:
            self.weight = tied.weight  # §3.4: the same matrix as the embedding
        else:
            self.weight = nn.Parameter(torch.empty(config.vocab_size, config.d_model))
            nn.init.normal_(self.weight, std=config.d_model**-0.5)
        self.bias = nn.Parameter(torch.zeros(config.vocab_size)) if config.output_bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, self.weight, self.bias)


# The parts `explain` shows, by the class that computes them.
_SUBLAYER_KINDS = ((InputEmbedding, "embedding"), (MultiHeadAttention, "attention"), (AddNorm, "residual"),
                   (FeedForward, "ffn"))  # fmt: skip


class TransformerFamily(FamilyBase):
    """What the two Transformer families share for the model protocols (aiayn.model.protocols), beyond
    FamilyBase: the KV cache and the parts `explain` shows."""

    output: OutputProjection

    def new_cache(self, capacity: int = 0) -> KVCache:
        """An empty KV cache; capacity: the most target steps it will hold, when known (allocated at once)."""
        return KVCache(self.config.n_decoder_layers, capacity)

    def sublayers(self) -> list[Sublayer]:
        """Embeddings, attention, Add & Norm and FFN modules, in the model's order, named as in named_modules()."""
        found = []
        for name, module in self.named_modules():
            kind = next((k for cls, k in _SUBLAYER_KINDS if isinstance(module, cls)), None)
            if kind is not None:
                found.append(Sublayer(name, kind, module))
        return found


class Transformer(TransformerFamily):
    """The encoder-decoder Transformer (Figure 1): translation or any sequence-to-sequence task.

    `encode` runs once per source; `decode` runs the decoder over the target prefix (all of it in training,
    one new token per step with a KV cache when generating); `forward(src, tgt)` does both and returns logits.
    Implements aiayn.model.protocols.Seq2SeqModel.
    """

    arch = "seq2seq"
    task = TaskKind.PAIRS

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
        self.src_embed = InputEmbedding(config, src_token)
        self.tgt_embed = InputEmbedding(config, tgt_token)
        self.encoder = Encoder(config)
        self.decoder = Decoder(config, cross=True)
        init_linear_weights(self)
        self.output = OutputProjection(config, tgt_token if config.tie_embeddings else None)

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> torch.Tensor:
        """src (B, S) token ids -> memory (B, S, D). src_mask defaults to the padding mask of src."""
        if src_mask is None:
            src_mask = padding_mask(src, self.config.pad_id)
        return self.encoder(self.src_embed(src), src_mask)

    def decode(
        self,
        tgt: torch.Tensor,
        memory: torch.Tensor,
        src_mask: torch.Tensor | None,
        cache: KVCache | None = None,
    ) -> torch.Tensor:
        """tgt (B, T) target ids (shifted right: starting with BOS) -> logits (B, T, V).

        With a cache, tgt holds only the new tokens; their positions continue from `cache.length`.
        """
        offset = cache.length if cache is not None else 0
        x = self.decoder(self.tgt_embed(tgt, offset), memory, src_mask, cache)
        return self.output(x)

    def hidden(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> the decoder's last states (B, T, D), before the pre-softmax Linear.

        Training feeds these and `self.output`'s weight to `aiayn.train.loss.linear_label_smoothed_loss`, which
        never builds the whole (B, T, V) logits.
        """
        src_mask = padding_mask(src, self.config.pad_id)
        return self.decoder(self.tgt_embed(tgt), self.encode(src, src_mask), src_mask)

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, V)."""
        return self.output(self.hidden(src, tgt))
