"""The process-wide settings of a training run, put back as they were when it returns: torchrun's process group,
torch's CPU threads, glibc's malloc behaviour (aiayn.train.memory) and the signal handlers."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator

import torch

from aiayn.config import TrainConfig
from aiayn.train import distributed, memory


@contextlib.contextmanager
def process_settings(train: TrainConfig, signals: list[int], on_signal: Callable) -> Iterator[distributed.Dist]:
    """Join torchrun's process group (if any), set threads and malloc for training, route `signals` to
    on_signal; yields the Dist (rank, world size, device)."""
    threads = torch.get_num_threads()
    handlers = {sig: signal.getsignal(sig) for sig in signals}
    kept_memory = False
    dist = distributed.setup(train.device)
    try:
        if train.threads:
            torch.set_num_threads(train.threads)
        if dist.device.type == "cpu":  # no page faults for the step's large tensors (aiayn.train.memory)
            kept_memory = memory.keep_freed_memory()
        for sig in signals:  # the trainer finishes the step, saves and exits
            signal.signal(sig, on_signal)
        yield dist
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        torch.set_num_threads(threads)
        if kept_memory:
            memory.restore_freed_memory()
        distributed.teardown(dist)
