"""Typed configuration, one dataclass per concern; no torch import, so that `aiayn --help` stays instant.

- `model`: ModelConfig (the paper's base model by default), the special token ids, the task kind;
- `run`: the sections of a training run (data, tokenizer, optim, train) and RunConfig, YAML and CLI overrides;
- `decode`: DecodeConfig, how to translate or generate;
- `fields`: plain data -> dataclasses, with checked types and 'did you mean' for unknown keys.
"""

from aiayn.config.decode import DEFAULTS as DECODE_DEFAULTS
from aiayn.config.decode import EXTRA_LENGTH, DecodeConfig
from aiayn.config.fields import check_types, from_dict
from aiayn.config.model import (
    BOS_ID,
    EOS_ID,
    PAD_ID,
    UNK_ID,
    Activation,
    Arch,
    ModelConfig,
    Norm,
    NormType,
    Positional,
    SpecialIds,
    TaskKind,
)
from aiayn.config.run import (
    SECTIONS,
    BestMetric,
    ConfigNote,
    DataConfig,
    MatmulPrecision,
    OptimConfig,
    Precision,
    RunConfig,
    Schedule,
    Task,
    TokenizerConfig,
    TokenizerKind,
    TrainConfig,
    load_yaml,
    merge,
    parse_overrides,
    renamed,
)

__all__ = [
    "BOS_ID", "DECODE_DEFAULTS", "EOS_ID", "EXTRA_LENGTH", "PAD_ID", "SECTIONS", "UNK_ID", "Activation", "Arch",
    "BestMetric", "ConfigNote", "DataConfig", "DecodeConfig", "MatmulPrecision", "ModelConfig", "Norm", "NormType",
    "OptimConfig", "Positional", "Precision", "RunConfig", "Schedule", "SpecialIds", "Task", "TaskKind",
    "TokenizerConfig", "TokenizerKind", "TrainConfig", "check_types", "from_dict", "load_yaml", "merge",
    "parse_overrides", "renamed",
]  # fmt: skip
