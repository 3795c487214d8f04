"""Checkpoint averaging (paper §6.1: the base models average the last 5 checkpoints, written 10 minutes apart)."""

from __future__ import annotations

from pathlib import Path

import torch
import yaml

from aiayn.config import ModelConfig
from aiayn.errors import ModelFolderError
from aiayn.model import build_model
from aiayn.modelfile import TOKENIZER_FILES, tokenizer_kind
from aiayn.train import checkpoint as ckpt


def last_checkpoints(run: str | Path, n: int) -> list[str]:
    """The last `n` checkpoint folders (by step) of the run folder `run`: what `aiayn average --run --last` averages
    (the last epochs' with train.save_every_epoch)."""
    found = ckpt.list_checkpoints(Path(run) / "checkpoints")
    if n < 1:
        raise ModelFolderError(f"--last {n}: expected at least 1 checkpoint")
    if len(found) < n:
        raise ModelFolderError(f"--run {run}: {len(found)} checkpoint(s) under checkpoints/, fewer than --last {n}")
    return [str(path) for _, path in found[-n:]]


def average_checkpoints(folders: list[str], out: str) -> Path:
    """Average the weights of model folders that share one config and tokenizer; write a model folder."""
    if not folders:
        raise ModelFolderError("--models: give at least one checkpoint folder")
    paths = [ckpt.resolve_model_dir(f) for f in folders]
    kinds = [tokenizer_kind(ckpt.verify(path)) for path in paths]
    first, kind = paths[0], kinds[0]
    config = yaml.safe_load((first / "config.yaml").read_text(encoding="utf-8"))
    tokenizer = {name: (first / name).read_bytes() for name in TOKENIZER_FILES[kind]}  # its files, of its kind
    for path in paths[1:]:
        other = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        if other.get("model") != config.get("model"):
            raise ModelFolderError(
                f"{path}: its model config differs from {first}'s; only one run's checkpoints average"
            )
        if kinds[paths.index(path)] != kind or any((path / n).read_bytes() != b for n, b in tokenizer.items()):
            raise ModelFolderError(
                f"{path}: its tokenizer differs from {first}'s; only one run's checkpoints average"
            )
    model = build_model(ModelConfig.from_dict(config["model"]))
    total = {name: torch.zeros_like(t, dtype=torch.float64) for name, t in model.state_dict().items()}
    for path in paths:
        ckpt.load_weights(model, path)
        for name, tensor in model.state_dict().items():
            total[name] += tensor.double()
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            tensor.copy_((total[name] / len(paths)).to(tensor.dtype))
    return ckpt.save_model_folder(out, model, config, tokenizer, kind)
