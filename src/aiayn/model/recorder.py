"""The opt-in attention recorder: `with record_attention(model) as rec: model(src, tgt)` keeps every attention
weight (and, with detail=True, every intermediate step) of the model's own forward pass.

While a recorder is active, attention runs its readable path (`scaled_dot_product_attention`), so the weights
exist; outside it nothing is stored and the fast path runs. Which modules are recorded the model family says
through its `sublayers()` hook (kind "attention"); a bare module is scanned for attention modules instead.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

import torch
from torch import nn


def attention_modules(model: nn.Module) -> dict[int, str]:
    """id(module) -> name of each attention module to record: from the family's `sublayers()` hook, else every
    submodule that declares `records_attention`."""
    if hasattr(model, "sublayers"):
        return {id(module): name for name, kind, module in model.sublayers() if kind == "attention"}
    return {id(m): name for name, m in model.named_modules() if getattr(m, "records_attention", False)}


_RECORDER: ContextVar[AttentionRecorder | None] = ContextVar("aiayn_attention_recorder", default=None)


class AttentionRecorder:
    """Collects the attention weights of every layer and head while active.

    Use `record_attention(model)`. While it is active, attention runs the readable path (so the weights exist)
    and each call appends its weights (B, H, T, S) to `weights[name]`, where name is the module's name in the
    model, e.g. "encoder.layers.0.self_attn" or "decoder.layers.5.cross_attn". Step-by-step decoding appends
    one entry per step. Outside the context the model runs its fast path and nothing is stored.
    """

    def __init__(self, model: nn.Module, detail: bool = False) -> None:
        self._names = attention_modules(model)
        self.weights: dict[str, list[torch.Tensor]] = {}
        self.detail = detail  # also keep every step: q, k, v, mask, scores, scaled, masked, context, concat, output
        self.details: dict[str, list[dict[str, torch.Tensor | None]]] = {}

    def add(self, module: nn.Module, weights: torch.Tensor) -> None:
        name = self._names.get(id(module))
        if name is not None:
            self.weights.setdefault(name, []).append(weights.detach())

    def add_detail(self, module: nn.Module, steps: dict[str, torch.Tensor | None]) -> None:
        name = self._names.get(id(module))
        if name is not None:
            kept = {key: None if t is None else t.detach() for key, t in steps.items()}
            self.details.setdefault(name, []).append(kept)


def recording() -> bool:
    """Whether a `record_attention` context is active (compiled decoding steps then run eager)."""
    return _RECORDER.get() is not None


@contextlib.contextmanager
def record_attention(model: nn.Module, detail: bool = False) -> Iterator[AttentionRecorder]:
    """`with record_attention(model) as rec: model(src, tgt)` then read `rec.weights` (and, with detail=True,
    `rec.details`: every intermediate step of each attention call)."""
    recorder = AttentionRecorder(model, detail)
    token = _RECORDER.set(recorder)
    try:
        yield recorder
    finally:
        _RECORDER.reset(token)


def active_recorder() -> AttentionRecorder | None:
    """The recorder of the enclosing `record_attention` context, if any (never inside compiled code)."""
    # torch.compile cannot trace ContextVar.get (a graph break in every layer); compiled code never records.
    return None if torch.compiler.is_compiling() else _RECORDER.get()
