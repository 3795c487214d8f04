"""How to decode: one frozen, self-validating `DecodeConfig`, with the paper's defaults written once.

The CLI (`--beam`, `--alpha`, ...), `aiayn.load(...).translate(beam=...)`, the server's JSON (`"beam"`) and
`explain` all build one of these; the public spelling `beam` maps onto `beam_size`. `beam_size == 1` is greedy
search, decided here (`DecodeConfig.greedy`) and nowhere else.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from aiayn.errors import RequestError

# Paper §6.1: "maximum output length ... input length + 50".
EXTRA_LENGTH = 50


@dataclass(frozen=True, kw_only=True)
class DecodeConfig:
    """beam_size: hypotheses kept per source (paper §6.1: 4; 1 = greedy). alpha: length penalty
    ((5 + length) / 6) ** alpha (paper: 0.6). max_len: new tokens per sentence (None: source length + 50).
    n_best: hypotheses returned per source (<= beam_size). temperature, top_k, top_p: sampling from a language
    model (temperature 0 = greedy; top_k 0 and top_p 1 = no filter). batch_tokens: source tokens x beam per
    batch. seed: the sampling seed (None: a fresh one each call)."""

    beam_size: int = 4
    alpha: float = 0.6
    max_len: int | None = None
    n_best: int = 1
    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    batch_tokens: int = 4096
    seed: int | None = None

    def __post_init__(self) -> None:
        def integer(name: str, low: int, what: str) -> None:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise RequestError(f"{name}={value!r} must be an integer >= {low}{what}")

        def number(name: str, ok, what: str) -> None:
            value = getattr(self, name)
            real = not isinstance(value, bool) and isinstance(value, int | float) and math.isfinite(value)
            if not (real and ok(value)):
                raise RequestError(f"{name}={value!r} must be {what}")

        integer("beam_size", 1, " (1 = greedy)")
        number("alpha", lambda a: a >= 0, "a finite number >= 0")
        if self.max_len is not None:
            integer("max_len", 1, f" (or None: source length + {EXTRA_LENGTH})")
        if isinstance(self.n_best, bool) or not isinstance(self.n_best, int) or not 1 <= self.n_best <= self.beam_size:
            raise RequestError(f"n_best={self.n_best!r} must be an integer between 1 and beam_size ({self.beam_size})")
        number("temperature", lambda t: t >= 0, "a finite number >= 0 (0 = greedy)")
        integer("top_k", 0, " (0 = no top-k filter)")
        number("top_p", lambda p: 0 < p <= 1, "in (0, 1] (1 = no nucleus filter)")
        integer("batch_tokens", 1, "")
        if self.seed is not None:
            integer("seed", 0, " (or None: a fresh seed)")

    @property
    def greedy(self) -> bool:
        """Beam search with one beam is greedy search: the one place this is decided."""
        return self.beam_size == 1

    def replace(self, **changes: Any) -> DecodeConfig:
        """A copy with `changes` (public spellings accepted: `beam` for beam_size), validated again."""
        return dataclasses.replace(self, **_spelling(changes))

    @classmethod
    def of(cls, **options: Any) -> DecodeConfig:
        """From keyword options as users write them (`beam=4` or `beam_size=4`); None values keep the default."""
        return cls(**{k: v for k, v in _spelling(options).items() if v is not None or k in ("max_len", "seed")})


def _spelling(options: dict[str, Any]) -> dict[str, Any]:
    out = dict(options)
    if "beam" in out:
        if "beam_size" in out:
            raise RequestError("give beam or beam_size, not both: they are one setting")
        out["beam_size"] = out.pop("beam")
    return out


DEFAULTS = DecodeConfig()
