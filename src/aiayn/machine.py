"""This machine as aiayn sees it (`aiayn info`): the CPU's model, vendor and the flags that decide speed (AMX,
AVX512-BF16), the cores this process may use, the torch build, which library runs fp32 matrix products fastest
here (the GEMM path, measured), and the precision training does best in.

Why measure the GEMM path instead of assuming it: PyTorch hands fp32 `F.linear` to MKL, whose fast kernels are
tuned for Intel; on an AMD EPYC (AVX-512, no AMX) oneDNN's linear with prepacked weights ran the decoder's and
trainer's products 1.2-1.5x faster than MKL (benchmarks/RESULTS.md, issue 21), while on other CPUs MKL may win. So
aiayn times both once per process, on products of the sizes it runs, and takes the faster.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from aiayn.errors import ConfigError

__all__ = ["CpuInfo", "GemmChoice", "cpu_info", "format_report", "gemm_choice", "linear_onednn", "machine_report",
           "onednn_linear_available", "recommended_precision", "replace_modules"]  # fmt: skip

# The flags that decide which kernels pay, by their /proc/cpuinfo names.
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")
VENDORS = {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}


@dataclass(frozen=True)
class CpuInfo:
    model: str
    vendor: str  # Intel, AMD, Apple, ARM, ... or "unknown"
    flags: dict[str, bool]  # SPEED_FLAGS -> present
    cores: int  # the cores this process may run on

    @property
    def bf16_hardware(self) -> str:
        """'AMX' or 'AVX512-BF16' where the CPU has bf16 instructions, else 'none' (oneDNN may still emulate)."""
        if self.flags.get("amx_bf16"):
            return "AMX"
        return "AVX512-BF16" if self.flags.get("avx512_bf16") else "none"


def _cpuinfo_fields(text: str) -> dict[str, str]:
    """The first processor's 'key: value' lines of /proc/cpuinfo."""
    fields: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if fields:
                break
            continue
        key, _, value = line.partition(":")
        fields.setdefault(key.strip(), value.strip())
    return fields


def parse_cpuinfo(text: str, cores: int) -> CpuInfo:
    """A CpuInfo from the text of /proc/cpuinfo (x86 and ARM spellings)."""
    fields = _cpuinfo_fields(text)
    flags = set((fields.get("flags") or fields.get("Features") or "").split())
    vendor_id = fields.get("vendor_id", "")
    vendor = VENDORS.get(vendor_id, vendor_id or ("ARM" if "Features" in fields else "unknown"))
    model = fields.get("model name") or fields.get("Model") or fields.get("Hardware") or platform.processor()
    return CpuInfo(model=model or "unknown", vendor=vendor, flags={f: f in flags for f in SPEED_FLAGS}, cores=cores)


@functools.cache
def cpu_info() -> CpuInfo:
    """This CPU (Linux: /proc/cpuinfo; elsewhere what `platform` knows)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    path = Path("/proc/cpuinfo")
    if path.is_file():
        return parse_cpuinfo(path.read_text(encoding="utf-8", errors="replace"), cores)
    vendor = "Apple" if platform.system() == "Darwin" and platform.machine() == "arm64" else "unknown"
    return CpuInfo(platform.processor() or platform.machine() or "unknown", vendor, dict.fromkeys(SPEED_FLAGS, False),
                   cores)  # fmt: skip


def linear_onednn(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """F.linear(x, weight, bias) by oneDNN; `weight` plain (out, in) or packed by `_reorder_linear_weight`."""
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "none", [], "")


def replace_modules(model: torch.nn.Module, match, make) -> int:
    """Replace every submodule `m` of `model` with match(m) true by make(m), in place; returns how many."""
    count = 0
    for parent in list(model.modules()):
        for name, child in list(parent.named_children()):
            if match(child):
                setattr(parent, name, make(child))
                count += 1
    return count


def onednn_linear_available() -> bool:
    """Whether this torch has oneDNN's linear on prepacked weights (`torch.ops.mkldnn._linear_pointwise`, the
    kernel inductor's freezing uses); a PyTorch internal, so asked, not assumed."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        w = torch.ops.mkldnn._reorder_linear_weight(torch.ones(4, 8), 2)
        y = linear_onednn(torch.ones(2, 8), w, None)
    except (AttributeError, RuntimeError, NotImplementedError):
        return False
    return bool(torch.equal(y, torch.full((2, 4), 8.0)))


@dataclass(frozen=True)
class GemmChoice:
    path: str  # "mkl" (PyTorch's F.linear) or "onednn" (prepacked oneDNN linear)
    gflops: dict[str, float]  # path -> GFLOP/s measured on PROBE_SHAPES
    reason: str

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# (rows, in, out) of the products timed: a decoding batch through an FFN layer, and a training batch's projection.
PROBE_SHAPES = ((64, 512, 2048), (1024, 256, 1024))
ONEDNN_MARGIN = 1.1  # oneDNN is taken only when this much faster: a tie keeps PyTorch's default


def _gflops(run, flops: float, repeats: int = 8) -> float:
    run()
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        for _ in range(repeats):
            run()
        best = min(best, (time.perf_counter() - start) / repeats)
    return flops / best / 1e9


def _time_paths() -> dict[str, float]:
    totals = {"mkl": 0.0, "onednn": 0.0}
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode():
        for rows, d_in, d_out in PROBE_SHAPES:
            x, w = torch.randn(rows, d_in, generator=gen), torch.randn(d_out, d_in, generator=gen)
            packed = torch.ops.mkldnn._reorder_linear_weight(w, rows)
            flops = 2.0 * rows * d_in * d_out
            runs = {
                "mkl": functools.partial(F.linear, x, w),
                "onednn": functools.partial(linear_onednn, x, packed, None),
            }
            for path, run in runs.items():
                totals[path] += _gflops(run, flops) / len(PROBE_SHAPES)
    return {k: round(v, 1) for k, v in totals.items()}


@functools.cache
def gemm_choice() -> GemmChoice:
    """The faster CPU path for fp32 linear layers on this machine, measured once per process (~0.2 s).
    AIAYN_GEMM=mkl|onednn overrides the measurement (for comparisons and tests)."""
    forced = os.environ.get("AIAYN_GEMM", "").strip().lower()
    if forced not in ("", "mkl", "onednn"):
        raise ConfigError(f"AIAYN_GEMM={forced!r}: expected mkl or onednn (or unset: measure)")
    if not onednn_linear_available():
        return GemmChoice("mkl", {}, f"oneDNN's prepacked linear is not in torch {torch.__version__}")
    if forced in ("mkl", "onednn"):
        return GemmChoice(forced, {}, "set by AIAYN_GEMM")
    g = _time_paths()
    if g["onednn"] >= ONEDNN_MARGIN * g["mkl"]:
        return GemmChoice("onednn", g, f"oneDNN {g['onednn'] / g['mkl']:.2f}x MKL here")
    return GemmChoice("mkl", g, f"MKL within {ONEDNN_MARGIN}x of oneDNN here")


def recommended_precision(device: torch.device | str = "cpu") -> str:
    """The training precision the machine does well: bf16 on CPUs with bf16 instructions (AMX, AVX512-BF16) and
    on GPUs that support it; fp32 elsewhere (an emulated bf16 is slower than fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device.type == "cpu":
        return "bf16" if cpu_info().bf16_hardware != "none" else "fp32"
    return "fp32"


def _torch_build() -> str:
    if torch.version.cuda:
        return f"CUDA {torch.version.cuda}"
    return "ROCm " + torch.version.hip if getattr(torch.version, "hip", None) else "CPU"


def machine_report() -> dict:
    """Everything `aiayn info` prints, as one JSON-ready dict."""
    cpu = cpu_info()
    gemm = gemm_choice()
    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            gpus.append({"name": torch.cuda.get_device_name(i), "bf16": torch.cuda.is_bf16_supported()})
    return {
        "cpu": {"model": cpu.model, "vendor": cpu.vendor, "flags": cpu.flags, "cores": cpu.cores,
                "bf16_hardware": cpu.bf16_hardware},
        "torch": {"version": torch.__version__, "build": _torch_build(), "threads": torch.get_num_threads(),
                  "cpu_capability": torch.backends.cpu.get_cpu_capability(), "mkl": torch.backends.mkl.is_available(),
                  "onednn": torch.backends.mkldnn.is_available()},
        "gemm": gemm.to_dict(),
        "gpus": gpus,
        "recommended_precision": recommended_precision("cuda" if gpus else "cpu"),
    }  # fmt: skip


def _yes(flag: bool) -> str:
    return "yes" if flag else "no"


def format_report(report: dict) -> str:
    """machine_report() as the lines `aiayn info` prints."""
    cpu, tor, gemm = report["cpu"], report["torch"], report["gemm"]
    flags = ", ".join(name for name, present in cpu["flags"].items() if present) or "none of " + ", ".join(SPEED_FLAGS)
    measured = ", ".join(f"{path} {rate:.0f}" for path, rate in gemm["gflops"].items())
    lines = [
        f"cpu:        {cpu['model']} ({cpu['vendor']}), {cpu['cores']} cores for this process",
        f"flags:      {flags}",
        f"bf16:       {cpu['bf16_hardware']} on the CPU"
        + "".join(f"; {g['name']}: {'yes' if g['bf16'] else 'no'}" for g in report["gpus"]),
        f"torch:      {tor['version']} ({tor['build']} build), {tor['threads']} threads, "
        f"kernels {tor['cpu_capability']}, MKL {_yes(tor['mkl'])}, oneDNN {_yes(tor['onednn'])}",
        f"gemm:       {gemm['path']} for fp32 linear layers ({gemm['reason']}"
        + (f"; GFLOP/s {measured}" if measured else "")
        + ")",
        f"gpus:       {', '.join(g['name'] for g in report['gpus']) or 'none'}",
        f"precision:  {report['recommended_precision']} (what train.precision=auto picks here)",
    ]
    return "\n".join(lines)
