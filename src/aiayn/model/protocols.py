"""The two contracts every model family implements, and the cache contract they share.

Everything outside `aiayn.model` (training, decoding, inference, serve, explain, viz, the demo) depends only on
these and on the family's task kind (`TaskKind.PAIRS` or `TaskKind.TEXT`), never on an architecture name.
Adding a family = a module in `aiayn/model/` whose class implements one of them + one entry in
`aiayn.model.registry.FAMILIES` (see ARCHITECTURE.md, "How to add a family").

Shapes: B batch, S source length, T target length, D d_model, V vocab.
"""

from __future__ import annotations

from typing import Any, ClassVar, NamedTuple, Protocol, runtime_checkable

import torch
from torch import nn

from aiayn.config import ModelConfig, SpecialIds, TaskKind


class Sublayer(NamedTuple):
    """One part a family shows to `explain` and the attention recorder: its module name in the model, its kind
    ("embedding", "attention", "residual", "ffn", or a family's own, e.g. "gates"), and the module."""

    name: str
    kind: str
    module: nn.Module


@runtime_checkable
class Cache(Protocol):
    """What a decoder keeps between steps. `length`: target positions already processed (the position of the
    next token). `reorder(rows, cross)`: keep batch rows `rows` (beam search after each step); cross=False leaves
    the part computed once from the encoder memory alone (rows of one source's beams are identical there)."""

    @property
    def length(self) -> int: ...

    def reorder(self, rows: torch.Tensor, cross: bool = True) -> None: ...


@runtime_checkable
class ModelFamily(Protocol):
    """What both contracts share."""

    arch: ClassVar[str]  # the registry's name of the family (ModelConfig.arch)
    task: ClassVar[TaskKind]  # what it learns from
    config: ModelConfig

    @property
    def special_ids(self) -> SpecialIds: ...  # pad, bos (decoder start), eos, unk, never_emit

    @property
    def max_len(self) -> int: ...  # positions the model has

    @property
    def output_weight(self) -> torch.Tensor: ...  # (V, D) the pre-softmax Linear's weight, tied or not

    @property
    def output_bias(self) -> torch.Tensor | None: ...  # (V,) or None

    def new_cache(self, capacity: int = 0) -> Cache: ...  # capacity: the most steps it will hold, when known

    def sublayers(self) -> list[Sublayer]: ...  # the parts explain and the recorder show


@runtime_checkable
class Seq2SeqModel(ModelFamily, Protocol):
    """An encoder-decoder: `encode` once per source, `decode` per step (all target positions in training)."""

    def encode(self, src: torch.Tensor, src_mask: torch.Tensor | None = None) -> Any: ...  # (B, S) -> memory

    def decode(
        self, tgt: torch.Tensor, memory: Any, src_mask: torch.Tensor | None, cache: Cache | None = None
    ) -> torch.Tensor: ...  # (B, T) -> logits (B, T, V); with a cache, tgt holds only the new tokens

    def hidden(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor: ...  # -> last states (B, T, D)


@runtime_checkable
class CausalLM(ModelFamily, Protocol):
    """A decoder-only language model: each position predicts the next token."""

    def forward(self, ids: torch.Tensor, cache: Cache | None = None) -> torch.Tensor: ...  # (B, T) -> (B, T, V)

    def hidden(self, ids: torch.Tensor) -> torch.Tensor: ...  # -> last states (B, T, D)
