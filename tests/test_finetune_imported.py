"""`aiayn train --init-from` an imported model folder: the architecture and the tokenizer come from the folder
(a Marian's SentencePiece files, targets encoded with target.spm; a GPT-2's byte-level BPE), the training
settings from the config; the run's checkpoints keep that tokenizer, load, resume and average."""

from __future__ import annotations

import pytest

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")

from hf_models import EN, ZH, gpt2_folder, marian_folder  # noqa: E402
from tiny_run import aiayn, metrics  # noqa: E402

from aiayn.data.corpus import TokenCorpus  # noqa: E402
from aiayn.inference import load  # noqa: E402
from aiayn.interop import import_model  # noqa: E402

STEPS = ["--train.max_steps", "4", "--train.max_tokens", "256", "--train.log_every", "1", "--train.eval_every", "4",
         "--train.save_every", "2", "--train.eval_bleu_sentences", "4", "--optim.warmup", "2",
         "--model.dropout", "0.0"]  # fmt: skip


def _pairs(tmp_path):
    targets = (ZH * 2)[: len(EN)]
    for split in ("train", "valid"):
        (tmp_path / f"{split}.en").write_text("\n".join(EN) + "\n", encoding="utf-8")
        (tmp_path / f"{split}.zh").write_text("\n".join(targets) + "\n", encoding="utf-8")
    data = []
    for split in ("train", "valid"):
        data += [f"--data.{split}_src", tmp_path / f"{split}.en", f"--data.{split}_tgt", tmp_path / f"{split}.zh"]
    return data, targets


def test_fine_tuning_an_imported_marian_keeps_its_sentencepiece_tokenizer(tmp_path):
    imported = import_model(marian_folder(tmp_path / "marian"), tmp_path / "aiayn")
    data, targets = _pairs(tmp_path)
    run = tmp_path / "run"
    # --model.d_model 512 (the defaults' model) is the config's: the folder's architecture wins, and says so
    result = aiayn("train", "--init-from", imported, "--train.out_dir", run, "--model.d_model", "512", *data, *STEPS)
    assert result.returncode == 0, result.stderr
    assert "its architecture, not the config's: " in result.stdout and "model.d_model: 512 -> 32" in result.stdout
    assert [e["step"] for e in metrics(run) if "loss" in e][:4] == [1, 2, 3, 4]
    for name in ("source.spm", "target.spm", "vocab.json"):
        assert (run / name).read_bytes() == (imported / name).read_bytes()
        assert (run / "last" / name).read_bytes() == (imported / name).read_bytes()
    tuned, before = load(run / "last", device="cpu"), load(imported, device="cpu")
    assert type(tuned.tokenizer).__name__ == "SentencePieceTokenizer"
    assert tuned.model.config.special_ids == before.model.config.special_ids  # carried, not remapped
    weight = "decoder.layers.0.ffn.w1.weight"
    assert not tuned.model.state_dict()[weight].equal(before.model.state_dict()[weight])  # trained
    # The targets were encoded with target.spm, the sources with source.spm.
    cache = next((run / "cache").glob("train-*"))
    corpus = TokenCorpus.open(cache)
    tok = before.tokenizer
    assert corpus.tgt(0).tolist() == tok.encode_target_batch([targets[0]])[0]
    assert corpus.src(0).tolist() == tok.encode_batch([EN[0]])[0]
    assert tok.encode_target_batch([targets[0]]) != tok.encode_batch([targets[0]])
    # Resume (with --init-from again, which gives the tokenizer) and averaging read the same kind of folder.
    resumed = aiayn("train", "--init-from", imported, "--train.out_dir", run, "--resume", "auto", *data, *STEPS,
                    "--train.max_steps", "6")  # fmt: skip
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    averaged = aiayn("average", "--models", run / "checkpoints" / "step-000004", run / "checkpoints" / "step-000006",
                     "--out", tmp_path / "avg")  # fmt: skip
    assert averaged.returncode == 0, averaged.stderr
    assert type(load(tmp_path / "avg", device="cpu").tokenizer).__name__ == "SentencePieceTokenizer"


def test_fine_tuning_an_imported_gpt2_on_plain_text(tmp_path):
    imported = import_model(gpt2_folder(tmp_path / "gpt2"), tmp_path / "aiayn")
    text = tmp_path / "text.txt"
    text.write_text("\n".join(EN + ZH) * 4 + "\n", encoding="utf-8")
    run = tmp_path / "run"
    result = aiayn("train", "--init-from", imported, "--train.out_dir", run, "--data.train_text", text,
                   "--model.arch", "lm", "--train.block_size", "32", "--train.batch_size", "4", *STEPS[:-2],
                   "--optim.schedule", "inverse_sqrt", "--optim.lr", "0.003")  # fmt: skip
    assert result.returncode == 0, result.stderr
    tuned = load(run / "last", device="cpu")
    assert type(tuned.tokenizer).__name__ == "HFTokenizer"
    assert (run / "last" / "tokenizer.json").read_bytes() == (imported / "tokenizer.json").read_bytes()
    first = [e for e in metrics(run) if "lr" in e]  # the training steps
    assert first[-1]["loss"] < first[0]["loss"]  # it learns the text
