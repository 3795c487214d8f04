"""torchrun set-up: one process per device, PyTorch DDP (gloo on CPU, NCCL on GPU). Only rank 0 writes or prints.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process and nothing is initialised.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from aiayn.devices import parse_device
from aiayn.errors import ConfigError

# Precision policy lives in aiayn.train.precision; these names are kept here for users' scripts.
from aiayn.train.precision import bf16_matmul_precision_works, cpu_has_bf16, matmul_precision


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1


def setup(device: str = "auto") -> Dist:
    """Read torchrun's environment, pick the device and, for more than one process, join the process group."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("train.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        if local_rank >= torch.cuda.device_count():
            raise ConfigError(
                f"process LOCAL_RANK={local_rank} needs CUDA device {local_rank}, but this machine has "
                f"{torch.cuda.device_count()}: start torchrun with --nproc_per_node <= {torch.cuda.device_count()}, "
                "or use --train.device cpu"
            )
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = parse_device(device, "train.device")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group(backend="nccl" if chosen.type == "cuda" else "gloo")
    return Dist(rank=rank, world_size=world_size, local_rank=local_rank, device=chosen)


def all_sum(values: list[float], d: Dist) -> list[float]:
    """Sum a few numbers over all processes (fp64), in one collective."""
    if not d.active:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=d.device)
    dist.all_reduce(t)
    return t.tolist()


def all_ok(ok: bool, d: Dist) -> bool:
    """True when every process says ok: lets rank 0's data errors stop the others instead of hanging them."""
    return all_sum([0.0 if ok else 1.0], d)[0] == 0.0


def barrier(d: Dist) -> None:
    if d.active:
        dist.barrier()


def teardown(d: Dist) -> None:
    if d.active and dist.is_initialized():
        dist.destroy_process_group()

__all__ = ["Dist", "all_ok", "all_sum", "barrier", "bf16_matmul_precision_works", "cpu_has_bf16",
           "matmul_precision", "setup", "teardown"]  # fmt: skip
