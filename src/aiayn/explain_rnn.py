"""`aiayn explain` for a family with recurrent sublayers (aiayn.model.rnn): the encoder's gates and cell state at
each input step of one layer, then the decoder's attention at each output step.

The model runs once, as it always does (fused torch.nn.LSTM / GRU / RNN layers over the whole sequence); forward
hooks on its `sublayers()` keep what each recurrent and attention module read and returned. The report's numbers
are then recomputed from those inputs and the layer's own weights (`weight_ih_l{N}`, `weight_hh_l{N}`, the biases,
forward direction) with the readable steps `lstm_step` / `gru_step` / `rnn_step` and `additive_attention`, and
each is checked against the model's own tensors before anything is written: the per-step states against the
fused layer, the final h (and c) against the layer's returned state, the attention weights against the
recorder's and the context against the module's output. A difference beyond float rounding is an error, never a
report.

Shapes: S source length, T decoder steps, D_in a layer's input size, H hidden size, E memory size, A attention size.
"""

from __future__ import annotations

import html
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import PackedSequence, pad_packed_sequence

from aiayn.errors import UserError
from aiayn.model.rnn import AdditiveAttention, additive_attention, gru_step, lstm_step, masked_softmax, rnn_step
from aiayn.report_html import _table, heatmap

GATES = {  # torch.nn.RNNBase.mode -> what is shown per step, in PyTorch's gate order
    "LSTM": ("i", "f", "g", "o", "c", "h"),
    "GRU": ("r", "z", "n", "h"),
    "RNN_TANH": ("pre", "h"),
    "RNN_RELU": ("pre", "h"),
}
LABELS = {  # the report's headers: PyTorch's weight names, t the step, h_{t-1} the previous state
    "i": "input gate i_t = sigmoid(W_ii x_t + W_hi h_{t-1} + b_i)",
    "f": "forget gate f_t = sigmoid(W_if x_t + W_hf h_{t-1} + b_f)",
    "g": "candidate g_t = tanh(W_ig x_t + W_hg h_{t-1} + b_g)",
    "o": "output gate o_t = sigmoid(W_io x_t + W_ho h_{t-1} + b_o)",
    "c": "cell state c_t = f_t * c_{t-1} + i_t * g_t",
    "r": "reset gate r_t = sigmoid(W_ir x_t + b_ir + W_hr h_{t-1} + b_hr)",
    "z": "update gate z_t = sigmoid(W_iz x_t + b_iz + W_hz h_{t-1} + b_hz)",
    "n": "candidate n_t = tanh(W_in x_t + b_in + r_t * (W_hn h_{t-1} + b_hn))",
    "pre": "pre-activation U x_t + W h_{t-1} + b",
}
H_LABEL = {
    "LSTM": "hidden state h_t = o_t * tanh(c_t)",
    "GRU": "hidden state h_t = (1 - z_t) * n_t + z_t * h_{t-1}",
    "RNN_TANH": "hidden state h_t = tanh(pre-activation)",
    "RNN_RELU": "hidden state h_t = relu(pre-activation)",
}
STEPS = {"LSTM": "lstm_step", "GRU": "gru_step", "RNN_TANH": "rnn_step", "RNN_RELU": "rnn_step"}
# float32 rounding of the same sums in another order (the fused kernels add the products differently)
RTOL, ATOL = 1e-4, 1e-5


def recurrent_hooks(model: nn.Module, captured: dict[str, tuple]) -> list:
    """Forward hooks on the family's recurrent and attention sublayers: `captured[name]` = (module, inputs,
    output) of its last call."""

    def keep(name: str):
        def hook(module, args, out) -> None:  # returning None leaves the output as it is
            captured[name] = (module, args, out)

        return hook

    return [
        module.register_forward_hook(keep(name))
        for name, kind, module in model.sublayers()
        if kind in ("recurrent", "attention")
    ]


def _check(what: str, readable: torch.Tensor, model: torch.Tensor) -> float:
    """The largest difference of a recomputed tensor from the model's own; an error beyond float rounding."""
    readable, model = readable.float(), model.float().reshape(readable.shape)
    diff = float((readable - model).abs().max()) if readable.numel() else 0.0
    if not torch.allclose(readable, model, rtol=RTOL, atol=ATOL):
        raise RuntimeError(f"explain: {what} recomputed with the readable steps differs from the model's by {diff:.3g}")
    return diff


def _weights(module: nn.RNNBase, layer: int, reverse: bool) -> list[torch.Tensor | None]:
    """weight_ih, weight_hh, bias_ih, bias_hh of one layer and direction, as float32 (None without biases)."""
    suffix = f"l{layer}" + ("_reverse" if reverse else "")
    names = ["weight_ih", "weight_hh"] + (["bias_ih", "bias_hh"] if module.bias else [])
    found = [getattr(module, f"{n}_{suffix}").float() for n in names]
    return found + [None] * (4 - len(found))


def _step(mode: str, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor, w: list) -> dict[str, torch.Tensor]:
    """One step of the cell, x (1, D_in), h and c (1, H) -> the gates after their nonlinearities, h (and c), each
    (1, H). h and c come from the readable step itself; the gates are its products taken apart, and must
    rebuild its h and c exactly."""
    if mode == "LSTM":
        z_i, z_f, z_g, z_o = (F.linear(x, w[0], w[2]) + F.linear(h, w[1], w[3])).chunk(4, dim=-1)  # each (1, H)
        out = {"i": torch.sigmoid(z_i), "f": torch.sigmoid(z_f), "g": torch.tanh(z_g), "o": torch.sigmoid(z_o)}
        out["h"], out["c"] = lstm_step(x, h, c, *w)
        _check("c = f * c_prev + i * g", out["f"] * c + out["i"] * out["g"], out["c"])
        return out
    if mode == "GRU":
        x_r, x_z, x_n = F.linear(x, w[0], w[2]).chunk(3, dim=-1)  # each (1, H)
        h_r, h_z, h_n = F.linear(h, w[1], w[3]).chunk(3, dim=-1)  # each (1, H)
        r, z = torch.sigmoid(x_r + h_r), torch.sigmoid(x_z + h_z)
        out = {"r": r, "z": z, "n": torch.tanh(x_n + r * h_n), "h": gru_step(x, h, *w)}
        _check("h = (1 - z) * n + z * h_prev", (1 - z) * out["n"] + z * h, out["h"])
        return out
    nonlinearity = "relu" if mode == "RNN_RELU" else "tanh"
    return {"pre": F.linear(x, w[0], w[2]) + F.linear(h, w[1], w[3]), "h": rnn_step(x, h, *w, nonlinearity)}


def _run_layer(module: nn.RNNBase, layer: int, x: torch.Tensor, reverse: bool = False) -> dict[str, torch.Tensor]:
    """One layer and direction over x (S, D_in), step by step from zero states -> each shown value (S, H)."""
    w, H = _weights(module, layer, reverse), module.hidden_size
    h = c = torch.zeros(1, H, device=x.device)
    steps: list[dict[str, torch.Tensor]] = [{}] * x.shape[0]
    for t in reversed(range(x.shape[0])) if reverse else range(x.shape[0]):
        steps[t] = _step(module.mode, x[t : t + 1], h, c, w)
        h, c = steps[t]["h"], steps[t].get("c", c)
    return {key: torch.cat([s[key] for s in steps]) for key in steps[0]}  # S x (1, H) -> (S, H)


def _fused_copy(module: nn.RNNBase, layer: int) -> nn.RNNBase:
    """A one-layer fused torch layer with the forward weights of `layer`: the model's own kernel, run on the
    layer's input alone, gives every step's output to compare with."""
    weights = _weights(module, layer, reverse=False)
    kwargs = {"nonlinearity": module.nonlinearity} if module.mode.startswith("RNN") else {}
    copy = type(module)(weights[0].shape[1], module.hidden_size, num_layers=1, bias=module.bias, batch_first=True,
                        **kwargs)  # fmt: skip
    for name, weight in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"), weights, strict=True):
        if weight is not None:
            getattr(copy, name).copy_(weight)
    return copy.to(weights[0].device)


def _as_padded(x: torch.Tensor | PackedSequence) -> torch.Tensor:
    """A recurrent layer's input or output (1, S, ...), padded back when the family packed it."""
    return pad_packed_sequence(x, batch_first=True)[0] if isinstance(x, PackedSequence) else x


def encoder_values(w, captured: dict[str, tuple], layer: int, dims: int) -> None:
    """The gates, cell and hidden states of encoder layer `layer`, forward direction, at every input step."""
    name = next(n for n in captured if n.startswith("encoder.") and isinstance(captured[n][0], nn.RNNBase))
    module, args, (outputs, state) = captured[name]
    n_layers, directions = module.num_layers, 2 if module.bidirectional else 1
    if not 0 <= layer < n_layers:
        raise UserError(f"--layer {layer}: expected 0..{n_layers - 1} (the encoder has {n_layers} recurrent layers)")
    x = _as_padded(args[0])[0].float()  # (1, S, D) -> (S, D): the model's own input to its first layer
    for below in range(layer):  # the layers under the one shown, both directions: its input
        forward = _run_layer(module, below, x)["h"]  # (S, H)
        x = torch.cat([forward, _run_layer(module, below, x, reverse=True)["h"]], -1) if directions == 2 else forward
    values = _run_layer(module, layer, x)
    fused, _ = _fused_copy(module, layer)(x[None])  # (1, S, H)
    diff = _check(f"{name} layer {layer}'s states", values["h"], fused[0])
    final = [s[layer * directions, 0] for s in (state if isinstance(state, tuple) else (state,))]  # each (H,)
    diff = max(diff, _check(f"{name} layer {layer}'s final h", values["h"][-1], final[0]))
    if "c" in values:
        diff = max(diff, _check(f"{name} layer {layer}'s final c", values["c"][-1], final[1]))
    if layer == n_layers - 1:  # the top layer's forward half is the memory the decoder reads
        diff = max(diff, _check(f"{name}'s output", values["h"], _as_padded(outputs)[0, :, : module.hidden_size]))
    w.shapes[f"{name}.x"] = list(x.shape)
    w.values[f"{name}.x"] = x[:, :dims].cpu().numpy()
    for key, tensor in values.items():
        w.shapes[f"{name}.{key}"] = list(tensor.shape)
        w.values[f"{name}.{key}"] = tensor[:, :dims].cpu().numpy()
    w.values[f"{name}.max_diff"] = np.array(diff)
    w.recurrent |= {"name": name, "mode": module.mode, "layer": layer, "layers": n_layers, "directions": directions}


def attention_values(w, captured: dict[str, tuple], recorder, dims: int) -> None:
    """Each decoder step's attention: scores, weights and context, recomputed per step and checked against the
    module's output and the recorder's weights."""
    for name, (module, args, out) in captured.items():
        if isinstance(module, nn.RNNBase):
            continue
        query, projected, memory, mask = args  # (1, T, H), (1, S, A), (1, S, E), (1, S) or (1, 1, 1, S) or None
        keep = None if mask is None else mask.reshape(1, memory.shape[1])  # (1, 1, 1, S) -> (1, S)
        q, m = query.float(), memory.float()
        if isinstance(module, AdditiveAttention):
            w_q, w_k, w_v = module.w_q.weight.float(), module.w_k.weight.float(), module.w_v.float()
            scores = torch.cat([torch.tanh((q[:, t] @ w_q.T)[:, None] + m @ w_k.T) @ w_v for t in range(q.shape[1])])
            # the written-out formula, one decoder step at a time: T x (context (1, E), weights (1, S))
            steps = [additive_attention(q[:, t], m, m, w_q, w_k, w_v, keep) for t in range(q.shape[1])]
            context, weights = torch.cat([s[0] for s in steps]), torch.cat([s[1] for s in steps])  # (T, E), (T, S)
        else:  # Luong's general attention: its own scores, then the same softmax and weighted sum
            scores = module.scores(q, projected.float())[0]  # (T, S)
            weights = masked_softmax(scores, keep)  # (T, S)
            context = weights @ m[0]  # (T, S) @ (S, E) -> (T, E)
        _check(f"{name}'s scores", scores, module.scores(query, projected)[0])
        diff = _check(f"{name}'s weights", weights, recorder.weights[name][-1][0, 0])
        diff = max(diff, _check(f"{name}'s context", context, out[0][0]))
        w.values[f"{name}.query"], w.shapes[f"{name}.query"] = q[0, :, :dims].cpu().numpy(), list(query.shape)
        w.values[f"{name}.scores"] = scores.cpu().numpy()
        w.values[f"{name}.weights"] = weights.cpu().numpy()
        w.values[f"{name}.context"], w.shapes[f"{name}.context"] = context[:, :dims].cpu().numpy(), list(out[0].shape)
        w.values[f"{name}.max_diff"] = np.array(diff)
        w.recurrent.setdefault("attention", []).append((name, type(module).__name__))


def header_html(w, dims: int) -> str:
    """What the model is: cell, sizes, depth, attention."""
    c: dict[str, Any] = w.config
    r = w.recurrent
    bi = "bidirectional, " if r["directions"] == 2 else ""
    size = f" (A = {c['rnn_attention_dim'] or c['d_model']})" if c["rnn_attention"] == "additive" else ""
    attn = c["rnn_attention"] + size
    return (
        f"<p>Model: {w.arch}, {c['rnn_cell'].upper()} cells, hidden size {c['d_model']}, {c['n_encoder_layers']} "
        f"encoder layers ({bi}fused torch.nn.{r['mode'].split('_')[0]}) + {c['n_decoder_layers']} decoder layers, "
        f"{attn} attention. Vectors show their first {dims} dimensions; hover a heatmap cell for its value.</p>"
    )  # fmt: skip


def encoder_html(w) -> str:
    """The shown layer's gates and states, one row per input step."""
    r, v, rows = w.recurrent, w.values, w.source
    name, mode, N = r["name"], r["mode"], r["layer"]
    both = " (both directions, concatenated)" if r["directions"] == 2 else ""
    what = "the embeddings" if N == 0 else f"layer {N - 1}'s outputs{both}"
    parts = [
        f"<details open><summary>encoder layer {N} of {r['layers']}, forward direction</summary>",
        f"<p>Each row is one input step t. Recomputed from the model's weight_ih_l{N}, weight_hh_l{N}, bias_ih_l{N}, "
        f"bias_hh_l{N} with aiayn.model.rnn.{STEPS[mode]}, from zero states; every step equals the fused layer's "
        f"output, and the last the state it returned (largest difference {float(v[name + '.max_diff']):.2g}).</p>",
        _table(v[name + ".x"], rows, f"input x<sub>t</sub>: {what}", w.shapes[name + ".x"]),
    ]  # fmt: skip
    for key in GATES[mode]:
        label = H_LABEL[mode] if key == "h" else LABELS[key]
        parts.append(_table(v[f"{name}.{key}"], rows, label, w.shapes[f"{name}.{key}"]))
    return "".join(parts) + "</details>"


def decoder_html(w) -> str:
    """Per decoder step: the query state, the scores, the weights and the context."""
    v, rows, cols = w.values, w.target, w.source
    parts = []
    for name, kind in w.recurrent.get("attention", []):
        formula = (
            "e<sub>tj</sub> = w<sub>v</sub><sup>T</sup> tanh(W<sub>q</sub> h<sub>t</sub> + W<sub>k</sub> m<sub>j</sub>)"
            if kind == "AdditiveAttention" else "e<sub>tj</sub> = h<sub>t</sub><sup>T</sup> W m<sub>j</sub>"
        )  # fmt: skip
        how = "aiayn.model.rnn.additive_attention" if kind == "AdditiveAttention" else "the module's own scores"
        parts += [
            f"<h4>{html.escape(name)}: {kind} ({formula}), after the decoder's recurrent layers</h4>",
            "<p>Each row is one decoder step, labelled with the token it reads; m<sub>j</sub> is the encoder's "
            f"output at source position j. Recomputed per step with {how}; equal to the recorder's weights and "
            f"the module's context (largest difference {float(v[name + '.max_diff']):.2g}).</p>",
            _table(v[name + ".query"], rows, "query h_t: the top decoder layer's state", w.shapes[name + ".query"]),
            "<p class='what'>scores e<sub>tj</sub> and weights a<sub>tj</sub> = softmax<sub>j</sub>(e<sub>tj</sub>) "
            "(each row sums to 1)</p><div class='row'>"
            + heatmap(v[name + ".scores"], rows, cols, "scores", diverging=True)
            + heatmap(v[name + ".weights"], rows, cols, "weights", limits=(0.0, 1.0)) + "</div>",
            _table(v[name + ".context"], rows, "context c<sub>t</sub> = sum<sub>j</sub> a<sub>tj</sub> m<sub>j</sub>",
                   w.shapes[name + ".context"]),
        ]  # fmt: skip
    if not parts:
        parts.append("<p>No attention (rnn_attention none): the decoder reads only the bridged final state.</p>")
    return "".join(parts)
