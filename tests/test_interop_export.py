"""`aiayn export --to hf`: aiayn models (random weights, aiayn's BPE tokenizer) as Hugging Face folders that
transformers loads as they are and that generate aiayn's tokens; importing the export gives the model back."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from hf_models import EN, TEXTS, ZH, hf_outputs  # noqa: E402
from transformers import AutoTokenizer, GPT2LMHeadModel, MarianMTModel  # noqa: E402

from aiayn.cli import main  # noqa: E402
from aiayn.config import DecodeConfig, ModelConfig  # noqa: E402
from aiayn.decoding.texts import translate_texts  # noqa: E402
from aiayn.inference import load  # noqa: E402
from aiayn.interop import export_model, import_model  # noqa: E402
from aiayn.model import build  # noqa: E402
from aiayn.modelfile import load as load_folder  # noqa: E402
from aiayn.tokenizer import train_tokenizer  # noqa: E402
from aiayn.train import checkpoint as ckpt  # noqa: E402

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(EN + ZH, vocab_size=320, min_frequency=1)


def _write(folder, tokenizer, arch: str, **overrides):
    torch.manual_seed(0)
    config = ModelConfig(arch=arch, vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4,
                         n_encoder_layers=0 if arch == "lm" else 2, n_decoder_layers=2, d_ff=64, max_len=128,
                         dropout=0.0, **overrides)  # fmt: skip
    model = build(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # sharper than random: the search choices matter
    ckpt.save_checkpoint(folder, model=model, config={"model": config.to_dict()},
                         tokenizer_json=tokenizer.to_json().encode())  # fmt: skip
    return folder


def test_seq2seq_exports_to_a_marian_folder_that_generates_aiayns_tokens(tmp_path, tokenizer):
    folder = _write(tmp_path / "aiayn", tokenizer, "seq2seq")
    assert main(["export", "--model", str(folder), "--to", "hf", "--out", str(tmp_path / "hf")]) == 0
    hf = MarianMTModel.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    translator = load(folder, device="cpu")
    eos, pad = translator.model.config.eos_id, translator.model.config.pad_id
    assert tok(TEXTS).input_ids == [ids + [eos] for ids in translator.tokenizer.encode_batch(TEXTS)]
    batch = tok(TEXTS, return_tensors="pt", padding=True)
    for beam in (1, 4):
        expected = hf_outputs(hf, batch, beam, pad, eos, NEW_TOKENS)
        decode = DecodeConfig(beam_size=beam, alpha=0.0, max_len=NEW_TOKENS)
        hyps = translate_texts(translator.model, translator.tokenizer, TEXTS, decode, torch.device("cpu"))
        assert [h[0].tokens for h in hyps] == expected
        assert translator.translate(TEXTS, beam=beam, alpha=0.0, max_len=NEW_TOKENS) == [
            " ".join(tok.decode(e, skip_special_tokens=True).splitlines()) for e in expected
        ]


def _same_model(a, b) -> None:
    model_a, tok_a, _, _ = load_folder(a)
    model_b, tok_b, _, _ = load_folder(b)
    assert model_a.config == model_b.config
    assert tok_a.fingerprint() == tok_b.fingerprint()
    state_b = model_b.state_dict()
    for name, tensor in model_a.state_dict().items():
        torch.testing.assert_close(state_b[name], tensor, atol=2e-6, rtol=0)  # the permutation is exact; fp32


@pytest.mark.parametrize("arch", ["seq2seq", "lm"])
def test_import_of_the_export_is_the_model(tmp_path, tokenizer, arch):
    lm = dict(norm="pre", positional="learned", scale_embeddings=False) if arch == "lm" else {}
    folder = _write(tmp_path / "aiayn", tokenizer, arch, **lm)
    export_model(folder, "hf", tmp_path / "hf")
    _same_model(folder, import_model(tmp_path / "hf", tmp_path / "back"))


def test_lm_exports_to_a_gpt2_folder_that_generates_aiayns_tokens(tmp_path, tokenizer):
    folder = _write(tmp_path / "aiayn", tokenizer, "lm", norm="pre", positional="learned", scale_embeddings=False)
    export_model(folder, "hf", tmp_path / "hf")
    hf = GPT2LMHeadModel.from_pretrained(tmp_path / "hf").eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    generator = load(folder, device="cpu")
    for text in TEXTS[:3]:
        ids = tok(text).input_ids
        assert ids == generator.tokenizer.encode(text)
        out = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS,
                          pad_token_id=generator.model.config.pad_id)[0, len(ids) :].tolist()  # fmt: skip
        assert generator.generate(text, max_new_tokens=NEW_TOKENS, temperature=0.0) == generator.tokenizer.decode(out)


def test_what_hf_cannot_express_is_one_line(tmp_path, tokenizer, capsys):
    folder = _write(tmp_path / "rope", tokenizer, "lm", norm="pre", positional="rope")
    assert main(["export", "--model", str(folder), "--to", "hf", "--out", str(tmp_path / "hf")]) == 2
    assert "ModelConfig.positional='rope' cannot be converted to GPT-2" in capsys.readouterr().err
    rnn = _write(tmp_path / "rnn", tokenizer, "rnn")
    assert main(["export", "--model", str(rnn), "--to", "hf", "--out", str(tmp_path / "hf2")]) == 2
    assert "model.arch='rnn' cannot be exported to hf" in capsys.readouterr().err
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    good = _write(tmp_path / "good", tokenizer, "seq2seq")
    assert main(["export", "--model", str(good), "--to", "hf", "--out", str(tmp_path / "full")]) == 2
    assert "exists and is not empty" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"
