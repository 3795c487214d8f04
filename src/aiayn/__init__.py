"""aiayn: the Transformer of "Attention Is All You Need", built from its parts.

import aiayn
model = aiayn.load("runs/multi30k-tiny")
print(model.translate(["A man rides a bike."]))
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiayn.config import DecodeConfig, ModelConfig
from aiayn.errors import UserError

if TYPE_CHECKING:
    from aiayn.inference import Pretrained

__version__ = "0.1.0"
__all__ = ["DecodeConfig", "ModelConfig", "UserError", "__version__", "load"]


def load(path: str, device: str | None = "auto", compile: bool = False, quantize: str | None = None) -> Pretrained:
    """Load a trained model folder (a run folder: its best checkpoint; or a checkpoint folder).

    Returns a `Translator` (`.translate(texts, beam=4, alpha=0.6, ...)`, `.translate_n_best`) or a `Generator`
    (`.generate(prompt, ...)`), both with `.score(...)`, `.perplexity(...)`, `.attention(...)` and `.model` /
    `.tokenizer` / `.config`. Imported lazily, so that
    `import aiayn` (and `aiayn --help`) does not load torch. compile=True compiles the decoding step
    (`aiayn.inference.compile_decoding`): 1.2-1.35x faster decoding one sentence at a time on a CPU, after a
    one-time compilation at the first batch. quantize="int8": int8 linear layers for CPU decoding
    (`aiayn.inference.quantize`).
    """
    from aiayn.inference import load as _load

    return _load(path, device=device, compile=compile, quantize=quantize)
