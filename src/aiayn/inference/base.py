"""What every loaded model has: the model, its tokenizer, its run config, its folder, and one clear line for a
request meant for the other kind of model."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiayn.config import DECODE_DEFAULTS, DecodeConfig, TaskKind
from aiayn.devices import parse_device
from aiayn.errors import RequestError

D = DECODE_DEFAULTS  # the paper's decoding defaults (beam 4, alpha 0.6), written once in aiayn.config.decode


@dataclass(frozen=True)
class Translation:
    """One n-best entry: the text, its score (log-probability / length penalty) and whether it ended with EOS
    (False: it was cut at the length limit)."""

    text: str
    score: float
    finished: bool


@dataclass(frozen=True)
class Attention:
    """The attention weights of one input, recorded from the model's own forward pass (`record_attention`).

    source: labels of the encoder's input tokens (pairs; [] for a language model). target: labels of the
    decoder's input positions (pairs: <bos> and the output tokens; text: the text's tokens). output: the token
    each decoder position produced (pairs: the output tokens, then <eos> when the output ended; text: the most
    probable next token). text: the translation ("" for a language model). weights: module name -> (H, rows,
    cols) float32 array, e.g. "encoder.layers.0.self_attn" (S x S), "decoder.layers.0.self_attn" (T x T),
    "decoder.layers.0.cross_attn" (T x S).
    """

    source: list[str]
    target: list[str]
    output: list[str]
    text: str
    weights: dict[str, np.ndarray]


def pick_device(device: str | torch.device | None) -> torch.device:
    """The device to load onto, checked against this machine (aiayn.devices.parse_device)."""
    return parse_device(device, "--device")


def recorded_weights(recorder) -> dict[str, np.ndarray]:
    """The recorder's single (1, H, rows, cols) entry per module -> (H, rows, cols) float32 arrays."""
    return {name: entries[-1][0].float().cpu().numpy() for name, entries in recorder.weights.items()}


class Pretrained:
    """A trained model with its tokenizer. `aiayn.load` returns a `Translator` (pairs: translation) or a
    `Generator` (text: a language model); a method of the other kind says so in one line.

    Attributes: `model` (in eval mode), `tokenizer`, `config` (the run's resolved config as a dict: model, data,
    tokenizer, optim, train), `folder` (the model folder it came from), `task` (TaskKind).
    """

    task: TaskKind

    def __init__(self, model: torch.nn.Module, tokenizer, config: dict[str, Any], folder: Path | None) -> None:
        self.model, self.tokenizer, self.config, self.folder = model, tokenizer, config, folder
        self.quantized: str | None = None  # the int8 implementation aiayn.load(quantize="int8") used
        self.gemm: str | None = None  # the CPU GEMM path aiayn.load chose: "mkl" or "onednn" (aiayn.machine)

    @property
    def is_lm(self) -> bool:
        return self.task is TaskKind.TEXT

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        c = self.model.config
        folder = str(self.folder)
        return f"{type(self).__name__}({c.arch}, d_model={c.d_model}, vocab={c.vocab_size}, folder={folder!r})"

    def _other_kind(self, what: str):
        kind = "a language model" if self.task is TaskKind.PAIRS else "a translation (seq2seq) model"
        raise RequestError(f"{self.folder}: cannot {what}: this is not {kind} (model.arch={self.model.config.arch})")

    # What only the other kind of model does: one line of error (Translator and Generator override their own).
    def translate(self, *args, **kwargs) -> list[str]:
        self._other_kind("translate")

    def translate_n_best(self, *args, **kwargs) -> list[list[Translation]]:
        self._other_kind("translate")

    def walk_inputs(self, *args, **kwargs):
        self._other_kind("translate")

    def generate(self, *args, **kwargs) -> str:
        self._other_kind("generate")

    def generate_batch(self, *args, **kwargs) -> list[str]:
        self._other_kind("generate")

    def lm_inputs(self, *args, **kwargs) -> list[int]:
        self._other_kind("read a text")


def decode_config(decode: DecodeConfig | None, **options: Any) -> DecodeConfig:
    """`decode` when given (a whole DecodeConfig), else one built from the keyword options users pass (`beam=`,
    `alpha=`, ...): validated once, here."""
    return decode if decode is not None else DecodeConfig.of(**options)
