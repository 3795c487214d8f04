"""The one place an architecture name is read: `ModelConfig.arch` -> the model family's class.

Adding a family = its module in aiayn/model/ (a class implementing Seq2SeqModel or CausalLM from
aiayn.model.protocols, with class attributes `arch` and `task`) + one entry in FAMILIES. ModelConfig's
validation lists the same names (config.model.Arch).
"""

from __future__ import annotations

from aiayn.config import ModelConfig, TaskKind
from aiayn.errors import ConfigError
from aiayn.model.lm import LanguageModel
from aiayn.model.protocols import CausalLM, Seq2SeqModel
from aiayn.model.rnn import RNNSeq2Seq
from aiayn.model.transformer import Transformer

FAMILIES: dict[str, type] = {family.arch: family for family in (Transformer, LanguageModel, RNNSeq2Seq)}


def family(arch: str) -> type:
    """The class of the family named `arch`."""
    if arch not in FAMILIES:
        raise ConfigError(f"model.arch={arch!r} is not one of {' | '.join(map(repr, FAMILIES))}")
    return FAMILIES[arch]


def build(config: ModelConfig) -> Seq2SeqModel | CausalLM:
    """The model `config` describes, freshly initialised, on the CPU, in training mode."""
    return family(config.arch)(config)


def task_kind(config: ModelConfig) -> TaskKind:
    """What the family of `config` learns from: TaskKind.PAIRS (parallel texts) or TaskKind.TEXT (plain text)."""
    return family(config.arch).task
