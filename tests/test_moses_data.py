"""data.moses and data.lowercase (aiayn.tokenizer_moses.PreprocessedText): the preprocessing of older Multi30k and
fairseq setups as part of the tokenizer, so that training, validation, `aiayn.load` and every command see the same
text: sources Moses-tokenized by the source language's rules, targets by the target's, outputs detokenized."""

import json

import pytest
import yaml
from tiny_run import aiayn

import aiayn as api
from aiayn.config import DataConfig
from aiayn.errors import ConfigError
from aiayn.tokenizer import train_tokenizer
from aiayn.tokenizer_moses import PreprocessedText, detokenize, preprocessed, tokenize

pytest.importorskip("sacremoses")

EN = ["A man (in a blue shirt) sleeps.", "Two dogs run, while it rains.", "A woman reads a book."] * 40
DE = ["Ein Mann (im blauen Hemd) schläft.", "Zwei Hunde rennen, während es regnet.", "Eine Frau liest ein Buch."] * 40


def test_the_wrapper_preprocesses_sources_and_targets_and_detokenizes_outputs():
    inner = train_tokenizer([tokenize(t, "de", lowercase=True) for t in EN + DE], vocab_size=200, min_frequency=1)
    tok = preprocessed(inner, "en-de", True)
    assert isinstance(tok, PreprocessedText) and tok.moses_target == "de"
    assert tok.source("A man (in a shirt).") == "a man ( in a shirt ) ."
    assert tok.encode("A man (in a shirt).") == inner.encode("a man ( in a shirt ) .")
    assert tok.encode_batch(EN[:2]) == inner.encode_batch([tokenize(t, "en", lowercase=True) for t in EN[:2]])
    assert tok.encode_target_batch(DE[:2]) == inner.encode_batch([tokenize(t, "de", lowercase=True) for t in DE[:2]])
    ids = inner.encode("ein mann ( im blauen hemd ) schläft .")
    assert tok.decode(ids) == detokenize(inner.decode(ids), "de") == "ein mann (im blauen hemd) schläft."
    assert tok.vocab_size == inner.vocab_size and tok.special_ids == inner.special_ids
    assert tok.fingerprint() != inner.fingerprint() != preprocessed(inner, "en-de", False).fingerprint()
    assert preprocessed(inner, "", False) is inner
    lower = preprocessed(inner, "", True)
    assert lower.encode("Ein Mann") == inner.encode("ein mann") and lower.moses_target == ""


@pytest.mark.parametrize(("fields", "message"), [
    ({"moses": "en_de"}, "data.moses='en_de': expected SRC-TGT language codes, e.g. en-de"),
    ({"moses": "EN-DE"}, "expected SRC-TGT language codes"),
    ({"moses": "en-de", "train_text": "x.txt"}, "apply to translation pairs, not to data.train_text"),
    ({"lowercase": True, "train_text": "x.txt"}, "apply to translation pairs"),
])  # fmt: skip
def test_bad_settings_are_one_line(fields, message):
    with pytest.raises(ConfigError, match=message):
        DataConfig(**fields)


def _files(tmp_path):
    for name, lines in (("train.en", EN), ("train.de", DE), ("val.en", EN[:6]), ("val.de", DE[:6])):
        (tmp_path / name).write_text("\n".join(lines) + "\n", encoding="utf-8")
    return [
        "--data.train_src", tmp_path / "train.en", "--data.train_tgt", tmp_path / "train.de",
        "--data.valid_src", tmp_path / "val.en", "--data.valid_tgt", tmp_path / "val.de",
        "--data.moses", "en-de", "--data.lowercase", "true", "--tokenizer.vocab_size", "400",
        "--tokenizer.min_frequency", "1", "--model.d_model", "32", "--model.n_heads", "2",
        "--model.n_encoder_layers", "1", "--model.n_decoder_layers", "1", "--model.d_ff", "64",
        "--train.max_steps", "4", "--train.max_tokens", "256", "--train.eval_every", "4", "--train.save_every", "4",
        "--train.log_every", "1", "--train.eval_bleu_sentences", "6", "--train.threads", "1",
    ]  # fmt: skip


def test_a_run_trains_on_preprocessed_text_and_its_model_reads_and_writes_alike(tmp_path):
    run, args = tmp_path / "run", _files(tmp_path)
    result = aiayn("train", *args, "--train.out_dir", run)
    assert result.returncode == 0, result.stderr
    vocab = json.loads((run / "tokenizer.json").read_text(encoding="utf-8"))["model"]["vocab"]
    learnt = [t for t in vocab if not t.startswith("<")]  # the text's characters and merges; not bytes or specials
    assert any(len(t) > 1 for t in learnt) and not any(c.isupper() for t in learnt for c in t)  # lowercased text
    valid = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"split"' in line]
    assert valid[-1]["bleu_tok_lc_signature"].startswith("pre:moses-de+lc|")
    saved = yaml.safe_load((run / "last" / "config.yaml").read_text(encoding="utf-8"))
    assert (saved["data"]["moses"], saved["data"]["lowercase"]) == ("en-de", True)
    model = api.load(run / "last")
    assert isinstance(model.tokenizer, PreprocessedText) and model.tokenizer.langs == ("en", "de")
    assert model.tokenizer.encode("A Man.") == model.tokenizer.inner.encode("a man .")
    changed = aiayn("train", *args, "--data.lowercase", "false", "--train.out_dir", run, "--train.max_steps", "8",
                    "--resume", "auto")  # fmt: skip
    assert changed.returncode == 2 and len(changed.stderr.strip().splitlines()) == 1, changed.stderr
    assert "data.lowercase: True then, False now" in changed.stderr and "training data" not in changed.stderr


def test_export_of_such_a_model_is_refused_in_one_line(tmp_path):
    run, args = tmp_path / "run", _files(tmp_path)
    assert aiayn("train", *args, "--train.max_steps", "2", "--train.out_dir", run).returncode == 0
    result = aiayn("export", "--model", run, "--to", "ctranslate2", "--out", tmp_path / "ct2")
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert "trained on Moses-tokenized lowercased text (data.moses / data.lowercase)" in result.stderr
    assert not (tmp_path / "ct2").exists()
