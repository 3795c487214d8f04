"""`aiayn export --to ctranslate2`: CTranslate2's own Translator / Generator, given the tokenizer's plain pieces,
produce aiayn's greedy and beam tokens (post-LN sinusoidal, pre-LN learned with an output bias, SwiGLU + RMSNorm,
a decoder-only LM), and what its spec cannot express is one line."""

from __future__ import annotations

import json

import pytest
import torch

ctranslate2 = pytest.importorskip("ctranslate2")

from hf_models import EN, TEXTS, ZH, aiayn_folder  # noqa: E402

from aiayn.cli import main  # noqa: E402
from aiayn.config import DecodeConfig  # noqa: E402
from aiayn.decoding.texts import translate_texts  # noqa: E402
from aiayn.inference import load  # noqa: E402
from aiayn.interop import export_model  # noqa: E402
from aiayn.interop.ct2 import ctranslate2_tokens  # noqa: E402
from aiayn.tokenizer import train_tokenizer  # noqa: E402

NEW_TOKENS = 16


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(EN + ZH, vocab_size=320, min_frequency=1)


def _write(folder, tokenizer, arch: str, **overrides):
    return aiayn_folder(folder, tokenizer, arch, seed=0, **overrides)


VARIANTS = {
    "post-LN sinusoidal": {},
    "pre-LN learned, output bias": dict(norm="pre", positional="learned", output_bias=True),
    "SwiGLU RMSNorm, no biases": dict(norm="pre", norm_type="rmsnorm", activation="swiglu", bias=False),
}


@pytest.mark.parametrize("overrides", VARIANTS.values(), ids=VARIANTS.keys())
def test_translator_gives_aiayns_greedy_and_beam_tokens(tmp_path, tokenizer, overrides):
    folder = _write(tmp_path / "aiayn", tokenizer, "seq2seq", **overrides)
    assert main(["export", "--model", str(folder), "--to", "ctranslate2", "--out", str(tmp_path / "ct2")]) == 0
    config = json.loads((tmp_path / "ct2" / "config.json").read_text())
    assert config["add_source_eos"] and config["decoder_start_token"] == "<bos>"
    translator = ctranslate2.Translator(str(tmp_path / "ct2"), device="cpu")
    ours = load(folder, device="cpu")
    tokens = ctranslate2_tokens(ours.tokenizer, ours.model.config.vocab_size)
    sources = [[tokens[i] for i in ids] for ids in ours.tokenizer.encode_batch(TEXTS)]
    banned = [[t] for t in config["aiayn_never_emit"]]
    for beam in (1, 4):
        theirs = translator.translate_batch(sources, beam_size=beam, length_penalty=0.0,
                                            max_decoding_length=NEW_TOKENS, suppress_sequences=banned)  # fmt: skip
        decode = DecodeConfig(beam_size=beam, alpha=0.0, max_len=NEW_TOKENS)
        hyps = translate_texts(ours.model, ours.tokenizer, TEXTS, decode, torch.device("cpu"))
        expected = [[tokens[i] for i in h[0].tokens] for h in hyps]
        assert [r.hypotheses[0] for r in theirs] == expected
        assert len({tuple(e) for e in expected}) > 1


def test_generator_gives_aiayns_greedy_continuations(tmp_path, tokenizer):
    folder = _write(tmp_path / "aiayn", tokenizer, "lm", norm="pre", positional="learned")
    export_model(folder, "ctranslate2", tmp_path / "ct2")
    generator = ctranslate2.Generator(str(tmp_path / "ct2"), device="cpu")
    ours = load(folder, device="cpu")
    tokens = ctranslate2_tokens(ours.tokenizer, ours.model.config.vocab_size)
    index = {t: i for i, t in enumerate(tokens)}
    for text in TEXTS[:3]:
        prompt = [tokens[i] for i in ours.tokenizer.encode(text)]
        result = generator.generate_batch([prompt], max_length=NEW_TOKENS, min_length=NEW_TOKENS, sampling_topk=1,
                                          include_prompt_in_result=False)  # fmt: skip
        theirs = ours.tokenizer.decode([index[t] for t in result[0].sequences[0]])
        assert theirs == ours.generate(text, max_new_tokens=NEW_TOKENS, temperature=0.0)


@pytest.mark.parametrize(
    ("arch", "overrides", "message"),
    [
        ("rnn", {}, "model.arch='rnn' cannot be exported to ctranslate2"),
        ("seq2seq", dict(positional="rope", norm="pre"), "model.positional='rope' cannot be exported to ctranslate2"),
    ],
)
def test_what_ctranslate2_cannot_express_is_one_line(tmp_path, tokenizer, capsys, arch, overrides, message):
    folder = _write(tmp_path / "aiayn", tokenizer, arch, **overrides)
    assert main(["export", "--model", str(folder), "--to", "ctranslate2", "--out", str(tmp_path / "ct2")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "ct2").exists()
