"""Precision policy for a run, decided once by the trainer: autocast, the internal precision of fp32 matrix
products, and the kernels the model is handed (aiayn.model.kernels).

- train.precision: "fp32"; "bf16" (autocast to bfloat16: GPUs, and CPUs with AMX / AVX512-BF16); "fp16"
  (CUDA, with a GradScaler); "auto" (resolve_precision: the machine's best, recorded in the run's config.yaml).
- train.matmul_precision: "fp32" (exact); "bf16" (CPU: fp32 weights and activations, products with bf16 inputs
  and fp32 accumulation, where the CPU has AMX; refused elsewhere); "tf32" (CUDA).
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

from aiayn.errors import ConfigError
from aiayn.machine import cpu_info, recommended_precision
from aiayn.model.kernels import Kernels

__all__ = ["autocast", "bf16_matmul_precision_works", "cpu_has_bf16", "kernels_for", "matmul_precision",
           "recorded", "resolve_precision"]  # fmt: skip


def autocast(precision: str, device: torch.device):
    """The autocast context of train.precision on `device` (a no-op for fp32)."""
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def resolve_precision(asked: str, device: torch.device, recorded: str | None) -> tuple[str, str]:
    """train.precision as the run will use it, and why. "auto" becomes the precision recorded in the run folder
    being resumed (so a resume on another machine stays exact), else the one this machine does well
    (aiayn.machine.recommended_precision: bf16 with AMX / AVX512-BF16 or a bf16 GPU, else fp32).

    `recorded` is the train.precision of the checkpoint resumed from (`recorded`), or None. The reason is "" for a
    precision given as such, else " (auto: ...)", for the log."""
    if asked != "auto":
        return asked, ""
    if recorded in ("fp32", "bf16", "fp16"):
        return recorded, " (auto: the precision of the run being resumed)"
    chosen = recommended_precision(device)
    if device.type == "cpu":
        return chosen, f" (auto: bf16 hardware on this CPU: {cpu_info().bf16_hardware})"
    return chosen, f" (auto: {device.type} {'with' if chosen == 'bf16' else 'without'} bf16)"


def recorded(checkpoint: Path | None, key: str) -> str | None:
    """train.<key> in a checkpoint's config.yaml (None without a checkpoint or the key)."""
    if checkpoint is None:
        return None
    saved = yaml.safe_load((checkpoint / "config.yaml").read_text(encoding="utf-8")) or {}
    return (saved.get("train") or {}).get(key)


def kernels_for(device: torch.device, precision: str, matmul: str) -> Kernels:
    """The kernels a model trains fastest with on `device` under these settings, all equal in value to the plain
    ones (benchmarks/RESULTS.md has the measurements behind each):
    - CPU, half precision: attention over short sequences in fp32 (PyTorch's bf16 CPU backward is slow there);
    - CPU, matmul_precision bf16: attention as explicit products (the fused CPU kernel ignores the setting);
    - CPU: dropout from 16-bit random integers (PyTorch's CPU dropout draws one number per element).
    GPUs run PyTorch's own kernels."""
    if device.type != "cpu":
        return Kernels()
    return Kernels(short_fp32=precision in ("bf16", "fp16"), matmul_attention=matmul == "bf16", cpu_dropout=True)


def cpu_has_bf16() -> bool:
    """Whether PyTorch's oneDNN computes with bf16 tensors on this CPU. That is any CPU with AVX512-BW/VL/DQ (emulated
    where there is no AVX512-BF16) or AVX-NE-CONVERT, so it does not tell whether train.matmul_precision='bf16' takes
    effect here: bf16_matmul_precision_works() does."""
    return torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported()


# The probe's product, PROBE_SIZE x PROBE_SIZE x PROBE_SIZE: PyTorch hands oneDNN only fp32 products of more than
# 16 * 16 * 16 multiply-adds (aten/src/ATen/native/mkldnn/Matmul.cpp); smaller ones go to MKL's sgemm, which has
# no bf16 mode at all, so a 16x16 product would say "ignored" everywhere.
PROBE_SIZE = 32


@functools.cache
def bf16_matmul_precision_works() -> bool:
    """Whether torch.backends.mkldnn.matmul.fp32_precision = 'bf16' really gives this process's fp32 matrix products
    bf16 inputs (train.matmul_precision='bf16'). Asked once per process, with one tiny product.

    The setting is a permission, not an order: oneDNN's fp32 matmul takes bf16 inputs only where it has a kernel for
    that (oneDNN 3.x: AMX-BF16, as in `maybe_try_bf32` of src/cpu/x64/brgemm/brgemm_utils.cpp); elsewhere, AVX512-BF16
    CPUs included, it runs its fp32 kernel and the setting changes nothing. The probe's inputs are integers 1..4 plus
    2**-10, which bf16 rounds away: with bf16 inputs the product is exactly an integer matrix (fp32 sums of integers
    are exact in any order), without them every entry is larger.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    i = torch.arange(PROBE_SIZE)
    a = (1 + (i[:, None] + 2 * i) % 4).float() + 2**-10
    b = (1 + (3 * i[:, None] + i) % 4).float() + 2**-10
    rounded = a.bfloat16().double() @ b.bfloat16().double()  # the product of the bf16-rounded inputs, exactly
    exact = a.double() @ b.double()
    backend = torch.backends.mkldnn.matmul
    previous = backend.fp32_precision
    backend.fp32_precision = "bf16"
    try:
        with torch.no_grad():
            got = (a @ b).double()
    finally:
        backend.fp32_precision = previous
    return torch.equal(got, rounded) and not torch.equal(got, exact)


@contextlib.contextmanager
def matmul_precision(kind: str, device: torch.device) -> Iterator[None]:
    """Run the block with fp32 matrix multiplications at the given internal precision (see
    TrainConfig.matmul_precision), and restore the previous setting afterwards. A setting this PyTorch would ignore
    here is refused (ConfigError), never a silent no-op."""
    if kind == "fp32":
        yield
        return
    if kind == "bf16":
        if device.type != "cpu":
            raise ConfigError("train.matmul_precision='bf16' is for CPUs; on CUDA use 'tf32'")
        if not bf16_matmul_precision_works():
            raise ConfigError(
                f"train.matmul_precision='bf16' has no effect with torch {torch.__version__} on this CPU: its fp32 "
                "matrix products keep fp32 inputs (oneDNN gives them bf16 inputs only on CPUs with AMX); use 'fp32'"
            )
        backend = torch.backends.mkldnn.matmul
    else:
        if device.type != "cuda":
            raise ConfigError("train.matmul_precision='tf32' is for CUDA devices; on CPUs use 'bf16'")
        backend = torch.backends.cuda.matmul
    previous = backend.fp32_precision
    backend.fp32_precision = kind
    try:
        yield
    finally:
        backend.fp32_precision = previous
