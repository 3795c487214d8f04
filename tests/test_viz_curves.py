"""aiayn.viz_curves: each picture is written, and the data it plots is the data it was given."""

import numpy as np
import pytest

from aiayn import viz_curves

PNG = b"\x89PNG\r\n\x1a\n"


def lines_by_label(fig) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    (ax,) = fig.axes
    return {line.get_label(): (np.asarray(line.get_xdata()), np.asarray(line.get_ydata())) for line in ax.get_lines()}


def test_accuracy_by_length_plots_one_curve_per_model_in_percent(tmp_path):
    results = {"lengths": [8, 16, 32], "accuracy": {"lstm, no attention": [1.0, 0.5, 0.0],
                                                    "transformer": [1.0, 0.995, 0.9]}}  # fmt: skip
    fig = viz_curves.plot_accuracy_by_length(results, tmp_path / "acc.png")
    assert (tmp_path / "acc.png").read_bytes().startswith(PNG)
    lines = lines_by_label(fig)
    assert set(lines) == set(results["accuracy"])
    for name, accuracy in results["accuracy"].items():
        np.testing.assert_array_equal(lines[name][0], results["lengths"])
        np.testing.assert_allclose(lines[name][1], np.array(accuracy) * 100)


def test_gradient_norms_plots_every_cell_and_stage_and_leaves_out_zeros(tmp_path):
    results = {"distance": [1, 2, 3, 4],
               "norms": {"rnn": {"init": [1e-1, 1e-3, 1e-5, 0.0], "trained": [2e-1, 1e-2, 1e-3, 1e-4]},
                         "lstm": {"init": [1e-1, 5e-2, 2e-2, 1e-2], "trained": [3e-1, 2e-1, 1e-1, 5e-2]}}}  # fmt: skip
    fig = viz_curves.plot_gradient_norms(results, tmp_path / "grad.svg")
    assert (tmp_path / "grad.svg").read_text().lstrip().startswith("<?xml")
    lines = lines_by_label(fig)
    assert set(lines) == {"rnn, init", "rnn, trained", "lstm, init", "lstm, trained"}
    x, y = lines["rnn, init"]
    np.testing.assert_array_equal(x, [1, 2, 3])  # the underflowed 0 cannot be drawn on a log axis
    np.testing.assert_allclose(y, [1e-1, 1e-3, 1e-5])
    x, y = lines["lstm, trained"]
    np.testing.assert_array_equal(x, results["distance"])
    np.testing.assert_allclose(y, results["norms"]["lstm"]["trained"])
    assert fig.axes[0].get_yscale() == "log"


def test_bars_have_the_given_heights_and_names(tmp_path):
    values = {"transformer": 8123.0, "lstm": 5001.5, "gru": 4000.0}
    fig = viz_curves.plot_bars(values, tmp_path / "bars.png", ylabel="target tokens/s")
    assert (tmp_path / "bars.png").read_bytes().startswith(PNG)
    (ax,) = fig.axes
    assert [p.get_height() for p in ax.patches] == list(values.values())
    assert [t.get_text() for t in ax.get_xticklabels()] == list(values)


def test_mismatched_lengths_and_unknown_formats_are_refused(tmp_path):
    with pytest.raises(ValueError, match="2 values for 3 lengths"):
        viz_curves.plot_accuracy_by_length({"lengths": [8, 16, 32], "accuracy": {"a": [1, 1]}}, tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"\.png or \.svg"):
        viz_curves.plot_bars({"a": 1.0}, tmp_path / "a.jpg", ylabel="x")
