"""A training run's configuration: one typed section per concern (model, data, tokenizer, optim, train), read
from YAML and overridden by dotted CLI flags (`--train.max_steps 200`). Key names here are a promise to users'
scripts: keep them; a renamed key keeps its old spelling working, with a one-line note naming the new one.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import re
import warnings
from dataclasses import dataclass
from typing import Any, Literal

from aiayn.config.fields import check_types, from_dict
from aiayn.config.model import ModelConfig, SpecialIds, TaskKind
from aiayn.errors import ConfigError

# (`--train.max_steps 200`). Key names here are a promise to users' scripts (issue 3): keep them.

Task = Literal["", "dates", "copy", "reverse"]
TokenizerKind = Literal["bpe", "char", "sentencepiece"]
Schedule = Literal["noam", "inverse_sqrt", "cosine"]
Precision = Literal["fp32", "bf16", "fp16", "auto"]
MatmulPrecision = Literal["fp32", "bf16", "tf32"]
Gemm = Literal["auto", "mkl", "onednn"]
BestMetric = Literal["loss", "bleu"]
Parallel = Literal["ddp", "fsdp"]


def moses_langs(value: str, key: str = "data.moses") -> tuple[str, str]:
    """'en-de' -> ('en', 'de'): the source and target languages whose Moses rules apply (DataConfig.moses)."""
    parts = value.split("-")
    if len(parts) != 2 or not all(p.isascii() and p.isalpha() and p.islower() for p in parts):
        raise ConfigError(f"{key}={value!r}: expected SRC-TGT language codes, e.g. en-de (empty: no Moses)")
    return parts[0], parts[1]


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
    # Skip an example longer than this many tokens (specials included) on either side. Spelt data.max_tokens
    # before; that key still works (RENAMED) and train.max_tokens stays the per-batch budget, as in fairseq.
    max_example_tokens: int = 256
    max_ratio: float = 0.0  # skip a pair whose longer side has more than max_ratio x the shorter's tokens; 0 = off
    valid_fraction: float = 0.0  # language model without valid_text: hold out this final part of train_text
    # Preprocessing of older Multi30k / fairseq setups (translation pairs; aiayn.tokenizer_moses): "SRC-TGT" (e.g.
    # "en-de") Moses-tokenizes sources and targets by their languages' rules (sacremoses), and lowercase lowercases
    # both; the model folder records them, so translation preprocesses its input alike and detokenizes its output.
    moses: str = ""
    lowercase: bool = False

    def __post_init__(self) -> None:
        check_types(self)
        if (self.moses or self.lowercase) and (self.train_text or self.valid_text):
            raise ConfigError("data.moses and data.lowercase apply to translation pairs, not to data.train_text")
        if self.moses:
            moses_langs(self.moses)
        if self.max_example_tokens < 3:
            raise ConfigError(
                f"DataConfig.max_example_tokens={self.max_example_tokens} must be >= 3 (BOS, one token, EOS)"
            )
        if not 0 <= self.valid_fraction < 1:
            raise ConfigError(f"DataConfig.valid_fraction={self.valid_fraction} must be in [0, 1)")
        if self.max_ratio < 0:
            raise ConfigError(f"DataConfig.max_ratio={self.max_ratio} must be >= 0 (0 turns the filter off)")
        for name in ("task_train_size", "task_valid_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"DataConfig.{name}={getattr(self, name)} must be >= 1")
        sources = {
            "task": bool(self.task),
            "train_src/train_tgt": bool(self.train_src or self.train_tgt),
            "train_tsv": bool(self.train_tsv),
            "train_text": bool(self.train_text),
        }
        given = [k for k, v in sources.items() if v]
        if len(given) > 1:
            raise ConfigError(f"data: give one source of training data, got {' and '.join(given)}")
        if bool(self.train_src) != bool(self.train_tgt):
            raise ConfigError("data.train_src and data.train_tgt go together: give both files, or data.train_tsv")
        if bool(self.valid_src) != bool(self.valid_tgt):
            raise ConfigError("data.valid_src and data.valid_tgt go together: give both files, or data.valid_tsv")

    @property
    def task_kind(self) -> TaskKind:
        """Plain text (train_text) trains a language model; everything else is pairs of texts."""
        return TaskKind.TEXT if self.train_text else TaskKind.PAIRS

    @property
    def has_training_data(self) -> bool:
        return bool(self.task or self.train_src or self.train_tsv or self.train_text)


@dataclass(kw_only=True)
class TokenizerConfig:
    """The subword tokenizer. `path` empty: `aiayn train` trains one on the training text and saves it in the run.

    kind: "bpe" or "char" (aiayn's own, one tokenizer.json), or "sentencepiece" (a unigram SentencePiece model in
    Marian's layout: source.spm, target.spm and vocab.json; `path` is then a folder with those files)."""

    path: str = ""
    kind: TokenizerKind = "bpe"
    vocab_size: int = 8000
    min_frequency: int = 2
    # Bounds on tokenizer training, whatever the input: BPE's time grows with the square of the longest word, so a
    # word (a run without whitespace) longer than max_word_chars is cut into chunks of that size first; and at most
    # max_train_chars characters, sampled evenly from the text (SentencePiece's input_sentence_size), are read.
    max_word_chars: int = 100
    max_train_chars: int = 100_000_000

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("vocab_size", "max_word_chars", "max_train_chars"):
            if getattr(self, name) < 1:
                raise ConfigError(f"TokenizerConfig.{name}={getattr(self, name)} must be >= 1")


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
        check_types(self)
        if self.warmup < 1:
            raise ConfigError(f"OptimConfig.warmup={self.warmup} must be >= 1")
        for name in ("lr", "lr_scale"):
            if not (getattr(self, name) > 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"OptimConfig.{name}={getattr(self, name)} must be a positive number")
        for name in ("min_lr", "weight_decay", "clip_norm"):
            if not (getattr(self, name) >= 0 and math.isfinite(getattr(self, name))):
                raise ConfigError(f"OptimConfig.{name}={getattr(self, name)} must be >= 0")
        for name in ("beta1", "beta2"):
            if not 0 <= getattr(self, name) < 1:
                raise ConfigError(f"OptimConfig.{name}={getattr(self, name)} must be in [0, 1)")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"OptimConfig.label_smoothing={self.label_smoothing} must be in [0, 1)")


@dataclass(kw_only=True)
class TrainConfig:
    """The loop: how long, how big a batch, when to log, evaluate and save, and where."""

    out_dir: str = "runs/run"
    max_steps: int = 100_000  # 0: set from a measured step time to fill train.max_minutes (aiayn.train.budget)
    max_tokens: int = 4096  # tokens (padding included) per batch per process (seq2seq)
    batch_size: int = 32  # sequences per batch (language models)
    block_size: int = 256  # tokens per sequence (language models)
    grad_accum: int = 1
    save_every: int = 1000
    eval_every: int = 1000
    log_every: int = 100
    keep_last: int = 5  # checkpoints kept besides the best (the paper averages the last 5)
    # Also a checkpoint at the end of every epoch (pairs), as fairseq saves: with save_every past max_steps and
    # keep_last N, the last N epochs' checkpoints stay for `aiayn average --run DIR --last N`.
    save_every_epoch: bool = False
    patience: int = 0  # stop after this many evaluations without a better best_metric; 0 = never
    best_metric: BestMetric = "loss"
    eval_bleu_sentences: int = 500  # validation sentences translated (greedy) for BLEU/chrF; 0 = loss only
    seed: int = 1
    # "auto": the precision this machine trains fastest in (aiayn.machine.recommended_precision), chosen at the
    # start and written into the run's config.yaml, so that a resume (on any machine) keeps it.
    precision: Precision = "fp32"
    # fp32 matrix multiplications computed with bf16 inputs and fp32 accumulation (CPU: oneDNN on AMX /
    # AVX512-BF16) or TF32 (CUDA); weights, activations and everything else stay fp32. "fp32" = exact.
    matmul_precision: MatmulPrecision = "fp32"
    # The CPU library for fp32 linear layers: "mkl" (PyTorch's F.linear), "onednn" (aiayn.train.linear_path), or
    # "auto" (oneDNN on AMD CPUs, MKL elsewhere); the choice is written into config.yaml, and a resume keeps it.
    gemm: Gemm = "auto"
    # Static shapes for pairs: 0 pads each batch to its own longest example; N > 0 pads every batch to a width w that
    # is a multiple of N (both sides) and to max_tokens // w rows, so a run meets about (longest / N) shapes:
    # compiled code for fixed shapes (train.compile) and CUDA graphs (train.cuda_graphs) then fit every batch.
    length_bucket: int = 0
    compile: bool = False
    # CUDA: replay each step's compiled kernels as CUDA graphs (torch.compile mode "reduce-overhead"), for small
    # models whose steps are bound by kernel launches; needs train.compile and, for pairs, train.length_bucket.
    cuda_graphs: bool = False
    device: str = "auto"  # "auto" = cuda when available, else cpu
    # Several processes (torchrun): "ddp" keeps a whole copy of the model, its gradients and Adam's state on every
    # process; "fsdp" (FSDP2) shards all three over the processes, one unit per layer (aiayn.train.parallel).
    parallel: Parallel = "ddp"
    activation_checkpointing: bool = False  # recompute each layer's activations in the backward: less memory
    threads: int = 0  # torch CPU threads; 0 = torch's default
    max_minutes: float = 0.0  # stop (evaluate, save) after this much wall time; 0 = no limit
    # Steps whose loss or gradient norm is not finite skip their update (counted in the log); more than this many in
    # a row stop the run with exit code 3.
    max_bad_steps: int = 20

    def __post_init__(self) -> None:
        check_types(self)
        for name in ("max_tokens", "batch_size", "block_size", "grad_accum", "save_every",
                     "eval_every", "log_every", "keep_last"):  # fmt: skip
            if getattr(self, name) < 1:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)} must be >= 1")
        if not (self.max_minutes >= 0 and math.isfinite(self.max_minutes)):
            raise ConfigError(f"TrainConfig.max_minutes={self.max_minutes} must be >= 0 (0 = no limit)")
        if self.cuda_graphs and not self.compile:
            raise ConfigError("TrainConfig.cuda_graphs=true replays compiled code: it needs train.compile=true")
        for name in ("max_steps", "patience", "eval_bleu_sentences", "threads", "max_bad_steps", "length_bucket"):
            if getattr(self, name) < 0:
                raise ConfigError(f"TrainConfig.{name}={getattr(self, name)} must be >= 0")
        if not self.out_dir:
            raise ConfigError("TrainConfig.out_dir must name a folder for the run")


SECTIONS = {"model": ModelConfig, "data": DataConfig, "tokenizer": TokenizerConfig, "optim": OptimConfig,
            "train": TrainConfig}  # fmt: skip


AUTO_STEPS_MIN_WARMUP = 100  # train.max_steps 0 plans by step 90 at the latest (aiayn.train.budget)


@dataclass(kw_only=True)
class RunConfig:
    """Everything a training run needs; `config.yaml` in a run folder is this, resolved."""

    model: ModelConfig
    data: DataConfig
    tokenizer: TokenizerConfig
    optim: OptimConfig
    train: TrainConfig

    def __post_init__(self) -> None:
        train, optim = self.train, self.optim
        if train.max_steps == 0 and not train.max_minutes:
            raise ConfigError("train.max_steps=0 sets the steps from train.max_minutes: give train.max_minutes too")
        if train.max_steps == 0 and optim.schedule == "cosine" and optim.warmup < AUTO_STEPS_MIN_WARMUP:
            raise ConfigError(
                f"train.max_steps=0 with optim.schedule cosine needs optim.warmup >= {AUTO_STEPS_MIN_WARMUP} (it is "
                f"{optim.warmup}): the steps are set after the first ones, and no earlier learning rate may depend on "
                f"them"
            )

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(getattr(self, name)) for name in SECTIONS}

    @classmethod
    def from_dict(cls, data: dict[str, Any], vocab_size: int | None = None) -> RunConfig:
        """Build from nested plain data. `model.vocab_size` may be left out when the tokenizer decides it."""
        if not isinstance(data, dict):
            raise ConfigError(f"a config is a mapping of sections ({', '.join(SECTIONS)}), got {type(data).__name__}")
        for key in data:
            if key not in SECTIONS:
                close = difflib.get_close_matches(str(key), list(SECTIONS), n=1)
                hint = f"; did you mean '{close[0]}'?" if close else f"; sections: {', '.join(SECTIONS)}"
                raise ConfigError(f"unknown config section '{key}'{hint}")
        data = renamed(data)
        model = dict(data.get("model") or {})
        if vocab_size is not None:
            model["vocab_size"] = vocab_size
        # A placeholder until the tokenizer is known (see Trainer): just large enough for the special ids.
        ids = SpecialIds()
        largest = max(model.get(f"{k}_id", getattr(ids, k)) for k in ("pad", "bos", "eos", "unk"))
        model.setdefault("vocab_size", largest + 1 if isinstance(largest, int) else 1)
        parts = {name: from_dict(SECTIONS[name], data.get(name) or {}, name) for name in SECTIONS if name != "model"}
        return cls(model=note_ignored(from_dict(ModelConfig, model, "model")), **parts)


class ConfigNote(UserWarning):
    """A note about a config that still works but should change (an old key's new name); the CLI prints it as
    one line `note: ...`."""


def note_ignored(model: ModelConfig) -> ModelConfig:
    """One ConfigNote naming the model keys set away from their defaults that `model`'s family does not read
    (ModelConfig.ignored_keys: e.g. n_heads for arch 'rnn'); returns `model`."""
    defaults = {f.name: f.default for f in dataclasses.fields(ModelConfig)}
    changed = [key for key in model.ignored_keys if getattr(model, key) != defaults[key]]
    if changed:
        keys = ", ".join(f"model.{key}" for key in changed)
        warnings.warn(f"{keys}: not used by model.arch={model.arch!r}, ignored", ConfigNote, stacklevel=3)
    return model


# Old key -> new key, per section.
RENAMED = {"data": {"max_tokens": "max_example_tokens"}}


def renamed(data: dict[str, Any]) -> dict[str, Any]:
    """`data` with old keys under their new names (a copy; the user's dict is not changed), one ConfigNote each."""
    out = dict(data)
    for section, keys in RENAMED.items():
        values = out.get(section)
        if not isinstance(values, dict):
            continue
        values = dict(values)
        for old, new in keys.items():
            if old in values:
                if new in values:
                    raise ConfigError(f"{section}.{old} and {section}.{new} are one setting: give only {section}.{new}")
                values[new] = values.pop(old)
                warnings.warn(f"{section}.{old} is now called {section}.{new}; the old name still works", ConfigNote,
                              stacklevel=3)  # fmt: skip
        out[section] = values
    return out


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
            raise ConfigError(f"unexpected argument '{arg}': overrides look like --section.key value")
        if "=" in arg:
            key, text = arg[2:].split("=", 1)
            i += 1
        else:
            if i + 1 >= len(args):
                raise ConfigError(f"argument '{arg}' needs a value")
            key, text = arg[2:], args[i + 1]
            i += 2
        section, _, name = key.partition(".")
        if section not in SECTIONS:
            close = difflib.get_close_matches(section, list(SECTIONS), n=1)
            hint = f"; did you mean '--{close[0]}.{name}'?" if close else f"; sections: {', '.join(SECTIONS)}"
            raise ConfigError(f"unknown config section in '{arg}'{hint}")
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
        raise ConfigError(f"config file {path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {path}: is a directory, expected a YAML file") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"config file {path}{where}: not valid YAML ({getattr(e, 'problem', e)})") from None
    return data or {}
