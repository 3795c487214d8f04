"""`tokenizer.kind: sentencepiece`: a unigram SentencePiece tokenizer trained in Marian's layout (source.spm,
target.spm, vocab.json; </s> 0, <unk> 1, <pad> last and the decoder's start), and a run trained with it: its
folder and checkpoints keep the files, the model's ids are the tokenizer's, it loads, translates and resumes."""

from __future__ import annotations

import json

import pytest
import tiny_run
import yaml

pytest.importorskip("sentencepiece")
pytest.importorskip("sacremoses")

from hf_models import EN, ZH  # noqa: E402
from tiny_run import aiayn, metrics  # noqa: E402

from aiayn.inference import load  # noqa: E402
from aiayn.tokenizer_spm_train import train_sentencepiece  # noqa: E402


def test_trained_sentencepiece_has_marians_layout_and_round_trips():
    tokenizer = train_sentencepiece(EN + ZH, vocab_size=120)
    vocab = json.loads(tokenizer.files()["vocab.json"])
    assert vocab["</s>"] == 0 and vocab["<unk>"] == 1 and vocab["<pad>"] == max(vocab.values())
    assert tokenizer.vocab_size == len(vocab) <= 120 and len(set(vocab.values())) == len(vocab)
    assert tokenizer.files()["source.spm"] == tokenizer.files()["target.spm"]
    ids = tokenizer.special_ids
    assert (ids.eos, ids.unk, ids.pad, ids.bos) == (0, 1, vocab["<pad>"], vocab["<pad>"])
    for text in (EN[0], ZH[0]):
        encoded = tokenizer.encode_target_batch([text])[0]
        assert tokenizer.decode(encoded) == text and ids.unk not in encoded
    assert tokenizer.encode("A man") == tokenizer.encode_target_batch(["A man"])[0]  # one model for both sides
    assert ids.unk in tokenizer.encode("Ωmega")  # a character it never saw is the unknown token


def test_a_run_with_a_sentencepiece_tokenizer(tmp_path):
    run = tmp_path / "run"
    args = [*tiny_run.TINY, "--tokenizer.kind", "sentencepiece", "--tokenizer.vocab_size", "80", "--train.out_dir", run]
    result = aiayn("train", *args)
    assert result.returncode == 0, result.stderr
    assert "training a sentencepiece tokenizer" in result.stdout
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (run / "last" / name).read_bytes() == (run / name).read_bytes()
    assert json.loads((run / "last" / "manifest.json").read_text())["tokenizer"] == "sentencepiece"
    model = yaml.safe_load((run / "config.yaml").read_text())["model"]
    pad = json.loads((run / "vocab.json").read_text())["<pad>"]
    assert (model["eos_id"], model["unk_id"], model["pad_id"], model["bos_id"]) == (0, 1, pad, pad)
    pretrained = load(run, device="cpu")
    assert type(pretrained.tokenizer).__name__ == "SentencePieceTokenizer"
    assert isinstance(pretrained.translate(["12 34 56"], beam=2)[0], str)
    # Resuming reuses the run's tokenizer (the same ids) and continues the same run.
    more = aiayn("train", *args, "--resume", "auto", "--train.max_steps", "16")
    assert more.returncode == 0, more.stderr
    assert "training a sentencepiece tokenizer" not in more.stdout and "resumed from" in more.stdout
    assert metrics(run)[-1]["step"] == 16
    # tokenizer.path: a folder of those files, for a new run that keeps the same ids.
    other = aiayn("train", *tiny_run.TINY, "--tokenizer.kind", "sentencepiece", "--tokenizer.path", run,
                  "--train.out_dir", tmp_path / "other", "--train.max_steps", "2")  # fmt: skip
    assert other.returncode == 0, other.stderr
    assert (tmp_path / "other" / "last" / "vocab.json").read_bytes() == (run / "vocab.json").read_bytes()
