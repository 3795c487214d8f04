"""Checkpoints as the trainer writes and reads them, for one process, DDP and FSDP.

One process and DDP: rank 0 writes `checkpoints/step-NNNNNN/` (aiayn.train.checkpoint: a model folder plus
trainer_state.pt with the optimizer), the others wait. FSDP: the same folder, an ordinary model folder that every
command reads (its weights gathered from the shards into rank 0's CPU memory: the weights only, a quarter of the
training state with Adam), plus `sharded/`, a distributed checkpoint (torch.distributed.checkpoint) of the weights
and the optimizer state, of which every rank writes its own shard. A resume reads `sharded/`, on the same or on
another number of processes (DCP reshards on load); `aiayn checkpoint consolidate` turns `sharded/` alone into a
model folder. The folder appears whole or not at all: the shards are written into a temporary folder beside it,
which rank 0 moves in (listed in the manifest) before the one rename that publishes the checkpoint.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aiayn.files import temp_beside
from aiayn.modelfile import load_weights
from aiayn.train import checkpoint as ckpt
from aiayn.train import distributed
from aiayn.train.distributed import Dist
from aiayn.train.parallel import whole_weights
from aiayn.train.reproducible import rng_state, set_rng_state
from aiayn.train.run_folder import RunFolder
from aiayn.train.state import TrainState

__all__ = ["SHARDED", "Saver", "load_shards", "sharded_state"]

SHARDED = "sharded"  # the distributed checkpoint inside an FSDP run's checkpoint folder


class Saver:
    """The run's checkpoints: `save(step, state)` and `load(path)`, called on every process."""

    def __init__(self, folder: RunFolder, model: torch.nn.Module, optimizer, scaler, dist: Dist, sharded: bool,
                 log: Callable[[str], None]) -> None:  # fmt: skip
        self.folder, self.model, self.optimizer, self.scaler = folder, model, optimizer, scaler
        self.dist, self.sharded, self.log = dist, sharded, log

    def save(self, step: int, state: TrainState, keep_last: int, **files: Any) -> None:
        """Write checkpoint `step`; `files`: the config and the tokenizer (aiayn.train.checkpoint.save_checkpoint).
        Weights that are not finite are never written, so `best` and `last` never point at them."""
        weights = self._whole_weights()  # rank 0's; collective with FSDP
        finite = not self.dist.is_main or all(bool(torch.isfinite(t).all()) for t in weights.values())
        if not distributed.all_ok(finite, self.dist):
            self.log(f"not saving step {step}: the weights are not finite (the last checkpoint, if any, is kept)")
            return
        trainer_state: dict[str, Any] = {
            "scaler": self.scaler.state_dict() if self.scaler is not None else {},
            "rng": rng_state(),
            "trainer": state.to_dict(),
            "world_size": self.dist.world_size,
        }
        shards = self._write_shards(step) if self.sharded else None
        if not self.sharded:
            trainer_state["optimizer"] = self.optimizer.state_dict()
        if self.dist.is_main:
            model = self.model if shards is None else _Tensors(weights)
            self.folder.save(step, state.best_step, keep_last, model=model, trainer_state=trainer_state,
                             extra_dirs={SHARDED: shards} if shards is not None else None, **files)  # fmt: skip
        distributed.barrier(self.dist)

    def _whole_weights(self) -> dict[str, torch.Tensor]:
        """The model's weights, whole, on rank 0 (empty elsewhere). FSDP gathers them from the shards onto the CPU."""
        if not self.sharded:
            return self.model.state_dict() if self.dist.is_main else {}
        return whole_weights(self.model)

    def _write_shards(self, step: int) -> Path:
        """Every rank writes its shard of the weights and the optimizer state into one temporary folder."""
        import torch.distributed.checkpoint as dcp

        temp = temp_beside(self.folder.checkpoints / f"step-{step:06d}") if self.dist.is_main else None
        temp = Path(_from_rank0(str(temp), self.dist))
        dcp.save(sharded_state(self.model, self.optimizer), checkpoint_id=str(temp))
        distributed.barrier(self.dist)
        return temp

    def load(self, path: Path) -> TrainState:
        """Resume from checkpoint `path`: weights, optimizer, GradScaler and RNGs; returns the trainer state. A
        sharded checkpoint (an FSDP run's) loads on any number of processes, sharded or not: DCP reshards."""
        if not (path / SHARDED).is_dir():
            if self.sharded:
                raise ckpt.CheckpointError(f"{path}: has no {SHARDED}/ (it was written without train.parallel "
                                           "'fsdp'): resume it with train.parallel 'ddp'")  # fmt: skip
            load_weights(self.model, path)
            return TrainState.from_dict(ckpt.restore_trainer_state(path, self.optimizer, self.scaler, set_rng_state))
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state = sharded_state(self.model, self.optimizer)
        load_shards(state, path / SHARDED, self.dist.active)
        set_state_dict(self.model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
        saved = ckpt.load_trainer_state(path)
        if self.scaler is not None and saved.get("scaler"):
            self.scaler.load_state_dict(saved["scaler"])
        set_rng_state(saved["rng"])
        return TrainState.from_dict(saved["trainer"])


def sharded_state(model: torch.nn.Module, optimizer=None) -> dict[str, Any]:
    """{"model": ..., "optim": ...} as torch.distributed.checkpoint saves and loads them (this process's shards)."""
    from torch.distributed.checkpoint.state_dict import get_model_state_dict, get_state_dict

    if optimizer is None:
        return {"model": get_model_state_dict(model)}
    model_state, optim_state = get_state_dict(model, optimizer)
    return {"model": model_state, "optim": optim_state}


def load_shards(state: dict[str, Any], folder: Path, distributed_run: bool) -> None:
    """Fill `state` (sharded_state's) from the distributed checkpoint `folder`, in place; in one process without a
    process group too (DCP then reads every shard itself)."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():  # one process on purpose: DCP's note that it assumes so is noise here
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(folder), no_dist=not distributed_run)


class _Tensors(torch.nn.Module):
    """Gathered weights standing in for the model, for the folder writer, which reads only state_dict()."""

    def __init__(self, tensors: dict[str, torch.Tensor]) -> None:
        super().__init__()
        self.tensors = tensors

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # noqa: ARG002 - nn.Module's signature
        return self.tensors


def _from_rank0(text: str, dist: Dist) -> str:
    """Rank 0's `text`, on every rank."""
    if not dist.active:
        return text
    box = [text]
    torch.distributed.broadcast_object_list(box, src=0)
    return box[0]
