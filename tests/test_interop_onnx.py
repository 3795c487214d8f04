"""`aiayn export --to onnx`: the exported encoder and decoder step (or LM step), run by onnxruntime through
`aiayn.interop.onnx.greedy`, give aiayn's greedy tokens — for the paper's model, a pre-LN RoPE + SwiGLU + RMSNorm
variant, a language model and an imported Marian (its SentencePiece tokenizer travels with the graphs); the step
graph's logits equal aiayn's; what the export cannot express is one line."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from hf_models import EN, TEXTS, ZH, aiayn_folder, marian_folder  # noqa: E402

from aiayn.cli import main  # noqa: E402
from aiayn.config import DecodeConfig  # noqa: E402
from aiayn.decoding.texts import translate_texts  # noqa: E402
from aiayn.inference import load  # noqa: E402
from aiayn.interop import export_model, import_model  # noqa: E402
from aiayn.interop import onnx as aiayn_onnx  # noqa: E402
from aiayn.tokenizer import train_tokenizer  # noqa: E402

NEW_TOKENS = 12


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(EN + ZH, vocab_size=320, min_frequency=1)


def _write(folder, tokenizer, arch: str, **overrides):
    return aiayn_folder(folder, tokenizer, arch, seed=1, **overrides)


def _aiayn_greedy(folder, texts, max_len):
    ours = load(folder, device="cpu")
    hyps = translate_texts(ours.model, ours.tokenizer, texts, DecodeConfig(beam_size=1, max_len=max_len),
                           torch.device("cpu"))  # fmt: skip
    return [h[0].tokens if h is not None else [] for h in hyps], ours


VARIANTS = {
    "post-LN sinusoidal": {},
    "pre-LN RoPE SwiGLU RMSNorm": dict(norm="pre", positional="rope", activation="swiglu", norm_type="rmsnorm"),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_onnx_greedy_gives_aiayns_tokens(tmp_path, tokenizer, overrides):
    folder = _write(tmp_path / "aiayn", tokenizer, "seq2seq", **overrides)
    assert main(["export", "--model", str(folder), "--to", "onnx", "--out", str(tmp_path / "onnx")]) == 0
    texts = [*TEXTS, "   "]  # padding in the batch, Chinese, characters the tokenizer never saw, a blank line
    expected, ours = _aiayn_greedy(folder, texts, NEW_TOKENS)
    assert aiayn_onnx.greedy_ids(tmp_path / "onnx", texts, NEW_TOKENS) == expected
    assert len({tuple(e) for e in expected}) > 2 and expected[-1] == []
    assert aiayn_onnx.greedy(tmp_path / "onnx", texts[:2], NEW_TOKENS) == ours.translate(texts[:2], beam=1,
                                                                                          max_len=NEW_TOKENS)
    # The default length limit (source length + 50, within the model's 128 positions), as aiayn's.
    assert aiayn_onnx.greedy_ids(tmp_path / "onnx", texts[:2]) == _aiayn_greedy(folder, texts[:2], None)[0]


def test_decoder_step_logits_equal_aiayns(tmp_path, tokenizer):
    import onnxruntime

    folder = _write(tmp_path / "aiayn", tokenizer, "seq2seq")
    export_model(folder, "onnx", tmp_path / "onnx")
    model = load(folder, device="cpu").model
    src = torch.tensor([tokenizer.encode(TEXTS[0]) + [model.config.eos_id]])  # (1, S)
    tgt = torch.tensor([[model.config.bos_id, 40, 41, 42]])  # (1, 4)
    with torch.no_grad():
        expected = model(src, tgt)[0].numpy()  # (4, V): teacher-forced, no cache
    encoder = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "encoder.onnx"))
    step = onnxruntime.InferenceSession(str(tmp_path / "onnx" / "decoder_step.onnx"))
    memory_kv = encoder.run(None, {"src": src.numpy()})[1:]
    past = [np.zeros((1, 4, 0, 8), np.float32)] * 4  # (B, H, 0, Dh) per layer, key and value
    for t in range(tgt.shape[1]):
        feeds = {"tgt": tgt[:, t : t + 1].numpy(), "src": src.numpy()}
        for i in range(2):
            feeds |= {f"past_key_{i}": past[2 * i], f"past_value_{i}": past[2 * i + 1],
                      f"memory_key_{i}": memory_kv[2 * i], f"memory_value_{i}": memory_kv[2 * i + 1]}  # fmt: skip
        logits, *past = step.run(None, feeds)
        np.testing.assert_allclose(logits[0], expected[t], atol=2e-5, rtol=1e-5)
    meta = json.loads((tmp_path / "onnx" / "onnx.json").read_text())
    assert meta["never_emit"] == [model.config.pad_id, model.config.bos_id]


def test_onnx_lm_step_gives_aiayns_greedy_continuations(tmp_path, tokenizer):
    folder = _write(tmp_path / "aiayn", tokenizer, "lm", norm="pre", positional="learned")
    export_model(folder, "onnx", tmp_path / "onnx")
    ours = load(folder, device="cpu")
    prompts = TEXTS[:3]
    expected = [ours.generate(p, max_new_tokens=NEW_TOKENS, temperature=0.0) for p in prompts]
    assert aiayn_onnx.greedy(tmp_path / "onnx", prompts, NEW_TOKENS) == expected
    assert len(set(expected)) > 1


def test_imported_marian_exports_to_onnx(tmp_path):
    import_model(marian_folder(tmp_path / "marian"), tmp_path / "aiayn")
    export_model(tmp_path / "aiayn", "onnx", tmp_path / "onnx")
    assert (tmp_path / "onnx" / "source.spm").exists()
    expected, _ = _aiayn_greedy(tmp_path / "aiayn", TEXTS, NEW_TOKENS)
    assert aiayn_onnx.greedy_ids(tmp_path / "onnx", TEXTS, NEW_TOKENS) == expected


def test_what_onnx_cannot_express_is_one_line(tmp_path, tokenizer, capsys):
    folder = _write(tmp_path / "aiayn", tokenizer, "rnn")
    assert main(["export", "--model", str(folder), "--to", "onnx", "--out", str(tmp_path / "onnx")]) == 2
    assert "model.arch='rnn' cannot be exported to onnx" in capsys.readouterr().err
    assert not (tmp_path / "onnx").exists()


def test_onnx_runner_on_a_folder_that_is_no_export_is_one_line(tmp_path, tokenizer):
    from aiayn.errors import ConfigError

    folder = _write(tmp_path / "aiayn", tokenizer, "seq2seq")  # a model folder, not an ONNX export
    with pytest.raises(ConfigError, match=r"onnx\.json: not an aiayn ONNX export"):
        aiayn_onnx.greedy(folder, ["a text"])
