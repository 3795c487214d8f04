"""`aiayn export --to onnx`: an aiayn Transformer as ONNX graphs that onnxruntime runs, with a decoding step that
takes the past keys and values as inputs and returns them grown by one (aiayn.interop.onnx runs them).

- an encoder-decoder: `encoder.onnx` (src -> memory and, for every decoder layer, the encoder-decoder keys and
  values, projected once) and `decoder_step.onnx` (one new target token, src for its padding mask, the past
  self-attention keys/values and the memory keys/values -> the next token's logits and the grown past);
- a language model: `lm_step.onnx` (one new token and the past keys/values -> logits and the grown past).

The graphs come from `torch.onnx.export` (torch.export, then onnxscript) of aiayn's own modules: the decoder step
is `model.decode` with a cache whose past is an input, so the exported function is the one aiayn decodes with.
The folder also keeps the model's config.yaml and tokenizer files, and `onnx.json` (what the runner needs: the
family, the layer and head counts, the special ids).

Shapes: B batch, S source length, P past target steps, H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import shutil
import warnings
from pathlib import Path

import torch
from torch import nn

from aiayn.errors import ConfigError
from aiayn.model.masks import padding_mask

META = "onnx.json"


class _Past:
    """The cache of one attention module, held in tensors given to the graph: appending concatenates (a new
    tensor for the graph to return) instead of writing into a preallocated buffer as aiayn's KV cache does."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor) -> None:
        self.k, self.v = k, v  # (B, H, P, Dh)

    @property
    def length(self) -> int:
        return self.k.shape[2]

    def append(self, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        self.k, self.v = torch.cat([self.k, k], dim=2), torch.cat([self.v, v], dim=2)  # (B, H, P + 1, Dh)
        return self.k, self.v


class _LayerPast:
    def __init__(self, past: tuple[torch.Tensor, ...], cross: bool) -> None:
        self.self_attn = _Past(past[0], past[1])
        self.cross_attn = _Past(past[2], past[3]) if cross else None


class _CachePast:
    """aiayn.model.cache.KVCache's interface (`length`, `layers`) over tensors given to the graph."""

    def __init__(self, past: tuple[torch.Tensor, ...], n_layers: int, cross: bool) -> None:
        per = 4 if cross else 2
        self.layers = [_LayerPast(past[per * i : per * (i + 1)], cross) for i in range(n_layers)]

    @property
    def length(self) -> int:
        return self.layers[0].self_attn.length

    def presents(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (layer.self_attn.k, layer.self_attn.v)]


class EncoderGraph(nn.Module):
    """src (B, S) -> memory (B, S, D), then per decoder layer its encoder-decoder keys and values (B, H, S, Dh)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, src: torch.Tensor) -> tuple[torch.Tensor, ...]:
        memory = self.model.encode(src, padding_mask(src, self.model.config.pad_id))  # (B, S, D)
        B, S, _ = memory.shape
        out = [memory]
        for layer in self.model.decoder.layers:
            attn = layer.cross_attn
            kv = attn.kv_proj(memory).view(B, S, 2, attn.n_heads, attn.head_dim)  # (B, S, 2, H, Dh)
            out += list(kv.permute(2, 0, 3, 1, 4).unbind(0))  # k, v: each (B, H, S, Dh)
        return tuple(out)


class DecoderStepGraph(nn.Module):
    """tgt (B, 1), src (B, S), then per layer past key, past value (B, H, P, Dh), memory key, memory value
    (B, H, S, Dh) -> logits (B, V), then per layer present key, present value (B, H, P + 1, Dh)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, tgt: torch.Tensor, src: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = _CachePast(past, self.model.config.n_decoder_layers, cross=True)
        logits = self.model.decode(tgt, None, padding_mask(src, self.model.config.pad_id), cache)  # (B, 1, V)
        return (logits[:, -1], *cache.presents())


class LMStepGraph(nn.Module):
    """ids (B, 1), then per layer past key, past value (B, H, P, Dh) -> logits (B, V), then the present ones."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, ids: torch.Tensor, *past: torch.Tensor) -> tuple[torch.Tensor, ...]:
        cache = _CachePast(past, self.model.config.n_decoder_layers, cross=False)
        logits = self.model(ids, cache=cache)  # (B, 1, V)
        return (logits[:, -1], *cache.presents())


def _names(n_layers: int, cross: bool, prefix: str) -> list[str]:
    names = []
    for i in range(n_layers):
        names += [f"{prefix}_key_{i}", f"{prefix}_value_{i}"]
        if cross and prefix == "past":
            names += [f"memory_key_{i}", f"memory_value_{i}"]
    return names


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic) -> None:
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)  # its notes on torchvision ops and the like are not the user's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.export's and onnxscript's notes on internals, not the user's
        try:
            _torch_export(module, args, path, inputs, outputs, dynamic)
        finally:
            exporter_log.setLevel(level)


def _torch_export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], dynamic) -> None:
    with contextlib.redirect_stdout(io.StringIO()):  # its progress lines ("[torch.onnx] ... ✅")
        torch.onnx.export(module, args, str(path), input_names=inputs, output_names=outputs, dynamic_shapes=dynamic,
                          dynamo=True, external_data=False, verbose=False)  # fmt: skip


def _example(model: nn.Module, cross: bool) -> tuple[tuple[torch.Tensor, ...], dict]:
    """Example inputs for the step graph (2 rows, 3 past steps, 5 source positions) and their dynamic axes."""
    from torch.export import Dim

    c = model.config
    B, S, P, H, Dh = 2, 5, 3, c.n_heads, c.head_dim
    batch, src_len, past_len = Dim("batch"), Dim("src_len", max=c.max_len), Dim("past", max=c.max_len - 1)
    shapes, axes = [(B, H, P, Dh)] * 2, [{0: batch, 2: past_len}] * 2  # past key, past value
    if cross:
        shapes, axes = shapes + [(B, H, S, Dh)] * 2, axes + [{0: batch, 2: src_len}] * 2  # memory key, value
    # One tensor per input: torch.export takes the same tensor given twice for one input of the graph.
    past = tuple(torch.randn(shape) for _ in range(c.n_decoder_layers) for shape in shapes)
    token = torch.full((B, 1), c.bos_id, dtype=torch.long)
    if not cross:
        return (token, *past), {"ids": {0: batch}, "past": tuple(axes * c.n_decoder_layers)}
    src = torch.full((B, S), c.eos_id, dtype=torch.long)
    dynamic = {"tgt": {0: batch}, "src": {0: batch, 1: src_len}, "past": tuple(axes * c.n_decoder_layers)}
    return (token, src, *past), dynamic


def export_onnx(model: nn.Module, folder: Path, kind: str, tokenizer_files: tuple[str, ...], out: Path) -> Path:
    """Write `model` (an aiayn Transformer or LanguageModel, loaded from the model folder `folder` whose tokenizer
    is of `kind`, in `tokenizer_files`) as ONNX graphs into `out`; returns `out`."""
    try:
        import onnxscript  # noqa: F401  (torch.onnx.export's translator)
    except ImportError:
        raise ConfigError("--to onnx needs the onnx and onnxscript packages: pip install 'aiayn[interop]'") from None
    c = model.config
    if c.arch not in ("seq2seq", "lm"):
        raise ConfigError(f"model.arch={c.arch!r} cannot be exported to onnx: the export covers the Transformer "
                          f"families (arch 'seq2seq' or 'lm')")  # fmt: skip
    model = model.eval()
    out.mkdir(parents=True, exist_ok=True)
    cross = c.arch == "seq2seq"
    args, dynamic = _example(model, cross)
    past, present = _names(c.n_decoder_layers, cross, "past"), _names(c.n_decoder_layers, False, "present")
    with torch.no_grad():
        if cross:
            memory_kv = [n for n in past if n.startswith("memory")]
            _export(EncoderGraph(model), (args[1],), out / "encoder.onnx", ["src"], ["memory", *memory_kv],
                    {"src": dynamic["src"]})  # fmt: skip
            _export(DecoderStepGraph(model), args, out / "decoder_step.onnx", ["tgt", "src", *past],
                    ["logits", *present], dynamic)  # fmt: skip
        else:
            _export(LMStepGraph(model), args, out / "lm_step.onnx", ["ids", *past], ["logits", *present], dynamic)
    for name in ("config.yaml", *tokenizer_files):
        shutil.copyfile(folder / name, out / name)
    ids = c.special_ids
    meta = {"format": 1, "arch": c.arch, "tokenizer": kind, "n_layers": c.n_decoder_layers, "n_heads": c.n_heads,
            "head_dim": c.head_dim, "max_len": c.max_len, "pad_id": ids.pad, "bos_id": ids.bos, "eos_id": ids.eos,
            "never_emit": [i for i in ids.never_emit if i != ids.eos]}  # fmt: skip
    (out / META).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return out
