"""torchrun set-up: one process per device, PyTorch DDP (gloo on CPU, NCCL on GPU). Only rank 0 writes or prints.

torchrun sets RANK, WORLD_SIZE and LOCAL_RANK; without them this is a single process and nothing is initialised.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

import torch
import torch.distributed as dist


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
            raise ValueError("train.device='cuda' but no CUDA device is available; use 'cpu' or 'auto'")
        if local_rank >= torch.cuda.device_count():
            raise ValueError(
                f"process LOCAL_RANK={local_rank} needs CUDA device {local_rank}, but this machine has "
                f"{torch.cuda.device_count()}: start torchrun with --nproc_per_node <= {torch.cuda.device_count()}, "
                "or use --train.device cpu"
            )
        torch.cuda.set_device(local_rank)
        chosen = torch.device("cuda", local_rank)
    else:
        chosen = torch.device(device)
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


def cpu_has_bf16() -> bool:
    """Whether this CPU multiplies bf16 matrices in hardware (AVX512-BF16 or AMX), which train.matmul_precision='bf16'
    needs."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


@contextlib.contextmanager
def matmul_precision(kind: str, device: torch.device) -> Iterator[None]:
    """Run the block with fp32 matrix multiplications at the given internal precision (see
    TrainConfig.matmul_precision), and restore the previous setting afterwards."""
    if kind == "fp32":
        yield
        return
    if kind == "bf16":
        if device.type != "cpu":
            raise ValueError("train.matmul_precision='bf16' is for CPUs; on CUDA use 'tf32'")
        if not cpu_has_bf16():
            raise ValueError("train.matmul_precision='bf16' needs a CPU with AVX512-BF16 or AMX; use 'fp32'")
        backend = torch.backends.mkldnn.matmul
    else:
        if device.type != "cuda":
            raise ValueError("train.matmul_precision='tf32' is for CUDA devices; on CPUs use 'bf16'")
        backend = torch.backends.cuda.matmul
    from aiayn.model.attention import bf16_matmuls

    previous = backend.fp32_precision
    backend.fp32_precision = kind
    bf16_matmuls()  # what code compiled inside the block will see
    try:
        yield
    finally:
        backend.fp32_precision = previous
        bf16_matmuls()
