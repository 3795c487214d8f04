"""The device a user names (`--device`, `train.device`), checked against this machine before anything runs on it."""

from __future__ import annotations

import torch

from aiayn.errors import ConfigError


def parse_device(name: str | torch.device | None, what: str = "--device") -> torch.device:
    """'auto' (CUDA when there is one, else the CPU), 'cpu', 'cuda', 'cuda:N', 'mps' -> torch.device; one line of
    ConfigError naming `what` for a string that is no device or a device this machine does not have."""
    if name in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError, TypeError):
        raise ConfigError(f"{what} {name!r} is not a device: expected auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ConfigError(f"{what} {name!r}: this machine has no CUDA device; use cpu or auto")
        if device.index is not None and device.index >= count:
            raise ConfigError(f"{what} {name!r}: this machine has {count} CUDA device(s), cuda:0 .. cuda:{count - 1}")
    elif device.type == "mps":
        if not torch.backends.mps.is_available():
            raise ConfigError(f"{what} {name!r}: this machine has no Apple GPU (MPS); use cpu or auto")
    elif device.type != "cpu":
        raise ConfigError(f"{what} {name!r}: aiayn runs on cpu, cuda or mps")
    return device
