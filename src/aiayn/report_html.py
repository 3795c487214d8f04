"""The HTML pieces of `aiayn explain`'s report that know nothing about models: colours, an inline-SVG heatmap
(hover a cell for its value), a table of numbers. No network: styles and pictures are inline."""

from __future__ import annotations

import html
from collections.abc import Sequence

import numpy as np

_VIRIDIS = ((68, 1, 84), (59, 82, 139), (33, 145, 140), (94, 201, 98), (253, 231, 37))


def _color(value: float, low: float, high: float, diverging: bool) -> str:
    if diverging:  # blue (negative) - white - red (positive)
        scale = max(abs(low), abs(high), 1e-12)
        x = max(-1.0, min(1.0, value / scale))
        r, g, b = (
            (255, int(255 * (1 - x)), int(255 * (1 - x))) if x >= 0 else (int(255 * (1 + x)), int(255 * (1 + x)), 255)
        )
        return f"rgb({r},{g},{b})"
    x = 0.0 if high <= low else max(0.0, min(1.0, (value - low) / (high - low)))
    i = min(int(x * (len(_VIRIDIS) - 1)), len(_VIRIDIS) - 2)
    f = x * (len(_VIRIDIS) - 1) - i
    r, g, b = (round(a + (c - a) * f) for a, c in zip(_VIRIDIS[i], _VIRIDIS[i + 1], strict=True))
    return f"rgb({r},{g},{b})"


def heatmap(
    matrix: np.ndarray,
    rows: Sequence[str],
    cols: Sequence[str],
    title: str,
    mask: np.ndarray | None = None,
    diverging: bool = False,
    limits: tuple[float, float] | None = None,
) -> str:
    """An inline SVG heatmap; each cell's <title> holds its value. Cells outside `mask` are grey ("masked").
    Colours span the shown values, or `limits` (e.g. (0, 1) for weights)."""
    cell, left, top = 16, 8 + 7 * max((len(r) for r in rows), default=1), 8 + 7 * max((len(c) for c in cols), default=1)
    width, height = max(left + cell * len(cols) + 4, 8 * len(title) + 8), top + cell * len(rows) + 22
    shown = matrix if mask is None else matrix[mask.astype(bool)]
    low, high = (float(shown.min()), float(shown.max())) if shown.size else (0.0, 1.0)
    if limits is not None:
        low, high = limits
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" class="heat">',
             f'<text x="{left}" y="{height - 6}" class="cap">{html.escape(title)}</text>']  # fmt: skip
    for j, label in enumerate(cols):
        x = left + j * cell + cell / 2
        parts.append(f'<text transform="translate({x + 4},{top - 4}) rotate(-90)">{html.escape(label)}</text>')
    for i, label in enumerate(rows):
        y = top + i * cell
        parts.append(f'<text x="{left - 4}" y="{y + 12}" text-anchor="end">{html.escape(label)}</text>')
        for j in range(len(cols)):
            if mask is not None and not mask[i, j]:
                fill, tip = "#bbb", "masked"
            else:
                fill, tip = _color(float(matrix[i, j]), low, high, diverging), f"{matrix[i, j]:.4g}"
            parts.append(
                f'<rect x="{left + j * cell}" y="{y}" width="{cell}" height="{cell}" fill="{fill}">'
                f"<title>{html.escape(rows[i])} -> {html.escape(cols[j])}: {tip}</title></rect>"
            )
    parts.append("</svg>")
    return "".join(parts)


def _table(matrix: np.ndarray, rows: Sequence[str], header: str, shape: Sequence[int] | None = None) -> str:
    dims = matrix.shape[1]
    head = "".join(f"<th>{d}</th>" for d in range(dims))
    body = "".join(
        f"<tr><th>{html.escape(r)}</th>" + "".join(f"<td>{v:.4f}</td>" for v in row) + "</tr>"
        for r, row in zip(rows, matrix, strict=True)
    )
    note = f" — shape {tuple(shape)}, first {dims} dimensions" if shape else ""
    return f"<p class='what'>{header}{note}</p><table><tr><th></th>{head}</tr>{body}</table>"


