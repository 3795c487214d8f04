"""aiayn.viz and `aiayn plot`: the attention weights drawn are the model's own, and every picture is written."""

import json
import math
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch

import aiayn
from aiayn import viz
from aiayn.cli import main
from aiayn.config import EOS_ID

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def models(model_folders):
    return (
        aiayn.load(model_folders / "s2s", device="cpu"),
        aiayn.load(model_folders / "lm", device="cpu"),
        model_folders,
    )


def test_recorded_weights_are_softmax_of_scaled_scores_of_the_model(models):
    s2s, _, _ = models
    attn = s2s.attention("two dogs play")
    src = torch.tensor([s2s.tokenizer.encode("two dogs play") + [EOS_ID]])  # (1, S)
    with torch.no_grad():
        x = s2s.model.src_embed(src)  # post-LN: the first encoder layer's attention reads the embeddings
        q, k, _ = s2s.model.encoder.layers[0].self_attn._project(x, None, None)  # (1, H, S, Dh)
        expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)[0]  # (H, S, S)
    np.testing.assert_allclose(attn.weights["encoder.layers.0.self_attn"], expected.numpy(), rtol=1e-5, atol=1e-6)
    assert attn.text == s2s.translate("two dogs play", beam=1)[0]


def test_attention_shapes_labels_and_the_causal_mask(models):
    s2s, lm, _ = models
    attn = s2s.attention("a man rides a bike")
    H, S, T = 4, len(attn.source), len(attn.target)
    assert attn.source == s2s.tokenizer.tokens("a man rides a bike") + ["<eos>"]
    assert attn.target[0] == "<bos>" and len(attn.output) == T
    assert sorted(attn.weights) == [
        f"decoder.layers.{i}.{kind}" for i in (0, 1) for kind in ("cross_attn", "self_attn")
    ] + [
        "encoder.layers.0.self_attn",
        "encoder.layers.1.self_attn",
    ]
    assert attn.weights["encoder.layers.1.self_attn"].shape == (H, S, S)
    assert attn.weights["decoder.layers.1.cross_attn"].shape == (H, T, S)
    dec = attn.weights["decoder.layers.0.self_attn"]
    assert dec.shape == (H, T, T) and np.all(np.triu(dec, k=1) == 0.0)  # no position sees a later one
    for w in attn.weights.values():
        np.testing.assert_allclose(w.sum(-1), 1.0, rtol=1e-5)
    lm_attn = lm.attention("zwei hunde")
    n = len(lm.tokenizer.encode("zwei hunde"))
    assert lm_attn.source == [] and len(lm_attn.target) == len(lm_attn.output) == n
    assert sorted(lm_attn.weights) == ["decoder.layers.0.self_attn", "decoder.layers.1.self_attn"]
    assert np.all(np.triu(lm_attn.weights["decoder.layers.1.self_attn"], k=1) == 0.0)


def test_panels_select_layers_and_heads_and_name_the_range():
    weights = {f"{p}.layers.{i}.self_attn": np.zeros((4, 2, 2)) for p in ("encoder", "decoder") for i in range(3)}
    weights |= {f"decoder.layers.{i}.cross_attn": np.zeros((4, 2, 2)) for i in range(3)}
    assert len(viz.attention_panels(weights)) == 3 * 3 * 4
    assert viz.attention_panels(weights, layer=2, head=1) == [("encoder", 2, 1), ("decoder", 2, 1), ("cross", 2, 1)]
    with pytest.raises(viz.VizError, match=r"--layer 3: expected 0\.\.2 \(the model has 3 layers\)"):
        viz.attention_panels(weights, layer=3)
    with pytest.raises(viz.VizError, match=r"--head -1: expected 0\.\.3"):
        viz.attention_panels(weights, head=-1)


def test_plot_attention_command_labels_axes_with_the_real_tokens(models, capsys):
    s2s, lm, folder = models
    out = folder / "attention.svg"
    assert main(["plot", "attention", "--model", str(folder / "s2s"), "--text", "two dogs", "--out", str(out)]) == 0
    svg = out.read_text(encoding="utf-8")
    attn = s2s.attention("two dogs")
    for label in {*attn.source, *attn.output}:
        assert f">{escape(label)}<" in svg
    assert "Encoder-decoder attention" in svg and "layer 1, head 3" in svg
    png = folder / "lm.png"
    assert main(["plot", "attention", "--model", str(folder / "lm"), "--text", "ein mann", "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == PNG
    capsys.readouterr()
    code = main(["plot", "attention", "--model", str(folder / "s2s"), "--text", "x", "--head", "9", "--out", str(png)])
    assert code == 2 and capsys.readouterr().err.strip() == "error: --head 9: expected 0..3 (the model has 4 heads)"
    kept = png.read_bytes()
    code = main(["plot", "attention", "--model", str(folder / "s2s"), "--text", "x", "--layer", "5", "--out", str(png)])
    assert code == 2 and png.read_bytes() == kept  # a failed picture leaves the old file
    capsys.readouterr()
    code = main(["plot", "attention", "--model", str(folder / "s2s"), "--text", "x", "--out", str(folder / "a.jpg")])
    assert code == 2 and "a.jpg: expected a file name ending in .png or .svg" in capsys.readouterr().err


def test_missing_glyphs_are_one_clear_error(monkeypatch):
    from matplotlib import font_manager

    dejavu = [f for f in font_manager.fontManager.ttflist if f.name.startswith("DejaVu")]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", dejavu)
    monkeypatch.setattr(font_manager, "findSystemFonts", lambda *a, **k: [])
    assert viz.font_families(["<eos>", "Straße", "▁dogs"]) == ["DejaVu Sans"]
    with pytest.raises(viz.VizError, match="no installed font has the glyphs for '年日': install a font"):
        viz.font_families(["2026年", "日"])


def test_chinese_tokens_are_drawn_with_a_font_that_has_them(tmp_path):
    try:
        families = viz.font_families(["年"])
    except viz.VizError:
        pytest.skip("no CJK font installed (.ci/run installs fonts-wqy-zenhei)")
    from matplotlib import font_manager, ft2font

    path = font_manager.findfont(font_manager.FontProperties(family=families[1]))
    assert ord("年") in ft2font.FT2Font(path).get_charmap()
    out = viz.plot_alignments([(np.eye(3), ["2026", "-", "11"], ["2026", "年", "11"], "2026年11")], tmp_path / "a.svg")
    assert ">年<" in out.read_text(encoding="utf-8")


def test_positions_schedule_and_curves_commands(tmp_path, capsys):
    out = tmp_path / "pos.svg"
    assert main(["plot", "positions", "--d-model", "16", "--max-len", "20", "--dims", "0", "1", "--out", str(out)]) == 0
    assert "wavelength 6.3" in out.read_text(encoding="utf-8")  # dims 0 and 1: 2 pi
    assert viz._wavelength(14, 16) == pytest.approx(2 * math.pi * 10000 ** (14 / 16))
    assert main(["plot", "positions", "--d-model", "15", "--out", str(out)]) == 2
    assert "--d-model 15: expected an even number" in capsys.readouterr().err

    config = tmp_path / "c.yaml"
    config.write_text("optim: {schedule: noam, warmup: 50}\ntrain: {max_steps: 200}\nmodel: {d_model: 64}\n")
    out = tmp_path / "schedule.svg"
    assert main(["plot", "schedule", "--config", str(config), "--out", str(out), "--optim.warmup", "40"]) == 0
    peak = 64**-0.5 * 40**-0.5  # the noam schedule peaks at the warmup step
    assert f"peak {peak:.3g} at step 40" in out.read_text(encoding="utf-8")

    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 10, "loss": 5.0, "lr": 1e-3}, {"step": 20, "loss": 4.0, "lr": 2e-3}]
    rows.append({"step": 20, "split": "valid", "loss": 4.5, "bleu": 3.0, "chrf": 20.0})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "curves.png"
    assert main(["plot", "curves", "--run", str(run), "--out", str(out)]) == 0
    assert out.read_bytes()[:8] == PNG
    train, valid = viz.read_metrics(run)
    assert [e["step"] for e in train] == [10, 20] and valid[0]["bleu"] == 3.0
    (run / "metrics.jsonl").write_text(json.dumps(rows[0]) + "\n{not json\n")
    capsys.readouterr()
    assert main(["plot", "curves", "--run", str(run), "--out", str(out)]) == 2
    assert f"error: {run / 'metrics.jsonl'}:2: not a JSON object" in capsys.readouterr().err
    assert main(["plot", "curves", "--run", str(tmp_path), "--out", str(out)]) == 2
    assert "no metrics.jsonl in it" in capsys.readouterr().err


def test_curves_show_tokenized_lowercased_bleu_when_the_run_scored_it(tmp_path):
    # A lowercased run's cased BLEU is low by construction: the panel must also show the metric it is judged by.
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"step": 10, "loss": 5.0, "lr": 1e-3}]
    rows.append({"step": 10, "split": "valid", "loss": 4.5, "bleu": 8.1, "bleu_tok_lc": 38.2, "chrf": 49.5})
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    svg = viz.plot_curves(run, tmp_path / "c.svg").read_text(encoding="utf-8")
    assert "tok lc BLEU" in svg and "chrF" in svg
    (run / "metrics.jsonl").write_text("".join(json.dumps({k: v for k, v in r.items() if k != "bleu_tok_lc"}) + "\n"
                                               for r in rows))  # fmt: skip
    assert "tok lc BLEU" not in viz.plot_curves(run, tmp_path / "d.svg").read_text(encoding="utf-8")
