"""The trainer's progress, typed: what a checkpoint's trainer_state.pt holds besides the optimizer and RNGs.

Stored as plain data (ints, floats, None) so that torch.load(weights_only=True) reads it. Checkpoints written
before this class stored `interval` as a list [loss, nll, tokens]; `from_dict` still reads them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Interval:
    """Sums since the last log line: label-smoothed loss, NLL (nats) and target tokens."""

    loss: float = 0.0
    nll: float = 0.0
    tokens: int = 0
    skipped: int = 0  # steps whose loss or gradient norm was not finite: no update, not in the sums

    def add(self, loss: float, nll: float, tokens: int) -> None:
        self.loss, self.nll, self.tokens = self.loss + loss, self.nll + nll, self.tokens + tokens


@dataclass
class TrainState:
    """step: optimizer steps done. batches_done: global batches consumed (each step takes world_size x
    grad_accum). tokens: target tokens trained on. best / best_step: the best validation value of
    train.best_metric and its step; bad_evals: evaluations since it improved. seconds: wall time of the run so
    far, resumed runs included. bad_steps / bad_in_a_row: steps skipped for a non-finite loss or gradient norm."""

    step: int = 0
    batches_done: int = 0
    tokens: int = 0
    interval: Interval = field(default_factory=Interval)
    best: float | None = None
    best_step: int | None = None
    bad_evals: int = 0
    seconds: float = 0.0
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient norm, in all
    bad_in_a_row: int = 0  # ... since the last good step (train.max_bad_steps stops the run)

    def record(self, step: int, batches_done: int, tokens: int, loss: float, nll: float, skipped: bool) -> None:
        """Step `step` is done (its batches consumed, its tokens counted); its sums go into the log interval
        unless it was skipped for a non-finite loss or gradient norm."""
        self.step, self.batches_done, self.tokens = step, batches_done, self.tokens + tokens
        if skipped:
            self.bad_steps, self.bad_in_a_row = self.bad_steps + 1, self.bad_in_a_row + 1
            self.interval.skipped += 1
        else:
            self.bad_in_a_row = 0
            self.interval.add(loss, nll, tokens)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainState:
        data = dict(data)
        interval = data.pop("interval", None) or {}
        if isinstance(interval, list | tuple):  # checkpoints written before TrainState
            interval = dict(zip(("loss", "nll", "tokens"), interval, strict=True))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(interval=Interval(**interval), **{k: v for k, v in data.items() if k in known})

    def improved(self, value: float, higher_is_better: bool) -> bool:
        """Whether `value` beats the best so far (the first finite one always does; a non-finite one never)."""
        if not math.isfinite(value):
            return False
        if self.best is None:
            return True
        return value > self.best if higher_is_better else value < self.best


class Clock:
    """Wall time of the run (seconds before this process + since its start) and of the current log interval."""

    def __init__(self, seconds_before: float) -> None:
        self.before = seconds_before
        self.start = self.interval_start = time.perf_counter()

    def seconds(self) -> float:
        return self.before + time.perf_counter() - self.start

    def interval(self) -> float:
        return time.perf_counter() - self.interval_start

    def start_interval(self) -> None:
        self.interval_start = time.perf_counter()
