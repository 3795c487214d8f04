"""What every model family derives the same way from its config and its pre-softmax Linear (the shared part of
the protocols in aiayn.model.protocols): the arch check, the special ids, the positions, the output weights.
The Transformer families (aiayn.model.transformer.TransformerFamily) and the recurrent one (aiayn.model.rnn)
build on it; each adds its own cache, parts and encode / decode."""

from __future__ import annotations

import torch
from torch import nn

from aiayn.config import ModelConfig, SpecialIds, TaskKind
from aiayn.errors import ConfigError


class FamilyBase(nn.Module):
    """A subclass sets `arch` and `task`, calls `_check_arch(config)`, and keeps `config` and `output` (an
    OutputProjection)."""

    arch: str
    task: TaskKind
    config: ModelConfig
    output: nn.Module

    def _check_arch(self, config: ModelConfig) -> None:
        if config.arch != self.arch:
            raise ConfigError(
                f"{type(self).__name__} needs ModelConfig.arch={self.arch!r}, got {config.arch!r}; "
                "aiayn.model.build(config) picks the family"
            )

    @property
    def special_ids(self) -> SpecialIds:
        return self.config.special_ids

    @property
    def max_len(self) -> int:
        return self.config.max_len

    @property
    def output_weight(self) -> torch.Tensor:
        return self.output.weight

    @property
    def output_bias(self) -> torch.Tensor | None:
        return self.output.bias
