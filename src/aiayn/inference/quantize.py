"""int8 CPU decoding: `aiayn.load(DIR, quantize="int8")`, `--quantize int8` on translate, generate, evaluate and
serve.

Every Linear layer, the pre-softmax one included, becomes a dynamically quantized int8 layer: its weights are
stored in int8 (one scale per matrix) and each input is quantized on the fly, so the matrix products run in
int8. Embeddings, normalisation and attention stay in fp32. Two implementations, whichever the installed torch
has working:

- `torch.ao.quantization.quantize_dynamic` (fbgemm / oneDNN int8 kernels), while torch still carries it (it is
  deprecated in favour of torchao): int8 weights with one scale per matrix, inputs with one scale per call;
- torchao's `Int8DynamicActivationInt8WeightConfig` where torch.ao's leaves the layers as they are: one scale per
  output row and per input token, closer to fp32 (on Multi30k greedy outputs equal fp32's on 92% of sentences
  against torch.ao's 82%) but, run eagerly on the CPU, slower than fp32 (benchmarks/RESULTS.md).

The pre-softmax Linear shares its matrix with the embedding (§3.4): decoding gets an int8 copy of it, while the
fp32 matrix stays for the embedding and for scoring (perplexity and `score` use the fp32 output layer). The
measured cost in BLEU and the speed are in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import contextlib
import io
import logging
import warnings

import torch
from torch import nn

from aiayn.errors import ConfigError

MODES = ("int8",)


class QuantizedOutput(nn.Module):
    """The pre-softmax Linear for decoding: `linear`, an int8 copy of the output matrix. `weight` and `bias` are
    the fp32 ones (what `model.output_weight` gives: the embedding's matrix when tied) for scoring."""

    def __init__(self, output: nn.Module) -> None:
        super().__init__()
        self.weight, self.bias = output.weight, output.bias
        V, D = output.weight.shape
        self.linear = nn.Linear(D, V, bias=output.bias is not None)
        with torch.no_grad():
            self.linear.weight.copy_(output.weight)
            if output.bias is not None:
                self.linear.bias.copy_(output.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, T, D) -> logits (B, T, V)."""
        return self.linear(x)


def check_mode(quantize: str | None, device: torch.device, compile: bool) -> None:
    """One line for a quantization the model cannot run with: an unknown mode, a GPU, torch.compile."""
    if quantize is None:
        return
    if quantize not in MODES:
        raise ConfigError(f"quantize={quantize!r}: expected one of {', '.join(MODES)} (or none)")
    if device.type != "cpu":
        raise ConfigError(f"quantize={quantize!r} is for CPU decoding; the model is on {device} (use --device cpu)")
    if compile:
        raise ConfigError(f"quantize={quantize!r} and compile=True do not go together: the int8 layers run eagerly")


def _linear_count(model: nn.Module) -> int:
    return sum(type(m) is nn.Linear for m in model.modules())


@contextlib.contextmanager
def _quiet():
    """torch.ao's migration notice and torchao's notes on kernels it has not built for this machine are printed
    on every call; they are not the user's business."""
    loggers = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [log.level for log in loggers]
    for log in loggers:
        log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for log, level in zip(loggers, levels, strict=True):
            log.setLevel(level)


def _torch_ao(model: nn.Module) -> bool:
    """torch.ao's dynamic quantization, in place; False when it replaced nothing (a torch that only keeps the
    name)."""
    before = _linear_count(model)
    torch.ao.quantization.quantize_dynamic(model, {nn.Linear}, dtype=torch.qint8, inplace=True)
    return _linear_count(model) < before


def _torchao(model: nn.Module) -> bool:
    try:
        from torchao.quantization import Int8DynamicActivationInt8WeightConfig, quantize_
    except ImportError:
        raise ConfigError("quantize='int8' on this torch needs torchao: pip install 'aiayn[interop]'") from None
    quantize_(model, Int8DynamicActivationInt8WeightConfig())
    return all(type(m.weight) is not nn.Parameter for m in model.modules() if type(m) is nn.Linear)


def quantize_int8(model: nn.Module) -> str:
    """Make every Linear layer of `model` (on the CPU, in eval mode) int8, in place; returns the implementation
    used, "torch.ao" or "torchao". ConfigError when neither is available."""
    model.output = QuantizedOutput(model.output)
    with _quiet():
        if _torch_ao(model):
            return "torch.ao"
        if _torchao(model):
            return "torchao"
    raise ConfigError("quantize='int8': neither torch.ao nor torchao quantized this model's Linear layers")
