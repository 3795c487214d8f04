"""Reproducibility: every random choice of a run is a function of (seed, index), and the process RNGs are
snapshot in each checkpoint (see aiayn.train.trainer's docstring)."""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def micro_seed(seed: int, k: int) -> int:
    """The dropout seed of global batch k: independent streams for every (seed, k)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0] >> 1)


def rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
