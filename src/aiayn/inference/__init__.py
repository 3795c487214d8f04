"""Use a trained model from Python: `aiayn.load(DIR)` returns a `Translator` (translation models) or a
`Generator` (language models), both `Pretrained`.

    import aiayn
    model = aiayn.load("runs/multi30k-tiny")          # a run folder (its best checkpoint) or a model folder
    model.translate(["A man rides a bike."], beam=4)  # -> ["Ein Mann fährt Fahrrad."]

Loading reads `config.yaml`, `tokenizer.json` and `model.safetensors` (never a pickle) through aiayn.modelfile,
after checking the folder's sha256 manifest. Inference decides what the model does not: the device, the weight
layout for CPU decoding and, with compile=True, a compiled decoding step (aiayn.inference.compiled), or with
quantize="int8" int8 linear layers (aiayn.inference.quantize).
"""

from __future__ import annotations

from pathlib import Path

import torch

from aiayn import modelfile
from aiayn.config import TaskKind
from aiayn.inference.base import Attention, Pretrained, Translation, pick_device
from aiayn.inference.compiled import compile_decoding, inference_layout
from aiayn.inference.generator import Generator
from aiayn.inference.onednn import pack_linears
from aiayn.inference.quantize import check_mode, quantize_int8
from aiayn.inference.translator import Translator
from aiayn.machine import gemm_choice
from aiayn.modelfile import CheckpointError

__all__ = [
    "Attention", "CheckpointError", "Generator", "Pretrained", "Translation", "Translator", "compile_decoding",
    "inference_layout", "load", "pick_device", "wrap",
]  # fmt: skip

KINDS: dict[TaskKind, type[Pretrained]] = {TaskKind.PAIRS: Translator, TaskKind.TEXT: Generator}


def wrap(model: torch.nn.Module, tokenizer, config: dict, folder: Path | None = None) -> Pretrained:
    """A Translator or Generator (by the model's task kind) around a model already in memory."""
    return KINDS[model.task](model, tokenizer, config, folder)


def load(
    path: str | Path, device: str | torch.device | None = "auto", compile: bool = False, quantize: str | None = None
) -> Pretrained:
    """A model folder -> Translator or Generator. CheckpointError (one line naming the folder and the problem)
    when the folder is missing or incomplete, its files do not match their manifest, the tokenizer does not
    belong to the weights, or the weights do not match the config.

    compile=True compiles the decoding step (`compile_decoding`): faster decoding after a one-time compilation
    at the first batch. quantize="int8": int8 Linear layers for CPU decoding (aiayn.inference.quantize); the
    implementation used is the result's `quantized` ("torch.ao" or "torchao"; None without quantize).
    On the CPU without quantize, the linear layers run on the GEMM path measured faster on this machine
    (aiayn.machine.gemm_choice: "mkl", PyTorch's default, or "onednn", aiayn.inference.onednn); the result's
    `gemm` says which (None on a GPU or with int8).
    """
    model, tokenizer, config, folder = modelfile.load(path)
    model = model.to(pick_device(device)).eval()
    check_mode(quantize, next(model.parameters()).device, compile)
    quantized, gemm = None, None
    if quantize == "int8":
        quantized = quantize_int8(model)  # its kernels pack the weights their own way: no inference_layout
    elif next(model.parameters()).device.type == "cpu":
        inference_layout(model)  # faster CPU decoding; same values
        gemm = gemm_choice()
        if gemm.path == "onednn":  # measured faster here (AMD EPYC, say): oneDNN on packed weights
            pack_linears(model)
    if compile:
        compile_decoding(model)
    pretrained = wrap(model, tokenizer, config, folder)
    pretrained.quantized = quantized
    pretrained.gemm = gemm.path if gemm is not None else None
    return pretrained
