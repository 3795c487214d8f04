"""Pictures of the model-family comparison (benchmarks/bench_families.py, issue 19), drawn from plain data.

Every function takes the JSON the benchmark prints (dicts of lists of numbers), so a user can redraw a picture from
their own run, writes a PNG or SVG to `path`, and returns the matplotlib Figure it drew (tests read the plotted
data back from it). Figures are made without pyplot, so no global figure state is left behind.

- `plot_accuracy_by_length`: claim 2, exact-match accuracy against sequence length, one curve per model;
- `plot_gradient_norms`: claim 4, the norm of d loss / d h_t against the distance to the loss, log scale;
- `plot_bars`: one value per family (claim 1's target tokens/s, claim 3's BLEU).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

FORMATS = (".png", ".svg")


def _figure(width: float, height: float):
    """A Figure on the Agg canvas: files only, no display and no pyplot state."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: str | Path):
    out = Path(path)
    if out.suffix.lower() not in FORMATS:
        raise ValueError(f"{path}: expected a file name ending in .png or .svg")
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    return fig


def plot_accuracy_by_length(results: Mapping, path: str | Path):
    """results: {"lengths": [L, ...], "accuracy": {model name: [exact-match fraction per length], ...}} -> one
    curve per model, accuracy in percent against L (log2 axis: the lengths double)."""
    lengths = [int(n) for n in results["lengths"]]
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    for name, accuracy in results["accuracy"].items():
        if len(accuracy) != len(lengths):
            raise ValueError(f"accuracy[{name!r}] has {len(accuracy)} values for {len(lengths)} lengths")
        ax.plot(lengths, [100.0 * a for a in accuracy], "o-", label=name)
    ax.set_xscale("log", base=2)
    ax.set_xticks(lengths, [str(n) for n in lengths])
    ax.set(xlabel="sequence length", ylabel="exact match (%)", ylim=(-3, 103),
           title=results.get("title", "reverse task: exact match against length"))  # fmt: skip
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gradient_norms(results: Mapping, path: str | Path):
    """results: {"distance": [d, ...], "norms": {cell: {stage: [norm per distance], ...}, ...}} (stages such as
    "init" and "trained") -> one line per (cell, stage), the norm on a log axis. A norm of 0 (the gradient
    underflowed) cannot be drawn on a log axis and is left out of its line."""
    distance = np.asarray(results["distance"], dtype=float)
    fig = _figure(6.5, 4.0)
    ax = fig.add_subplot()
    styles = {"init": "--", "trained": "-"}
    for i, (cell, stages) in enumerate(results["norms"].items()):
        for stage, norms in stages.items():  # one colour per cell, one line style per stage
            values = np.asarray(norms, dtype=float)
            if values.shape != distance.shape:
                raise ValueError(f"norms[{cell!r}][{stage!r}] has {values.size} values for {distance.size} distances")
            shown = values > 0
            ax.plot(distance[shown], values[shown], styles.get(stage, ":"), color=f"C{i}",
                    label=f"{cell}, {stage}")  # fmt: skip
    ax.set_yscale("log")
    ax.set(xlabel="distance to the loss (encoder steps)", ylabel="mean ||d loss / d h_t||",
           title=results.get("title", "gradients through time"))  # fmt: skip
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_bars(values: Mapping[str, float], path: str | Path, ylabel: str, title: str = ""):
    """One bar per name, its value written above it."""
    names: Sequence[str] = list(values)
    heights = [float(values[n]) for n in names]
    fig = _figure(1.6 + 1.2 * len(names), 3.8)
    ax = fig.add_subplot()
    bars = ax.bar(names, heights)
    ax.bar_label(bars, labels=[f"{h:,.3g}" if abs(h) < 1000 else f"{h:,.0f}" for h in heights], fontsize=8)
    ax.set(ylabel=ylabel, title=title)
    ax.margins(y=0.15)
    return _save(fig, path)
