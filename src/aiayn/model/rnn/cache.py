"""The recurrent decoder's cache (aiayn.model.protocols.Cache): its state after the last step, and the keys that
attention projected once from memory.

Shapes: B batch, L layers, H hidden size, S source length, A attention size.
"""

from __future__ import annotations

import torch

from aiayn.model.rnn.encoder import RecurrentState


class RNNCache:
    """Everything a recurrent decoder needs to continue: the recurrent state per layer ((h,) or (h, c), each
    (L, B, H)), the projected keys (B, S, A) or None without attention, and the steps taken.

    Create it with `model.new_cache()` and pass it to `decode` with only the new tokens: the first call computes
    the bridge (the initial state) and the projected keys, later calls continue from the stored state.
    """

    def __init__(self) -> None:
        self.state: RecurrentState | None = None
        self.keys: torch.Tensor | None = None
        self.steps = 0

    @property
    def length(self) -> int:
        """Target positions already processed (the position of the next token)."""
        return self.steps

    def reorder(self, rows: torch.Tensor, cross: bool = True) -> None:
        """Keep batch rows `rows` (beam search). cross=False leaves the projected keys: they come from memory
        alone, and the beams of one source share its memory rows."""
        if self.state is not None:
            self.state = tuple(s.index_select(1, rows) for s in self.state)  # each (L, B', H)
        if cross and self.keys is not None:
            self.keys = self.keys.index_select(0, rows)  # (B', S, A)
