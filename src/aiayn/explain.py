"""`aiayn explain`: walk one input through a trained model, step by step, and write it as one HTML file.

The walk follows the seeds' order: tokens and ids -> embedding (scaled) + positional encoding -> for each layer:
Q, K, V, the raw scores QK^T, the scaled scores (/ sqrt(d_k)), the mask, the softmax weights per head, the
weighted sum, the concatenation and output projection, Add & Norm, the FFN -> the decoder with its
encoder-decoder attention -> the final logits as probabilities of the top candidates at temperatures 0.5, 1, 2.

Every number comes from one forward pass of the model itself: attention steps from the attention recorder
(`record_attention(model, detail=True)`: the readable path the model runs while recording), the rest from forward
hooks on the model's modules. The numbers shown are also embedded in the file as JSON
(`<script id="aiayn-explain" type="application/json">`), which is what the tests compare with the model's tensors.
The file needs no network: styles are inline and the heatmaps are inline SVG (hover a cell for its value).
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from aiayn import explain_rnn
from aiayn.config import TaskKind
from aiayn.errors import UserError
from aiayn.model.layers import softmax
from aiayn.model.recorder import record_attention
from aiayn.report_html import _table, heatmap

TEMPERATURES = (0.5, 1.0, 2.0)
DIMS = 8  # vectors are shown by their first DIMS dimensions
TOP = 5  # candidates shown per output position


@dataclass
class Walk:
    """One input's trip through the model: labels, and every number the report shows by name (e.g.
    "encoder.layers.0.self_attn.weights" (H, S, S), "src_embed.token" (S, DIMS)); `shapes` holds the full shape of
    each tensor a slice was taken from."""

    arch: str
    config: dict[str, Any]
    text: str
    source: list[str]
    source_ids: list[int]
    target: list[str]
    target_ids: list[int]
    output: list[str]
    translation: str
    values: dict[str, np.ndarray] = field(default_factory=dict)
    shapes: dict[str, list[int]] = field(default_factory=dict)
    task: str = "pairs"  # TaskKind value: what the report shows (an encoder, a translation) depends on it
    # a family with recurrent sublayers (aiayn.explain_rnn): the layer shown, its cell, the attention modules
    recurrent: dict[str, Any] = field(default_factory=dict)


@torch.no_grad()
def walk(pretrained, text: str, beam: int = 1, layer: int = 0) -> Walk:
    """Run `text` through a loaded model (`aiayn.load(DIR)`) once, keeping what the report shows. Pairs: the
    source, then the model's own translation (greedy, or beam search with `beam`) fed back teacher-forced. Text:
    the text, and the next token after it. A family with recurrent sublayers shows the gates of encoder layer
    `layer` (the Transformer's report shows every layer)."""
    model = pretrained.model
    w, inputs = _start(pretrained, text, beam)
    recurrent = any(kind == "recurrent" for _, kind, _ in model.sublayers())
    captured: dict[str, tuple] = {}  # what the recurrent and attention sublayers read and returned
    handles = _hooks(model, w) + (explain_rnn.recurrent_hooks(model, captured) if recurrent else [])
    try:
        with record_attention(model, detail=True) as recorder:
            logits = model(*inputs)  # (1, T, V)
    finally:
        for handle in handles:
            handle.remove()
    _attention_values(w, recorder)
    if recurrent:
        explain_rnn.encoder_values(w, captured, layer, DIMS)
        explain_rnn.attention_values(w, captured, recorder, DIMS)
    _final_values(w, logits[0].float())
    return w


def _start(pretrained, text: str, beam: int) -> tuple[Walk, tuple[torch.Tensor, ...]]:
    """The walk's labels and the model's inputs: (source, decoder input) for pairs, (text,) for text."""
    model, tokenizer, device = pretrained.model, pretrained.tokenizer, pretrained.device
    arch, task = model.config.arch, pretrained.task.value
    if pretrained.task is TaskKind.TEXT:
        ids = pretrained.lm_inputs(text)
        w = Walk(arch, model.config.to_dict(), text, [], [], tokenizer.labels(ids), ids, [], "", task=task)
        return w, (torch.tensor([ids], device=device),)
    source, decoder_in, output, translation = pretrained.walk_inputs(text, beam)
    w = Walk(arch, model.config.to_dict(), text, tokenizer.labels(source), source, tokenizer.labels(decoder_in),
             decoder_in, output, translation, task=task)  # fmt: skip
    return w, (torch.tensor([source], device=device), torch.tensor([decoder_in], device=device))


def _hooks(model: torch.nn.Module, w: Walk) -> list:
    """Forward hooks on the parts the model family shows (its `sublayers()` hook: embeddings, Add & Norm, the
    FFN) that keep their activations in `w`."""

    def keep(name: str, tensor: torch.Tensor) -> None:
        """A (1, T, D) activation -> its first DIMS dimensions, (T, DIMS)."""
        w.shapes[name] = list(tensor.shape)
        w.values[name] = tensor[0, :, :DIMS].float().cpu().numpy()

    def on_embedding(name):
        def hook(module, args, out):
            ids = args[0]
            keep(f"{name}.token", module.token(ids))
            if module.position is not None:
                keep(f"{name}.position", module.position(ids.shape[1]).unsqueeze(0).expand_as(out))
            keep(f"{name}.output", out)

        return hook

    def on_block(name):  # Add & Norm, and the FFN: what goes in and what comes out
        def hook(module, args, out) -> None:  # a hook that returned a value would replace the output
            keep(f"{name}.input", args[0])
            keep(f"{name}.output", out)

        return hook

    def on_ffn_hidden(name):  # the input of W2: the activation's output
        def hook(module, args) -> None:
            keep(f"{name}.hidden", args[0])

        return hook

    handles = []
    for name, kind, module in model.sublayers():
        if kind == "embedding":
            handles.append(module.register_forward_hook(on_embedding(name)))
        elif kind in ("residual", "ffn"):
            handles.append(module.register_forward_hook(on_block(name)))
        if kind == "ffn":
            handles.append(module.w2.register_forward_pre_hook(on_ffn_hidden(name)))
    return handles


def _attention_values(w: Walk, recorder) -> None:
    """Each attention call's steps (scores, scaled, mask, weights per head; q, k, v, context of head 0)."""
    for name, calls in recorder.details.items():
        steps = calls[-1]
        for key in ("scores", "scaled", "weights"):
            w.values[f"{name}.{key}"] = steps[key][0].float().cpu().numpy()  # (H, T, S)
        mask = steps["mask"]
        rows, cols = steps["weights"].shape[-2:]
        allowed = (
            torch.ones(rows, cols, dtype=torch.bool) if mask is None else mask.cpu().expand(1, 1, rows, cols)[0, 0]
        )
        w.values[f"{name}.mask"] = allowed.numpy().astype(np.int8)  # (T, S): 1 = may attend
        for key in ("q", "k", "v", "context"):  # (1, H, T, Dh): head 0's first DIMS dimensions
            w.shapes[f"{name}.{key}"] = list(steps[key].shape)
            w.values[f"{name}.{key}"] = steps[key][0, 0, :, :DIMS].float().cpu().numpy()
        for key in ("concat", "output"):  # (1, T, D)
            w.shapes[f"{name}.{key}"] = list(steps[key].shape)
            w.values[f"{name}.{key}"] = steps[key][0, :, :DIMS].float().cpu().numpy()


def _final_values(w: Walk, logits: torch.Tensor) -> None:
    """logits (T, V) -> the top candidates' ids, logits and probabilities at each temperature."""
    top = logits.topk(min(TOP, logits.shape[-1]), dim=-1).indices  # (T, TOP): the same order at every temperature
    w.values["final.top_ids"] = top.cpu().numpy()
    for t in TEMPERATURES:
        w.values[f"final.p@{t:g}"] = softmax(logits, t).gather(-1, top).cpu().numpy()  # (T, TOP)
    w.values["final.logits"] = logits.gather(-1, top).cpu().numpy()
    w.shapes["final.logits"] = list(logits.shape)


def _attention_html(w: Walk, name: str, rows: list[str], cols: list[str], heading: str) -> str:
    v, H = w.values, w.config["n_heads"]
    d_k = w.config["d_model"] // H
    out = [f"<h4>{heading}</h4>"]
    out.append(
        f"<p>Q = x W<sup>Q</sup>, K = {'memory' if 'cross' in name else 'x'} W<sup>K</sup>, V = "
        f"{'memory' if 'cross' in name else 'x'} W<sup>V</sup>, one matrix multiplication for all {H} heads: "
        f"Q {tuple(w.shapes[name + '.q'])}, K {tuple(w.shapes[name + '.k'])}, V {tuple(w.shapes[name + '.v'])} "
        f"(batch, heads, positions, d_k = {d_k}).</p>"
    )
    out.append(_table(v[name + ".q"], rows, "Q of head 0", w.shapes[name + ".q"]))
    out.append(_table(v[name + ".k"], cols, "K of head 0", w.shapes[name + ".k"]))
    for key, label, diverging in (
        ("scores", "raw scores QK<sup>T</sup>", True),
        ("scaled", f"scaled scores QK<sup>T</sup> / sqrt(d_k) = QK<sup>T</sup> / {math.sqrt(d_k):.3f}", True),
        ("weights", "softmax weights (each row sums to 1)", False),
    ):
        mask = v[name + ".mask"] if key != "scores" else None
        limits = None if diverging else (0.0, 1.0)
        maps = "".join(
            heatmap(v[f"{name}.{key}"][h], rows, cols, f"head {h}", mask, diverging, limits) for h in range(H)
        )
        out.append(f"<p class='what'>{label}</p><div class='row'>{maps}</div>")
        if key == "scaled":
            n_masked = int((v[name + ".mask"] == 0).sum())
            causal = name.startswith("decoder") and name.endswith("self_attn")
            why = "later positions: a step must not see the future" if causal else "padding"
            out.append(
                f"<p class='what'>mask: {n_masked} of {v[name + '.mask'].size} query-key pairs may not attend "
                f"({why}); they get the most negative float before the softmax, so weight exactly 0</p>"
                + heatmap(v[name + ".mask"].astype(float), rows, cols, "mask (1 = may attend)", limits=(0.0, 1.0))
            )
    out.append(_table(v[name + ".context"], rows, "weighted sum softmax(...) V of head 0", w.shapes[name + ".context"]))
    out.append(_table(v[name + ".concat"], rows, "Concat(head_1..head_h)", w.shapes[name + ".concat"]))
    out.append(
        _table(
            v[name + ".output"], rows, "Concat(...) W<sup>O</sup>: the sublayer's output", w.shapes[name + ".output"]
        )
    )
    return "".join(out)


def _block_html(w: Walk, name: str, rows: list[str], what: str) -> str:
    pre = w.config["norm"] == "pre"
    formula = f"x + {what}(LayerNorm(x))" if pre else f"LayerNorm(x + {what}(x))"
    return _table(w.values[name + ".output"], rows, f"Add &amp; Norm: {formula}", w.shapes[name + ".output"])


def _ffn_html(w: Walk, name: str, rows: list[str]) -> str:
    act = w.config["activation"]
    formula = "max(0, x W1 + b1) W2 + b2" if act == "relu" else f"{act} feed-forward"
    return "".join([
        f"<h4>Position-wise feed-forward: {formula} (d_ff = {w.config['d_ff']})</h4>",
        _table(w.values[name + ".hidden"], rows, "hidden layer, after the activation", w.shapes[name + ".hidden"]),
        _table(w.values[name + ".output"], rows, "FFN output", w.shapes[name + ".output"]),
    ])  # fmt: skip


def _layer_html(w: Walk, stack: str, i: int, rows: list[str], source: list[str], open_: bool) -> str:
    base = f"{stack}.layers.{i}"
    parts = []
    self_cols = rows if stack == "encoder" else w.target
    heading = "Self-attention" if stack == "encoder" else "Masked self-attention"
    parts.append(_attention_html(w, f"{base}.self_attn", rows, self_cols, heading))
    parts.append(_block_html(w, f"{base}.self_attn_block", rows, "SelfAttention"))
    if f"{base}.cross_attn.weights" in w.values:
        parts.append(
            _attention_html(
                w,
                f"{base}.cross_attn",
                rows,
                source,
                "Encoder-decoder attention (queries from the decoder, keys and values from the encoder output)",
            )
        )
        parts.append(_block_html(w, f"{base}.cross_attn_block", rows, "CrossAttention"))
    parts.append(_ffn_html(w, f"{base}.ffn", rows))
    parts.append(_block_html(w, f"{base}.ffn_block", rows, "FFN"))
    return f"<details{' open' if open_ else ''}><summary>{stack} layer {i}</summary>{''.join(parts)}</details>"


def _embedding_html(w: Walk, name: str, labels: list[str], ids: list[int]) -> str:
    d = w.config["d_model"]
    scaling = f" x sqrt(d_model) = x {math.sqrt(d):.3f}" if w.config["scale_embeddings"] else ""
    parts = [
        "<table><tr><th>token</th>" + "".join(f"<td>{html.escape(t)}</td>" for t in labels) + "</tr>"
        "<tr><th>id</th>" + "".join(f"<td>{i}</td>" for i in ids) + "</tr></table>",
        _table(w.values[name + ".token"], labels,
               f"token embedding{scaling}", w.shapes[name + ".token"]),
    ]  # fmt: skip
    if name + ".position" in w.values:
        kind = "sinusoidal PE(pos, 2i) = sin(pos / 10000^(2i/d_model)), PE(pos, 2i+1) = cos(...)"
        if w.config["positional"] == "learned":
            kind = "learned position embedding"
        parts.append(_table(w.values[name + ".position"], labels, kind, w.shapes[name + ".position"]))
    what = "their sum: the first layer's input" if name + ".position" in w.values else "the first layer's input"
    parts.append(_table(w.values[name + ".output"], labels, what, w.shapes[name + ".output"]))
    return "".join(parts)


def _final_html(w: Walk, tokenizer, positions: list[str]) -> str:
    v = w.values
    temps = "".join(f"<th>p at T={t:g}</th>" for t in TEMPERATURES)
    rows = []
    for t, label in enumerate(positions):
        ids = v["final.top_ids"][t]
        for r, token_id in enumerate(ids):
            first = f"<th rowspan='{len(ids)}'>{html.escape(label)}</th>" if r == 0 else ""
            probs = "".join(f"<td>{v[f'final.p@{temp:g}'][t, r]:.4f}</td>" for temp in TEMPERATURES)
            rows.append(
                f"<tr>{first}<td>{html.escape(tokenizer.labels([int(token_id)])[0])}</td>"
                f"<td>{v['final.logits'][t, r]:.3f}</td>{probs}</tr>"
            )
    return (
        "<p>The decoder's output goes through the output Linear (logits over the whole vocabulary, shape "
        f"{tuple(w.shapes['final.logits'])}), then softmax(logits / T). A low temperature sharpens the choice, a "
        "high one flattens it; the order of the candidates never changes.</p>"
        f"<table><tr><th>position reads</th><th>candidate</th><th>logit</th>{temps}</tr>{''.join(rows)}</table>"
    )


_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222}
h2{border-bottom:1px solid #ccc}table{border-collapse:collapse;margin:.3em 0 1em;font-size:12px}
td,th{border:1px solid #ddd;padding:2px 5px;text-align:right}th{background:#f4f4f4}
.what{margin:.6em 0 .2em;font-weight:600}.row{display:flex;flex-wrap:wrap;gap:8px}
svg.heat text{font-size:10px}svg.heat text.cap{font-size:11px;font-weight:600}
details{border:1px solid #ddd;border-radius:4px;padding:.3em .8em;margin:.5em 0}
summary{font-weight:700;cursor:pointer}"""


def _recurrent_sections(w: Walk) -> list[str]:
    """A recurrent encoder-decoder: its embeddings, one encoder layer's gates, the decoder's attention."""
    return [
        explain_rnn.header_html(w, DIMS),
        "<h2>1. Tokens and embeddings (encoder input)</h2>",
        _embedding_html(w, "encoder.embed", w.source, w.source_ids),
        "<h2>2. Encoder: the recurrent cell at each input step</h2>",
        explain_rnn.encoder_html(w),
        "<h2>3. Decoder input: BOS, then the translation so far (shifted right)</h2>",
        _embedding_html(w, "decoder.embed", w.target, w.target_ids),
        "<h2>4. Decoder: attention over the encoder's outputs at each step</h2>",
        explain_rnn.decoder_html(w),
        "<h2>5. Output: the next token at each step</h2>",
    ]


def render(w: Walk, tokenizer) -> str:
    """The report as one self-contained HTML string."""
    c = w.config
    sections = [f"<h1>aiayn explain</h1><p>Input: <b>{html.escape(w.text)}</b>"]
    pairs = w.task == TaskKind.PAIRS.value
    if pairs:
        sections[0] += f"<br>Translation (the model's own): <b>{html.escape(w.translation)}</b>"
    if w.recurrent:
        sections[0] += "</p>"
        sections.extend(_recurrent_sections(w))
        return _document(w, [*sections, _final_html(w, tokenizer, w.target)])
    sections[0] += (
        f"</p><p>Model: {w.arch}, d_model {c['d_model']}, {c['n_heads']} heads (d_k = {c['d_model'] // c['n_heads']}), "
        f"d_ff {c['d_ff']}, {c['n_encoder_layers'] if pairs else 0} encoder + {c['n_decoder_layers']} "
        f"decoder layers, {c['norm']}-LN, {c['positional']} positions. Vectors show their first {DIMS} dimensions; "
        "hover a heatmap cell for its value.</p>"
    )
    decoder_rows = w.target
    if pairs:
        sections.append("<h2>1. Tokens and embeddings (encoder input)</h2>")
        sections.append(_embedding_html(w, "src_embed", w.source, w.source_ids))
        sections.append("<h2>2. Encoder</h2>")
        sections.extend(_layer_html(w, "encoder", i, w.source, w.source, i == 0) for i in range(c["n_encoder_layers"]))
        sections.append("<h2>3. Decoder input: BOS, then the translation so far (shifted right)</h2>")
        sections.append(_embedding_html(w, "tgt_embed", w.target, w.target_ids))
        sections.append("<h2>4. Decoder (each row: one step, seeing only earlier steps)</h2>")
        sections.extend(
            _layer_html(w, "decoder", i, decoder_rows, w.source, i == 0) for i in range(c["n_decoder_layers"])
        )
        sections.append("<h2>5. Output: the next token at each step</h2>")
    else:
        sections.append("<h2>1. Tokens and embeddings</h2>")
        sections.append(_embedding_html(w, "embed", w.target, w.target_ids))
        sections.append("<h2>2. Decoder-only layers (masked self-attention)</h2>")
        sections.extend(_layer_html(w, "decoder", i, decoder_rows, [], i == 0) for i in range(c["n_decoder_layers"]))
        sections.append("<h2>3. Output: the next token after each position (the last row continues the text)</h2>")
    sections.append(_final_html(w, tokenizer, decoder_rows))
    return _document(w, sections)


def _document(w: Walk, sections: list[str]) -> str:
    """The sections, and every number shown as JSON for tests and scripts."""
    data = {
        "arch": w.arch, "text": w.text, "translation": w.translation, "source": w.source, "source_ids": w.source_ids,
        "target": w.target, "target_ids": w.target_ids, "output": w.output, "shapes": w.shapes,
        "layer": w.recurrent.get("layer"),
        "values": {name: array.tolist() for name, array in w.values.items()},
    }  # fmt: skip
    payload = json.dumps(data, ensure_ascii=False).replace("</", "<\\/")  # cannot end the <script> early
    return (
        "<!DOCTYPE html><html lang='en'><head><meta charset='utf-8'><title>aiayn explain</title>"
        f"<style>{_STYLE}</style></head><body>{''.join(sections)}"
        f"<script id='aiayn-explain' type='application/json'>{payload}</script></body></html>\n"
    )


def explain(pretrained, text: str, out: str | Path, beam: int = 1, layer: int = 0) -> Path:
    """Walk `text` through the model and write the HTML report to `out` (atomically). `layer`: the recurrent
    encoder layer whose gates are shown (a family with recurrent sublayers; the Transformer shows them all)."""
    from aiayn.files import write_atomic

    path = Path(out)
    if path.suffix.lower() not in (".html", ".htm"):
        raise UserError(f"--out {out}: expected a file name ending in .html")
    if not path.parent.exists():
        raise UserError(f"--out {out}: the folder {path.parent} does not exist")
    write_atomic(path, render(walk(pretrained, text, beam, layer), pretrained.tokenizer).encode("utf-8"))
    return path


def read_report(path: str | Path) -> dict[str, Any]:
    """The numbers embedded in a report (for tests and scripts): the JSON of its aiayn-explain script block."""
    text = Path(path).read_text(encoding="utf-8")
    start = text.index("<script id='aiayn-explain' type='application/json'>") + len(
        "<script id='aiayn-explain' type='application/json'>"
    )
    return json.loads(text[start : text.index("</script>", start)].replace("<\\/", "</"))
