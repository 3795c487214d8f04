"""`aiayn train --init-from DIR`: a new run that starts from a model folder's weights (fine-tuning).

The architecture is the folder's (its config.yaml's model section, special ids and vocabulary included); the
training settings are the run's config, and so are dropout and attention dropout (regularisation is a training
choice). The tokenizer is the folder's too, whatever its kind: aiayn's own (tokenizer.json, given to the data
pipeline as `tokenizer.path` unless the config names one) or an imported model's (a Marian's SentencePiece
files, a GPT-2's tokenizer.json), which the run folder and its checkpoints then keep as they came.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiayn.config import ModelConfig, RunConfig
from aiayn.modelfile import read_config, read_tokenizer, resolve, tokenizer_kind
from aiayn.tokenizer_pretrained import FILES as PRETRAINED_FILES
from aiayn.train import checkpoint as ckpt

_TRAINING_KEYS = ("dropout", "attention_dropout")  # model keys the run's config sets when fine-tuning


@dataclass
class StartingPoint:
    folder: Path  # the model folder the weights come from
    model: ModelConfig  # its architecture, with the run's dropout
    kind: str  # its tokenizer's kind (modelfile.TOKENIZER_FILES)
    tokenizer: Any | None  # an imported model's tokenizer; None for aiayn's own (then tokenizer.path is set)
    ignored: list[str]  # the run config's model keys that differ from the folder's, which the folder overrides


def starting_point(init_from: str, cfg: RunConfig) -> StartingPoint:
    """Read the folder `init_from` (a model folder or a run folder's best) for a fine-tuning run of `cfg`; sets
    cfg.tokenizer.path to its tokenizer.json when the tokenizer is aiayn's own and the config names none."""
    folder = resolve(init_from)
    kind = tokenizer_kind(ckpt.verify(folder))
    _, arch = read_config(folder)
    model = ModelConfig.from_dict({**arch.to_dict(), **{k: getattr(cfg.model, k) for k in _TRAINING_KEYS}})
    mine, theirs = cfg.model.to_dict(), model.to_dict()
    ignored = [f"model.{k}: {mine[k]!r} -> {theirs[k]!r}" for k in sorted(theirs)
               if k in mine and mine[k] != theirs[k] and k != "vocab_size" and not k.endswith("_id")]  # fmt: skip
    tokenizer = None
    if kind in PRETRAINED_FILES:
        tokenizer = read_tokenizer(folder, arch, kind)
    elif not cfg.tokenizer.path:  # fine-tuning keeps the token ids the weights were trained on
        cfg.tokenizer.path = str(folder / "tokenizer.json")
    return StartingPoint(folder, model, kind, tokenizer, ignored)
