"""Every command on a recurrent encoder-decoder's model folder (model.arch rnn): `plot attention` draws the
model's own additive weights, `explain` shows each encoder step's gates and states and each decoder step's
attention (all equal to the model's own tensors), and translate, evaluate, perplexity, average, serve and
`aiayn.load(...).attention` work as they do for the Transformer."""

import json
from xml.sax.saxutils import escape

import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from starlette.testclient import TestClient

import aiayn
from aiayn.cli import main
from aiayn.config import EOS_ID, ModelConfig
from aiayn.errors import UserError
from aiayn.explain import DIMS, read_report, walk
from aiayn.model import build, record_attention
from aiayn.model.masks import padding_mask
from aiayn.model.rnn import additive_attention
from aiayn.serve import Settings, create_app
from aiayn.tokenizer import train_tokenizer
from aiayn.train import checkpoint as ckpt

TEXT = ["two dogs play in the snow", "zwei hunde spielen im schnee", "a man rides a bike", "ein mann fährt rad"] * 5
SENTENCE = "two dogs play"
VARIANTS = {  # folder -> the rnn_* keys and depth; "lstm" (2 seeds) is the main one
    "lstm": dict(rnn_cell="lstm", rnn_attention="additive", n_encoder_layers=2),
    "gru": dict(rnn_cell="gru", rnn_attention="general", n_encoder_layers=2, rnn_bidirectional=False),
    "elman": dict(rnn_cell="rnn", rnn_attention="none", n_encoder_layers=1),
}


def save(folder, tokenizer_json: bytes, vocab: int, seed: int, **keys) -> None:
    """A random-weight rnn model folder; output weights sharpened so that decoding makes real choices, and
    max_len 12 so that a translation has a few steps and no more."""
    torch.manual_seed(seed)
    config = ModelConfig(arch="rnn", vocab_size=vocab, d_model=32, n_decoder_layers=1, max_len=12, dropout=0.0,
                         output_bias=True, **keys)  # fmt: skip
    model = build(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)
    ckpt.save_checkpoint(folder, model=model, config={"model": config.to_dict()}, tokenizer_json=tokenizer_json)


@pytest.fixture(scope="module")
def rnn(tmp_path_factory):
    """Model folders: lstm (bidirectional, 2 encoder layers, additive), lstm-seed1 (for average), gru (general
    attention) and elman (no attention)."""
    tokenizer = train_tokenizer(TEXT, vocab_size=300, min_frequency=1)
    folder = tmp_path_factory.mktemp("rnn")
    tokenizer.save(folder / "tokenizer.json")
    tok_json = (folder / "tokenizer.json").read_bytes()
    for name, keys in VARIANTS.items():
        save(folder / name, tok_json, tokenizer.vocab_size, 0, **keys)
    save(folder / "lstm-seed1", tok_json, tokenizer.vocab_size, 1, **VARIANTS["lstm"])
    return folder


@pytest.fixture(scope="module")
def lstm(rnn):
    return aiayn.load(rnn / "lstm", device="cpu")


def model_inputs(pretrained, target_ids):
    src = torch.tensor([pretrained.tokenizer.encode(SENTENCE) + [EOS_ID]])  # (1, S)
    return src, torch.tensor([target_ids])  # (1, T)


@torch.no_grad()
def additive_from_the_model(model, src, tgt) -> torch.Tensor:
    """The weights (T, S), recomputed step by step with the written-out formula from the model's own memory,
    decoder states and attention weights."""
    src_mask = padding_mask(src, model.config.pad_id)
    memory = model.encode(src, src_mask)  # (1, S, E)
    states, _ = model.decoder.rnn(model.decoder.embed(tgt), model.decoder.bridge(memory, src_mask))  # (1, T, H)
    attn = model.decoder.cross_attn
    rows = [
        additive_attention(states[:, t], memory, memory, attn.w_q.weight, attn.w_k.weight, attn.w_v)[1]
        for t in range(tgt.shape[1])
    ]  # T x (1, S)
    return torch.cat(rows)


def test_plot_attention_draws_the_models_own_additive_weights(rnn, lstm, monkeypatch, capsys):
    import matplotlib.axes

    drawn = []
    original = matplotlib.axes.Axes.imshow
    monkeypatch.setattr(matplotlib.axes.Axes, "imshow", lambda ax, m, **kw: drawn.append(m) or original(ax, m, **kw))
    out = rnn / "attention.svg"
    assert main(["plot", "attention", "--model", str(rnn / "lstm"), "--text", SENTENCE, "--out", str(out)]) == 0
    attn = lstm.attention(SENTENCE)
    assert sorted(attn.weights) == ["decoder.cross_attn"]  # the family's one attention module, one head
    assert len(drawn) == 1 and np.array_equal(drawn[0], attn.weights["decoder.cross_attn"][0])
    source, decoder_in, _, _ = lstm.walk_inputs(SENTENCE)  # what the recorded forward pass read
    src, tgt = torch.tensor([source]), torch.tensor([decoder_in])  # (1, S), (1, T)
    expected = additive_from_the_model(lstm.model, src, tgt)  # (T, S)
    assert drawn[0].shape == (len(attn.output), len(attn.source)) == tuple(expected.shape)
    np.testing.assert_allclose(drawn[0], expected.numpy(), rtol=1e-5, atol=1e-6)
    svg = out.read_text(encoding="utf-8")
    for label in {*attn.source, *attn.output}:
        assert f">{escape(label)}<" in svg
    assert "Encoder-decoder attention" in svg and "decoder.cross_attn, head 0" in svg
    capsys.readouterr()
    code = main(["plot", "attention", "--model", str(rnn / "lstm"), "--text", SENTENCE, "--layer", "1", "--out",
                 str(out)])  # fmt: skip
    assert code == 2 and "--layer 1: expected 0..0 (the model has 1 layers)" in capsys.readouterr().err
    assert main(["plot", "attention", "--model", str(rnn / "elman"), "--text", SENTENCE, "--out", str(out)]) == 2


@pytest.mark.parametrize("layer", [0, 1])
def test_explain_gates_and_states_equal_the_fused_encoder(lstm, layer):
    w = walk(lstm, SENTENCE, layer=layer)
    v, model = w.values, lstm.model
    src, _ = model_inputs(lstm, w.target_ids)
    rnn, H, S = model.encoder.rnn, model.config.d_model, src.shape[1]
    with torch.no_grad():
        x = model.encoder.embed(src)  # (1, S, D): layer 0's input
        _, (h_n, c_n) = rnn(x)  # each (L * 2, 1, H): forward direction of layer l at index 2 l
        memory = model.encode(src)  # (1, S, 2H)
        if layer == 0:  # layer 0's forward direction at step t reads only x_0..x_t: the prefix's final state
            prefix = [rnn(x[:, : t + 1])[1] for t in range(S)]  # S x ((L * 2, 1, H), (L * 2, 1, H))
            h = torch.stack([p[0][0, 0] for p in prefix])  # (S, H)
            c = torch.stack([p[1][0, 0] for p in prefix])  # (S, H)
            gates = torch.cat([torch.zeros(1, H), h[:-1]]) @ rnn.weight_hh_l0.T + rnn.bias_hh_l0
            gates = (gates + x[0] @ rnn.weight_ih_l0.T + rnn.bias_ih_l0).chunk(4, dim=-1)  # 4 x (S, H): i f g o
            for key, z, act in zip("ifgo", gates, (torch.sigmoid, torch.sigmoid, torch.tanh, torch.sigmoid),
                                   strict=True):  # fmt: skip
                np.testing.assert_allclose(v[f"encoder.rnn.{key}"], act(z)[:, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
            np.testing.assert_allclose(v["encoder.rnn.x"], x[0, :, :DIMS].numpy(), rtol=1e-6)
        else:  # the top layer: its forward half is the memory itself, its last cell the c it returned
            h = memory[0, :, :H]  # (S, H)
            np.testing.assert_allclose(v["encoder.rnn.c"][-1], c_n[2 * layer, 0, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v["encoder.rnn.h"], h[:, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(v["encoder.rnn.h"][-1], h_n[2 * layer, 0, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
    if layer == 0:
        np.testing.assert_allclose(v["encoder.rnn.c"], c[:, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
    assert w.shapes["encoder.rnn.f"] == [S, H] and w.recurrent["layer"] == layer
    assert float(v["encoder.rnn.max_diff"]) < 1e-5  # the report's own check: readable steps = fused layer
    with pytest.raises(UserError, match=r"--layer 2: expected 0\.\.1 \(the encoder has 2 recurrent layers\)"):
        walk(lstm, SENTENCE, layer=2)


def test_explain_attention_equals_the_recorders_weights(lstm):
    w = walk(lstm, SENTENCE)
    v, model = w.values, lstm.model
    src, tgt = model_inputs(lstm, w.target_ids)
    with torch.no_grad(), record_attention(model) as recorder:
        model(src, tgt)
        memory = model.encode(src)  # (1, S, E)
    weights = recorder.weights["decoder.cross_attn"][-1][0, 0]  # (1, 1, T, S) -> (T, S): the model's own
    np.testing.assert_allclose(v["decoder.cross_attn.weights"], weights.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(v["decoder.cross_attn.weights"], additive_from_the_model(model, src, tgt).numpy(),
                               rtol=1e-5, atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(torch.softmax(torch.tensor(v["decoder.cross_attn.scores"]), -1).numpy(),
                               weights.numpy(), rtol=1e-5, atol=1e-6)  # fmt: skip
    context = (weights @ memory[0])[:, :DIMS]  # (T, S) @ (S, E) -> (T, E), first DIMS
    np.testing.assert_allclose(v["decoder.cross_attn.context"], context.numpy(), rtol=1e-5, atol=1e-6)
    assert len(w.target) == v["decoder.cross_attn.weights"].shape[0] > 1  # several decoder steps shown


@pytest.mark.parametrize(
    ("variant", "names"),
    [("lstm", ("input gate", "forget gate", "candidate g_t", "output gate", "cell state c_t")),
     ("gru", ("reset gate", "update gate", "candidate n_t")), ("elman", ("pre-activation",))],
)  # fmt: skip
def test_explain_command_writes_the_report_and_names_the_gates(rnn, variant, names, capsys):
    out = rnn / f"{variant}.html"
    assert main(["explain", "--model", str(rnn / variant), SENTENCE, "--out", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    page = out.read_text(encoding="utf-8")
    for name in (*names, "hidden state h_t"):
        assert name in page
    data = read_report(out)
    pretrained = aiayn.load(rnn / variant, device="cpu")
    assert (
        data["arch"] == "rnn"
        and data["layer"] == 0
        and data["translation"] == pretrained.translate(SENTENCE, beam=1)[0]
    )
    model = pretrained.model
    src, tgt = model_inputs(pretrained, data["target_ids"])
    with torch.no_grad(), record_attention(model) as recorder:
        logits = model(src, tgt)[0]  # (T, V)
        state = model.encoder.rnn(model.encoder.embed(src))[1]  # h_n or (h_n, c_n), each (L * directions, 1, H)
    h_n = state[0] if isinstance(state, tuple) else state
    # layer 0's last forward step is the state the fused layer returned for it (index 0)
    np.testing.assert_allclose(data["values"]["encoder.rnn.h"][-1], h_n[0, 0, :DIMS].numpy(), rtol=1e-4, atol=1e-5)
    assert data["values"]["final.top_ids"] == logits.topk(5, dim=-1).indices.tolist()
    if variant == "elman":
        assert "No attention" in page and "decoder.cross_attn.weights" not in data["values"]
    else:
        recorded = recorder.weights["decoder.cross_attn"][-1][0, 0]  # (1, 1, T, S) -> (T, S)
        np.testing.assert_allclose(data["values"]["decoder.cross_attn.weights"], recorded.numpy(), rtol=1e-5, atol=1e-6)


def test_translate_evaluate_and_perplexity_commands(rnn, lstm, capsys):
    sources, refs = rnn / "src.txt", rnn / "ref.txt"
    sources.write_text("two dogs play\na man rides a bike\n", encoding="utf-8")
    refs.write_text("zwei hunde spielen\nein mann fährt rad\n", encoding="utf-8")
    lines = sources.read_text(encoding="utf-8").splitlines()
    for beam in ("1", "4"):
        capsys.readouterr()
        assert main(["translate", "--model", str(rnn / "lstm"), "--input", str(sources), "--beam", beam]) == 0
        assert capsys.readouterr().out.splitlines() == lstm.translate(lines, beam=int(beam))
    assert lstm.translate(lines, beam=1) != ["", ""]  # real outputs, not an empty search
    assert main(["evaluate", "--model", str(rnn / "lstm"), "--src", str(sources), "--ref", str(refs), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert 0.0 <= result["bleu"] <= 100.0
    assert main(["evaluate", "--model", str(rnn / "lstm"), "--src", str(sources), "--ref", str(refs)]) == 0
    assert capsys.readouterr().out.startswith("BLEU ")
    assert main(["perplexity", "--model", str(rnn / "lstm"), "--text", str(refs), "--src", str(sources), "--json"]) == 0
    expected = lstm.perplexity(refs.read_text(encoding="utf-8").splitlines(), sources=lines)
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)


def test_average_of_two_checkpoints_is_their_mean(rnn, capsys):
    out = rnn / "averaged"
    assert main(["average", "--models", str(rnn / "lstm"), str(rnn / "lstm-seed1"), "--out", str(out)]) == 0
    a, b = load_file(rnn / "lstm" / "model.safetensors"), load_file(rnn / "lstm-seed1" / "model.safetensors")
    averaged = load_file(out / "model.safetensors")
    assert sorted(averaged) == sorted(a) and any(".rnn." in name for name in averaged)
    for name, tensor in averaged.items():
        torch.testing.assert_close(tensor, (a[name].double() + b[name].double()).div(2).to(tensor.dtype))
    assert isinstance(aiayn.load(out, device="cpu").translate(SENTENCE)[0], str)


def test_serve_translates_and_shows_the_attention(lstm):
    api = TestClient(create_app(lstm, Settings()), base_url="http://127.0.0.1", raise_server_exceptions=False)
    assert api.get("/health").json() == {"status": "ok", "arch": "rnn"}
    r = api.post("/v1/translate", json={"text": [SENTENCE, "a man rides"], "beam": 4})
    assert r.status_code == 200 and r.json() == {"translations": lstm.translate([SENTENCE, "a man rides"], beam=4)}
    body = api.post("/v1/attention", json={"text": SENTENCE}).json()
    expected = lstm.attention(SENTENCE)
    assert body["source"] == expected.source and body["output"] == expected.output
    assert body["layers"] == 1 and body["heads"] == 1  # as recorded: one module, one head (n_heads is unused)
    cross = expected.weights["decoder.cross_attn"]
    assert body["weights"] == {"decoder.cross_attn": [[[round(float(x), 4) for x in r] for r in h] for h in cross]}
    assert "moduleName" in api.get("/").text  # the page finds "decoder.cross_attn" as well as layered names


def test_load_attention_is_one_head_of_additive_weights(rnn, lstm):
    attn = lstm.attention(SENTENCE, beam=4)
    weights = attn.weights["decoder.cross_attn"]  # (1, T, S)
    assert weights.shape == (1, len(attn.output), len(attn.source)) and attn.text == lstm.translate(SENTENCE, beam=4)[0]
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)
    assert aiayn.load(rnn / "elman", device="cpu").attention(SENTENCE).weights == {}  # rnn_attention none
