"""`aiayn explain`: the report's numbers are the model's own tensors, and the file needs no network."""

import math
import re

import numpy as np
import pytest
import torch

import aiayn
from aiayn.cli import main
from aiayn.config import EOS_ID
from aiayn.explain import DIMS, TEMPERATURES, read_report
from aiayn.model import record_attention
from aiayn.model.layers import sinusoidal_table


@pytest.fixture(scope="module")
def models(model_folders):
    return model_folders


def close(reported, expected):
    np.testing.assert_allclose(
        np.asarray(reported, dtype=np.float64), expected.detach().double().numpy(), rtol=1e-5, atol=1e-6
    )


def test_seq2seq_report_numbers_equal_the_models_tensors(models, capsys):
    out = models / "report.html"
    assert main(["explain", "--model", str(models / "s2s"), "two dogs play", "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    data = read_report(out)
    values = data["values"]
    s2s = aiayn.load(models / "s2s", device="cpu")
    model, c = s2s.model, s2s.model.config
    assert data["translation"] == s2s.translate("two dogs play", beam=1)[0]
    src = torch.tensor([s2s.tokenizer.encode("two dogs play") + [EOS_ID]])  # (1, S)
    tgt = torch.tensor([data["target_ids"]])  # (1, T): BOS + the translation
    assert data["source_ids"] == src[0].tolist() and data["target_ids"][0] == 1
    with torch.no_grad(), record_attention(model) as recorder:
        logits = model(src, tgt)[0]  # (T, V)
        memory = model.encode(src)
        x = model.src_embed(src)
        q, k, _ = model.encoder.layers[0].self_attn._project(x, None, None)  # (1, H, S, Dh)
    # Embeddings: the table row x sqrt(d_model), the sinusoid, and their sum.
    close(values["src_embed.token"], model.src_embed.token.weight[src[0], :DIMS] * math.sqrt(c.d_model))
    close(values["src_embed.position"], sinusoidal_table(src.shape[1], c.d_model)[:, :DIMS])
    close(values["src_embed.output"], x[0, :, :DIMS])
    # Attention steps of the first encoder layer, from the model's own projections.
    scores = q @ k.transpose(-2, -1)  # (1, H, S, S)
    close(values["encoder.layers.0.self_attn.q"], q[0, 0, :, :DIMS])
    close(values["encoder.layers.0.self_attn.scores"], scores[0])
    close(values["encoder.layers.0.self_attn.scaled"], scores[0] / math.sqrt(c.head_dim))
    for name, recorded in recorder.weights.items():  # every layer's weights = what the model computes
        close(values[f"{name}.weights"], recorded[0][0])
    T = tgt.shape[1]
    assert values["decoder.layers.1.self_attn.mask"] == np.tril(np.ones((T, T), dtype=int)).tolist()
    close(values["encoder.layers.1.ffn_block.output"], memory[0, :, :DIMS])  # the encoder's output
    # The output: top candidates by logit, their probabilities at each temperature.
    top = logits.topk(5, dim=-1).indices
    assert values["final.top_ids"] == top.tolist()
    close(values["final.logits"], logits.gather(-1, top))
    for t in TEMPERATURES:
        close(values[f"final.p@{t:g}"], torch.softmax(logits / t, dim=-1).gather(-1, top))
    assert values["final.p@0.5"][0][0] > values["final.p@1"][0][0] > values["final.p@2"][0][0]  # T sharpens


def test_lm_report_and_the_next_token(models):
    out = models / "lm.html"
    assert main(["explain", "--model", str(models / "lm"), "zwei hunde", "--out", str(out)]) == 0
    data = read_report(out)
    lm = aiayn.load(models / "lm", device="cpu")
    ids = lm.tokenizer.encode("zwei hunde")
    assert data["target_ids"] == ids and data["target"] == lm.tokenizer.tokens("zwei hunde")
    with torch.no_grad(), record_attention(lm.model) as recorder:
        logits = lm.model(torch.tensor([ids]))[0]
    for name, recorded in recorder.weights.items():
        close(data["values"][f"{name}.weights"], recorded[0][0])
    assert data["values"]["final.top_ids"][-1][0] == int(logits[-1].argmax())  # the next token after the text
    close(data["values"]["final.p@1"][-1], torch.softmax(logits[-1], -1).topk(5).values)


def test_report_is_self_contained_and_bad_arguments_are_one_line(models, capsys):
    out = models / "report.html"
    main(["explain", "--model", str(models / "s2s"), "a man </script> <b>", "--out", str(out)])
    html = out.read_text(encoding="utf-8")
    assert not re.search(r"""(src|href)\s*=|<link|@import|url\(""", html)  # nothing fetched from anywhere
    assert "<b>a man &lt;/script&gt; &lt;b&gt;</b>" in html  # the input is escaped text, not markup
    assert html.count("</script>") == 1  # nor can it end the JSON block early
    assert read_report(out)["text"] == "a man </script> <b>"
    capsys.readouterr()
    assert main(["explain", "--model", str(models / "s2s"), "x", "--out", str(models / "r.txt")]) == 2
    assert capsys.readouterr().err.strip() == f"error: --out {models / 'r.txt'}: expected a file name ending in .html"
    assert main(["explain", "--model", str(models / "s2s"), "  ", "--out", str(out)]) == 2
    assert "text: empty" in capsys.readouterr().err
