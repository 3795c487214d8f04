"""Pictures with matplotlib: attention heatmaps, the positional encoding, the learning-rate schedule, training curves.

Each `plot_*` function draws one figure and writes it to `out` (.png or .svg, by the name's suffix). Labels that
need glyphs DejaVu Sans lacks (Chinese, say) are drawn with an installed font that has them; when none has them,
VizError names the characters and a font package to install.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from aiayn.errors import UserError

FORMATS = (".png", ".svg")
KINDS = {  # attention kind -> title
    "encoder": "Encoder self-attention",
    "decoder": "Decoder masked self-attention",
    "cross": "Encoder-decoder attention",
}
CJK_FONT_HINT = "install a font that has them, e.g. Debian's fonts-noto-cjk or fonts-wqy-zenhei"


class VizError(UserError):
    """A picture that cannot be drawn as asked: one line naming the argument and what was expected."""


def _pyplot():
    import logging

    import matplotlib

    # A CJK font with no "normal" weight makes findfont log a warning per label; the picture is still right.
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)
    matplotlib.use("Agg")  # files only: no display needed
    import matplotlib.pyplot as plt

    return plt


def _check_out(out: str | Path) -> Path:
    path = Path(out)
    if path.suffix.lower() not in FORMATS:
        raise VizError(f"--out {out}: expected a file name ending in .png or .svg")
    if path.parent and not path.parent.exists():
        raise VizError(f"--out {out}: the folder {path.parent} does not exist")
    return path


def font_families(labels: Sequence[str]) -> list[str]:
    """The font family list for these labels: DejaVu Sans, then (when it lacks glyphs) an installed font that has
    every missing one. VizError when no installed font has them."""
    from matplotlib import font_manager, ft2font

    base = font_manager.findfont("DejaVu Sans")
    covered = set(ft2font.FT2Font(base).get_charmap())
    missing = sorted({c for label in labels for c in label if ord(c) not in covered and not c.isspace()})
    if not missing:
        return ["DejaVu Sans"]
    needed = {ord(c) for c in missing}
    listed = {entry.fname: entry.name for entry in font_manager.fontManager.ttflist}
    # matplotlib's font list is cached: a font installed after the cache was made is only among the system files.
    unlisted = sorted(set(font_manager.findSystemFonts()) - set(listed))
    for fname in [*sorted(listed, key=listed.get), *unlisted]:
        # "Last Resort" fonts map every character to a placeholder box: they cover everything and show nothing.
        if fname == base or listed.get(fname, "").startswith("Last Resort"):
            continue
        try:
            font = ft2font.FT2Font(fname)
        except (OSError, RuntimeError):  # a font file that cannot be opened
            continue
        if font.family_name.startswith("Last Resort") or not needed <= set(font.get_charmap()):
            continue
        if fname not in listed:
            font_manager.fontManager.addfont(fname)
        return ["DejaVu Sans", font.family_name]
    shown = "".join(missing[:12]) + ("..." if len(missing) > 12 else "")
    raise VizError(f"no installed font has the glyphs for {shown!r}: {CJK_FONT_HINT}")


def _save(fig, path: Path) -> Path:
    """Write the figure atomically: a picture that fails to render leaves the previous file as it was."""
    import io

    from aiayn.files import write_atomic

    plt = _pyplot()
    buffer = io.BytesIO()
    with plt.rc_context({"svg.fonttype": "none"}):  # SVG text stays text: searchable, and small
        fig.savefig(buffer, format=path.suffix.lower()[1:], dpi=120, bbox_inches="tight")
    plt.close(fig)
    write_atomic(path, buffer.getvalue())
    return path


# ----------------------------------------------------------------------------------------------- attention
def attention_kind(name: str) -> tuple[str, int | None]:
    """(kind, layer) of a recorded module name, read from the name the family gave it in its `sublayers()`:
    "{stack}.layers.{i}.{part}" in a stack of layers (the Transformers), "{stack}.{part}" for a family with one
    attention module (the recurrent encoder-decoder's "decoder.cross_attn": layer None). A decoder's self-attention
    is "decoder"; every other attention of the decoder reads the encoder's memory, "cross"."""
    parts = name.split(".")
    stack, part = parts[0], parts[-1]
    layer = int(parts[2]) if len(parts) == 4 and parts[1] == "layers" and parts[2].isdigit() else None
    if stack == "encoder":
        return "encoder", layer
    return ("decoder" if part == "self_attn" else "cross"), layer


def _panel_names(weights: Mapping[str, np.ndarray]) -> dict[tuple[str, int], str]:
    """(kind, layer) -> the module name its weights are under; a module without a layer index is layer 0."""
    found = {}
    for name in weights:
        kind, layer = attention_kind(name)
        found[(kind, 0 if layer is None else layer)] = name
    order = list(KINDS)  # encoder, decoder, cross: the order of the rows drawn
    return dict(sorted(found.items(), key=lambda item: (order.index(item[0][0]), item[0][1])))


def attention_panels(
    weights: Mapping[str, np.ndarray], layer: int | None = None, head: int | None = None
) -> list[tuple[str, int, int]]:
    """The (kind, layer, head) panels to draw: every kind the model has, the chosen layer (or all), the chosen head
    (or all). VizError when layer or head is out of range."""
    names = _panel_names(weights)
    layers: dict[str, list[int]] = {}
    for kind, i in names:
        layers.setdefault(kind, []).append(i)
    if not layers:
        raise VizError("no attention weights recorded")
    n_layers = max(len(found) for found in layers.values())
    n_heads = next(iter(weights.values())).shape[0]
    if layer is not None and not 0 <= layer < n_layers:
        raise VizError(f"--layer {layer}: expected 0..{n_layers - 1} (the model has {n_layers} layers)")
    if head is not None and not 0 <= head < n_heads:
        raise VizError(f"--head {head}: expected 0..{n_heads - 1} (the model has {n_heads} heads)")
    return [
        (kind, i, h)
        for kind, found in layers.items()
        for i in (found if layer is None else [layer])
        if (kind, i) in names
        for h in (range(n_heads) if head is None else [head])
    ]


def plot_attention(
    weights: Mapping[str, np.ndarray],
    source: Sequence[str],
    target: Sequence[str],
    output: Sequence[str],
    out: str | Path,
    layer: int | None = None,
    head: int | None = None,
    title: str | None = None,
) -> Path:
    """Heatmaps of the attention weights of one input (an `aiayn.inference.Attention`'s fields): one row of panels
    per (kind, layer), one column per head. Rows of a panel are the decoder positions, labelled with the token
    each produced (`output`); columns are the tokens attended to (`source` for the encoder and cross-attention,
    `target`, the decoder's inputs, for its self-attention)."""
    path = _check_out(out)
    panels = attention_panels(weights, layer, head)
    names = _panel_names(weights)
    rows = list(dict.fromkeys((kind, i) for kind, i, _ in panels))  # (kind, layer) in order
    heads = list(dict.fromkeys(h for _, _, h in panels))
    plt = _pyplot()
    families = font_families([*source, *target, *output, title or ""])
    axis_labels = {
        "encoder": (source, source),
        "decoder": (output, target),
        "cross": (output, source),
    }
    longest = max(len(source), len(target), 1)
    size = min(max(1.8, 0.28 * longest + 0.8), 6.0)
    with plt.rc_context({"font.family": families, "font.size": 7}):
        fig, axes = plt.subplots(
            len(rows),
            len(heads),
            figsize=(size * len(heads) + 0.6, size * len(rows) + 0.6),
            squeeze=False,
            layout="constrained",
        )
        for r, (kind, i) in enumerate(rows):
            y_labels, x_labels = axis_labels[kind]
            for c, h in enumerate(heads):
                ax = axes[r][c]
                name = names[(kind, i)]
                matrix = weights[name][h]  # (rows, cols)
                ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="auto", interpolation="nearest")
                where = f"layer {i}" if attention_kind(name)[1] is not None else name  # the module, when one
                ax.set_title(f"{KINDS[kind]}\n{where}, head {h}", fontsize=7)
                ax.set_xticks(range(len(x_labels)), x_labels, rotation=90)
                ax.set_yticks(range(len(y_labels)), y_labels if c == 0 else [""] * len(y_labels))
        if title:
            fig.suptitle(title)
        return _save(fig, path)


def plot_alignments(
    items: Sequence[tuple[np.ndarray, Sequence[str], Sequence[str], str]], out: str | Path, title: str = ""
) -> Path:
    """Side-by-side heatmaps of (weights (rows, cols), row labels, column labels, panel title): e.g. the
    encoder-decoder attention of a few translations, the output tokens down, the source tokens across."""
    path = _check_out(out)
    if not items:
        raise VizError("nothing to draw: give at least one attention matrix")
    plt = _pyplot()
    families = font_families([label for _, rows, cols, name in items for label in (*rows, *cols, name)])
    with plt.rc_context({"font.family": families, "font.size": 8}):
        widths = [max(len(cols), 1) for _, _, cols, _ in items]
        height = max(len(rows) for _, rows, _, _ in items)
        fig, axes = plt.subplots(
            1,
            len(items),
            figsize=(0.35 * sum(widths) + 1.6 * len(items), 0.35 * height + 2.2),
            width_ratios=widths,
            squeeze=False,
            layout="constrained",
        )
        for ax, (matrix, rows, cols, name) in zip(axes[0], items, strict=True):
            ax.imshow(matrix, cmap="viridis", vmin=0.0, vmax=1.0, aspect="equal", interpolation="nearest")
            ax.set_xticks(range(len(cols)), cols, rotation=90)
            ax.set_yticks(range(len(rows)), rows)
            ax.set_title(name, fontsize=8)
        if title:
            fig.suptitle(title)
        return _save(fig, path)


# ----------------------------------------------------------------------------------------------- positions
def plot_positions(out: str | Path, d_model: int = 128, max_len: int = 100, dims: Sequence[int] = (4, 5, 6, 7)) -> Path:
    """The sinusoidal positional encoding (§3.5) as a heatmap (positions x dimensions), and a few dimensions as
    curves over the positions: each pair of dimensions is a sine and a cosine of one wavelength."""
    from aiayn.model.layers import sinusoidal_table

    path = _check_out(out)
    if d_model < 2 or d_model % 2:
        raise VizError(f"--d-model {d_model}: expected an even number >= 2")
    if max_len < 1:
        raise VizError(f"--max-len {max_len}: expected a number >= 1")
    bad = [d for d in dims if not 0 <= d < d_model]
    if bad:
        raise VizError(f"--dims {bad[0]}: expected dimensions in 0..{d_model - 1}")
    table = sinusoidal_table(max_len, d_model).numpy()  # (max_len, d_model)
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 7), height_ratios=(3, 2))
    image = top.imshow(table, cmap="RdBu", vmin=-1, vmax=1, aspect="auto", interpolation="nearest")
    top.set(xlabel="dimension i", ylabel="position pos", title=f"PE(pos, i), d_model={d_model}")
    fig.colorbar(image, ax=top)
    for d in dims:
        kind = "sin" if d % 2 == 0 else "cos"
        bottom.plot(range(max_len), table[:, d], label=f"dim {d} ({kind}, wavelength {_wavelength(d, d_model):.1f})")
    bottom.set(xlabel="position pos", ylabel="PE", title="a few dimensions over the positions")
    bottom.legend(fontsize=7)
    fig.tight_layout()
    return _save(fig, path)


def _wavelength(dim: int, d_model: int) -> float:
    return 2 * math.pi * 10000 ** ((dim - dim % 2) / d_model)


# ------------------------------------------------------------------------------------------------ schedule
def plot_schedule(steps: Sequence[int], rates: Sequence[float], out: str | Path, title: str) -> Path:
    """The learning rate over the training steps."""
    path = _check_out(out)
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(8, 4))
    ax.plot(steps, rates)
    peak = int(np.argmax(rates))
    ax.annotate(f"peak {rates[peak]:.3g} at step {steps[peak]}", (steps[peak], rates[peak]), fontsize=8)
    ax.set(xlabel="step", ylabel="learning rate", title=title)
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.tight_layout()
    return _save(fig, path)


# -------------------------------------------------------------------------------------------------- curves
def read_metrics(run_dir: str | Path) -> tuple[list[dict], list[dict]]:
    """metrics.jsonl of a run folder -> (training entries, validation entries). VizError naming the file and line
    for a line that is not a JSON object."""
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise VizError(f"--run {run_dir}: no metrics.jsonl in it (expected a run folder written by aiayn train)")
    train, valid = [], []
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except json.JSONDecodeError as e:
                raise VizError(f"{path}:{number}: not a JSON object ({e.msg})") from None
            if not isinstance(entry, dict) or "step" not in entry:
                raise VizError(f"{path}:{number}: expected a JSON object with a 'step'")
            (valid if entry.get("split") == "valid" else train).append(entry)
    if not train and not valid:
        raise VizError(f"{path}: empty; train for at least log_every steps first")
    return train, valid


def plot_curves(run_dir: str | Path, out: str | Path) -> Path:
    """Training and validation loss, validation BLEU (seq2seq runs) and the learning rate from metrics.jsonl."""
    path = _check_out(out)
    train, valid = read_metrics(run_dir)
    has_bleu = any("bleu" in e for e in valid)
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3 if has_bleu else 2, figsize=(13 if has_bleu else 9, 3.8), squeeze=False)
    loss_ax, lr_ax = axes[0][0], axes[0][-1]
    if train:
        loss_ax.plot([e["step"] for e in train], [e["loss"] for e in train], label="train loss")
    if valid:
        loss_ax.plot([e["step"] for e in valid], [e["loss"] for e in valid], "o-", label="validation loss")
    loss_ax.set(xlabel="step", ylabel="loss (nats per token)", title="loss")
    loss_ax.legend(fontsize=8)
    if has_bleu:
        _plot_scores(axes[0][1], [e for e in valid if "bleu" in e])
    rated = [e for e in train if "lr" in e]
    lr_ax.plot([e["step"] for e in rated], [e["lr"] for e in rated])
    lr_ax.set(xlabel="step", ylabel="learning rate", title="learning rate")
    lr_ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    fig.suptitle(str(run_dir))
    fig.tight_layout()
    return _save(fig, path)


# The scores a validation entry may hold, as the panel names them. A run on lowercased, Moses-tokenized text
# (data.lowercase, data.moses) writes lowercase: its cased BLEU is low by construction, and tok lc BLEU is its metric.
_SCORES = (("bleu", "BLEU", "o-"), ("bleu_tok_lc", "tok lc BLEU", "^-"), ("chrf", "chrF", "s--"))


def _plot_scores(ax, points: list[dict]) -> None:
    """Validation BLEU, tokenized lowercased BLEU and chrF over the steps, each when the entries have it."""
    steps = [e["step"] for e in points]
    for key, label, style in _SCORES:
        if any(key in e for e in points):
            ax.plot(steps, [e.get(key, float("nan")) for e in points], style, label=label)
    ax.set(xlabel="step", ylabel="score", title="validation")
    ax.legend(fontsize=8)


_CURVES = ("plot_accuracy_by_length", "plot_gradient_norms", "plot_bars")


def __getattr__(name: str):
    """The family benchmark's curves live in aiayn.viz_curves (matplotlib at import); reached from here too."""
    if name in _CURVES:
        from aiayn import viz_curves

        return getattr(viz_curves, name)
    raise AttributeError(f"module 'aiayn.viz' has no attribute {name!r}")
