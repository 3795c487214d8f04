"""Typed configuration. No torch import here, so that reading a config (and `aiayn --help`) stays instant.

`ModelConfig` defaults are the paper's base model (Vaswani et al. 2017, Table 3, row "base"); every modern
variant is a string switch, so a config is plain data that YAML and JSON can hold.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Literal, get_args, get_type_hints

# Special token ids, fixed so that every tokenizer, data file and checkpoint agrees on them.
PAD_ID, BOS_ID, EOS_ID, UNK_ID = 0, 1, 2, 3

Arch = Literal["seq2seq", "lm"]
Norm = Literal["post", "pre"]
NormType = Literal["layernorm", "rmsnorm"]
Positional = Literal["sinusoidal", "learned", "rope"]
Activation = Literal["relu", "gelu", "gelu_tanh", "swish", "swiglu"]


@dataclass(kw_only=True)
class ModelConfig:
    """The model's shape and variant switches. The defaults are the paper's base Transformer.

    arch: "seq2seq" (encoder-decoder, translation) or "lm" (decoder-only, GPT-style; uses n_decoder_layers).
    vocab_size: one vocabulary shared by source and target (paper §5.1: shared BPE of ~37,000 tokens).
    norm: "post" = LayerNorm(x + Sublayer(x)) as in the paper §3.1; "pre" = x + Sublayer(LayerNorm(x)).
    norm_type: "layernorm" (the paper) or "rmsnorm".
    positional: "sinusoidal" (paper §3.5), "learned" (Table 3 row E; GPT-2), "rope" (rotary, on q and k).
    activation: FFN non-linearity; "relu" is the paper's max(0, xW1 + b1)W2 + b2 (§3.3).
    tie_embeddings: source embedding = target embedding = pre-softmax weight (paper §3.4).
    scale_embeddings: multiply embeddings by sqrt(d_model) (paper §3.4; GPT-2 does not).
    """

    arch: Arch = "seq2seq"
    vocab_size: int
    d_model: int = 512
    n_heads: int = 8
    n_encoder_layers: int = 6
    n_decoder_layers: int = 6
    d_ff: int = 2048
    dropout: float = 0.1  # §5.4: residual dropout on sublayer outputs and on embeddings + positions
    attention_dropout: float = 0.0  # dropout on attention weights; the paper names none
    max_len: int = 1024
    norm: Norm = "post"
    norm_type: NormType = "layernorm"
    norm_eps: float = 1e-5
    positional: Positional = "sinusoidal"
    rope_base: float = 10000.0
    activation: Activation = "relu"
    tie_embeddings: bool = True
    scale_embeddings: bool = True
    bias: bool = True  # biases in attention projections and the FFN
    output_bias: bool = False  # a bias on the pre-softmax Linear (Marian's final_logits_bias)
    pad_id: int = 0

    def __post_init__(self) -> None:
        _check_types(self)
        positive = ["vocab_size", "d_model", "n_heads", "d_ff", "max_len"]
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 1")
        for name in ["n_encoder_layers", "n_decoder_layers"]:
            if getattr(self, name) < 0:
                raise ValueError(f"ModelConfig.{name}={getattr(self, name)} must be >= 0")
        if self.n_decoder_layers < 1:
            raise ValueError(f"ModelConfig.n_decoder_layers={self.n_decoder_layers} must be >= 1")
        if self.arch == "seq2seq" and self.n_encoder_layers < 1:
            raise ValueError(f"ModelConfig.n_encoder_layers={self.n_encoder_layers} must be >= 1 for arch='seq2seq'")
        if self.d_model % self.n_heads:
            raise ValueError(
                f"ModelConfig.d_model={self.d_model} is not divisible by n_heads={self.n_heads}: "
                f"each head gets d_model / n_heads dimensions (paper §3.2.2)"
            )
        if self.positional == "rope" and self.head_dim % 2:
            raise ValueError(
                f"ModelConfig.positional='rope' needs an even head dimension, "
                f"got d_model / n_heads = {self.d_model} / {self.n_heads} = {self.head_dim}"
            )
        if self.positional == "sinusoidal" and self.d_model % 2:
            raise ValueError(f"ModelConfig.positional='sinusoidal' needs an even d_model, got {self.d_model}")
        for name in ["dropout", "attention_dropout"]:
            p = getattr(self, name)
            if not 0.0 <= p < 1.0:
                raise ValueError(f"ModelConfig.{name}={p} must be in [0, 1)")
        if not (self.norm_eps > 0 and math.isfinite(self.norm_eps)):
            raise ValueError(f"ModelConfig.norm_eps={self.norm_eps} must be a positive number")
        if not (self.rope_base > 1 and math.isfinite(self.rope_base)):
            raise ValueError(f"ModelConfig.rope_base={self.rope_base} must be a number > 1")
        if not 0 <= self.pad_id < self.vocab_size:
            raise ValueError(f"ModelConfig.pad_id={self.pad_id} must be in [0, vocab_size={self.vocab_size})")

    @property
    def head_dim(self) -> int:
        """d_k = d_v = d_model / n_heads (paper §3.2.2)."""
        return self.d_model // self.n_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ModelConfig:
        """Build from plain data (YAML/JSON); an unknown key is an error naming the closest valid key."""
        return from_dict(cls, data)


def from_dict(cls: type, data: dict[str, Any], section: str | None = None):
    """Build the dataclass `cls` from `data`, refusing unknown keys with a 'did you mean' hint."""
    if not isinstance(data, dict):
        raise ValueError(f"{section or cls.__name__}: expected a mapping of keys to values, got {type(data).__name__}")
    names = [f.name for f in dataclasses.fields(cls)]
    for key in data:
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else f"; valid keys: {', '.join(names)}"
            raise ValueError(f"unknown key '{section + '.' if section else ''}{key}' in {cls.__name__}{hint}")
    return cls(**data)


def _check_types(config: Any) -> None:
    """Check each field against its annotation: Literal choices, bool/int/float. Names field, value, allowed."""
    hints = get_type_hints(type(config))
    name_of = type(config).__name__
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        kind = hints[field.name]
        choices = get_args(kind) if getattr(kind, "__origin__", None) is Literal else None
        if choices is not None:
            if value not in choices:
                allowed = " | ".join(repr(c) for c in choices)
                raise ValueError(f"{name_of}.{field.name}={value!r} is not one of {allowed}")
        elif kind is bool:
            if not isinstance(value, bool):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be true or false")
        elif kind is int:
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be an integer")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"{name_of}.{field.name}={value!r} must be a number")
            setattr(config, field.name, float(value))


# ---------------------------------------------------------------------------------------------------------------
# Training run configuration: one typed section per concern, read from YAML and overridden by dotted CLI flags
# (`--train.max_steps 200`). Key names here are a promise to users' scripts (issue 3): keep them.

Task = Literal["", "dates", "copy", "reverse"]
TokenizerKind = Literal["bpe", "char"]
Schedule = Literal["noam", "inverse_sqrt", "cosine"]
Precision = Literal["fp32", "bf16", "fp16"]
MatmulPrecision = Literal["fp32", "bf16", "tf32"]
BestMetric = Literal["loss", "bleu"]


@dataclass(kw_only=True)
class DataConfig:
    """Where the text is. Parallel: train_src + train_tgt (line-aligned) or train_tsv (source<TAB>target[...]).
    Language model: train_text. Or a built-in generated `task` ("dates", "copy", "reverse") that needs no files.
    """

    task: Task = ""
    train_src: str = ""
    train_tgt: str = ""
    train_tsv: str = ""
    train_text: str = ""
    valid_src: str = ""
    valid_tgt: str = ""
    valid_tsv: str = ""
    valid_text: str = ""
    task_train_size: int = 50_000  # examples generated for a built-in task
    task_valid_size: int = 500
    max_tokens: int = 256  # skip an example longer than this many tokens (specials included) on either side
    max_ratio: float = 0.0  # skip a pair whose longer side has more than max_ratio x the shorter's tokens; 0 = off
    valid_fraction: float = 0.0  # language model without valid_text: hold out this final part of train_text

    def __post_init__(self) -> None:
        _check_types(self)
        if self.max_tokens < 3:
            raise ValueError(f"DataConfig.max_tokens={self.max_tokens} must be >= 3 (BOS, one token, EOS)")
        if not 0 <= self.valid_fraction < 1:
            raise ValueError(f"DataConfig.valid_fraction={self.valid_fraction} must be in [0, 1)")
        if self.max_ratio < 0:
            raise ValueError(f"DataConfig.max_ratio={self.max_ratio} must be >= 0 (0 turns the filter off)")
        for name in ("task_train_size", "task_valid_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"DataConfig.{name}={getattr(self, name)} must be >= 1")
        sources = {
            "task": bool(self.task),
            "train_src/train_tgt": bool(self.train_src or self.train_tgt),
            "train_tsv": bool(self.train_tsv),
            "train_text": bool(self.train_text),
        }
        given = [k for k, v in sources.items() if v]
        if len(given) > 1:
            raise ValueError(f"data: give one source of training data, got {' and '.join(given)}")
        if bool(self.train_src) != bool(self.train_tgt):
            raise ValueError("data.train_src and data.train_tgt go together: give both files, or data.train_tsv")
        if bool(self.valid_src) != bool(self.valid_tgt):
            raise ValueError("data.valid_src and data.valid_tgt go together: give both files, or data.valid_tsv")

    @property
    def has_training_data(self) -> bool:
        return bool(self.task or self.train_src or self.train_tsv or self.train_text)


@dataclass(kw_only=True)
class TokenizerConfig:
    """The subword tokenizer. `path` empty: `aiayn train` trains one on the training text and saves it in the run."""

    path: str = ""
    kind: TokenizerKind = "bpe"
    vocab_size: int = 8000
    min_frequency: int = 2

    def __post_init__(self) -> None:
        _check_types(self)
        if self.vocab_size < 1:
            raise ValueError(f"TokenizerConfig.vocab_size={self.vocab_size} must be >= 1")


@dataclass(kw_only=True)
class OptimConfig:
    """The paper's recipe (§5.3-5.4) as defaults: Adam(0.9, 0.98, 1e-9), warmup 4000, label smoothing 0.1.

    schedule "noam": lr = lr_scale * d_model^-0.5 * min(step^-0.5, step * warmup^-1.5) (the paper's formula);
    "inverse_sqrt": lr rises linearly to `lr` over `warmup` steps, then lr * sqrt(warmup / step);
    "cosine": linear warmup to `lr`, then cosine decay to `min_lr` at train.max_steps.
    """

    schedule: Schedule = "noam"
    lr: float = 5e-4  # peak learning rate for inverse_sqrt / cosine (noam derives its own from d_model)
    lr_scale: float = 1.0  # multiplies the noam formula
    min_lr: float = 0.0
    warmup: int = 4000
    beta1: float = 0.9
    beta2: float = 0.98
    eps: float = 1e-9
    weight_decay: float = 0.0
    clip_norm: float = 0.0  # clip the global gradient norm to this; 0 = off (the paper does not clip)
    label_smoothing: float = 0.1

    def __post_init__(self) -> None:
        _check_types(self)
        if self.warmup < 1:
            raise ValueError(f"OptimConfig.warmup={self.warmup} must be >= 1")
        for name in ("lr", "lr_scale"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"OptimConfig.{name}={getattr(self, name)} must be a positive number")
        for name in ("min_lr", "weight_decay", "clip_norm"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ValueError(f"OptimConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ValueError(f"OptimConfig.{name}={getattr(self, name)} must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ValueError(f"OptimConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: how long, how big a batch, when to log, evaluate and save, and where."""

    out_dir: str = "runs/run"
    max_steps: int = 100_000
    max_tokens: int = 4096  # tokens (padding included) per batch per process (seq2seq)
    batch_size: int = 32  # sequences per batch (language models)
    block_size: int = 256  # tokens per sequence (language models)
    grad_accum: int = 1
    save_every: int = 1000
    eval_every: int = 1000
    log_every: int = 100
    keep_last: int = 5  # checkpoints kept besides the best (the paper averages the last 5)
    patience: int = 0  # stop after this many evaluations without a better best_metric; 0 = never
    best_metric: BestMetric = "loss"
    eval_bleu_sentences: int = 500  # validation sentences translated (greedy) for BLEU/chrF; 0 = loss only
    seed: int = 1
    precision: Precision = "fp32"
    # fp32 matrix multiplications computed with bf16 inputs and fp32 accumulation (CPU: oneDNN on AMX /
    # AVX512-BF16) or TF32 (CUDA); weights, activations and everything else stay fp32. "fp32" = exact.
    matmul_precision: MatmulPrecision = "fp32"
    compile: bool = False
    device: str = "auto"  # "auto" = cuda when available, else cpu
    threads: int = 0  # torch CPU threads; 0 = torch's default
    max_minutes: float = 0.0  # stop (evaluate, save) after this much wall time; 0 = no limit

    def __post_init__(self) -> None:
        _check_types(self)
        for name in ("max_steps", "max_tokens", "batch_size", "block_size", "grad_accum", "save_every",
                     "eval_every", "log_every", "keep_last"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise ValueError(f"TrainConfig.max_minutes={self.max_minutes} must be >= 0 (0 = no limit)")
        for name in ("patience", "eval_bleu_sentences", "threads"):
            if getattr(self, name) < 0:
                raise ValueError(f"TrainConfig.{name}={getattr(self, name)} must be >= 0")
        if not self.out_dir:
            raise ValueError("TrainConfig.out_dir must name a folder for the run")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "tokenizer": TokenizerConfig, "optim": OptimConfig,
            "train": TrainConfig}  # fmt: skip


@dataclass(kw_only=True)
class RunConfig:
    """Everything a training run needs; `config.yaml` in a run folder is this, resolved."""

    model: ModelConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    optim: OptimConfig
    train: TrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], vocab_size: int | None = None) -> RunConfig:
        """Build from nested plain data. `model.vocab_size` may be left out when the tokenizer decides it."""
        if not isinstance(data, dict):
            raise ValueError(f"a config is a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                close = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; sections: {', '.join(SECTIONS)}"
                raise ValueError(f"unknown config section '{key}'{hint}")
        model = dict(data.get("model") or {})
        if vocab_size is not None:
            model["vocab_size"] = vocab_size
        model.setdefault("vocab_size", 1)  # placeholder until the tokenizer is known; see Trainer
        parts = {name: from_dict(SECTIONS[name], data.get(name) or {}, name) for name in SECTIONS if name != "model"}
        return cls(model=from_dict(ModelConfig, model, "model"), **parts)


_FLOAT = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")


def parse_overrides(args: list[str]) -> dict[str, dict[str, Any]]:
    """`--section.key value` (or `--section.key=value`) pairs into nested data. Values are read as YAML scalars,
    so `100` is an int, `1e-3` a float, `true` a bool, and anything else a string."""
    import yaml

    out: dict[str, dict[str, Any]] = {}
    i = 0
    while i < len(args):
        arg = args[i]
        if not arg.startswith("--") or "." not in arg:
            raise ValueError(f"unexpected argument '{arg}': overrides look like --section.key value")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ValueError(f"argument '{arg}' needs a value")
            key, text = arg[2:], args[i + 1]
            i += 2
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"; did you mean '--{close[0]}.{name}'?" if close else f"; sections: {', '.join(SECTIONS)}"
            raise ValueError(f"unknown config section in '{arg}'{hint}")
        value = yaml.safe_load(text) if text.strip() else ""
        if value is None:
            value = ""
        if isinstance(value, (dict, list)):  # a YAML flow value where a scalar is wanted: keep the text
            value = text
        # "1e-3" is a string to YAML 1.1; numbers written that way are what users type for learning rates.
        if isinstance(value, str) and _FLOAT.fullmatch(value.strip()):
            value = float(value)
        out.setdefault(section, {})[name] = value
    return out


def merge(base: dict[str, Any], overrides: dict[str, dict[str, Any]]) -> dict[str, Any]:
    merged = {name: dict(base.get(name) or {}) for name in base}
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    return merged


def load_yaml(path: str) -> dict[str, Any]:
    """Read a YAML config file; errors name the file (and YAML's line)."""
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise ValueError(f"config file {path}: no such file") from None
    except IsADirectoryError:
        raise ValueError(f"config file {path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ValueError(f"config file {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return data or {}
