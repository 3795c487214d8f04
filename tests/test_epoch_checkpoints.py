"""train.save_every_epoch (a checkpoint at the end of every pass over the training pairs, as fairseq saves) and
`aiayn average --run DIR --last N` (the run's last N checkpoints by step), the averaging of published setups."""

import torch
from safetensors.torch import load_file
from test_trainer import LM_TEXT, lm_args
from tiny_run import TINY, aiayn

from aiayn.data.batching import token_batches
from aiayn.data.corpus import TokenCorpus


def test_epoch_ends_are_saved_and_the_last_ones_average(tmp_path):
    out = tmp_path / "run"
    result = aiayn("train", *TINY, "--train.out_dir", out, "--train.max_steps", "45", "--train.save_every", "1000",
                   "--train.eval_every", "1000", "--train.save_every_epoch", "true",
                   "--train.keep_last", "10")  # fmt: skip
    assert result.returncode == 0, result.stderr
    corpus = TokenCorpus.open(next((out / "cache").glob("train-*")))
    per_epoch = len(token_batches(corpus.src_lengths, corpus.tgt_lengths, 256, seed=3, epoch=0))  # TINY's
    assert 2 <= 45 // per_epoch < 45  # several epochs in the run, each of several steps
    expected = sorted({k * per_epoch for k in range(1, 45 // per_epoch + 1)} | {45})  # + the last step
    kept = sorted(int(p.name.split("-")[1]) for p in (out / "checkpoints").iterdir())
    assert kept == expected
    result = aiayn("average", "--run", out, "--last", "2", "--out", tmp_path / "avg")
    assert result.returncode == 0, result.stderr
    names = [f"step-{s:06d}" for s in expected[-2:]]
    assert f"averaged 2 checkpoints ({', '.join(names)})" in result.stdout
    a, b = (load_file(str(out / "checkpoints" / n / "model.safetensors")) for n in names)
    avg = load_file(str(tmp_path / "avg" / "model.safetensors"))
    for name in avg:
        torch.testing.assert_close(avg[name], (a[name].double() + b[name].double()).div(2).float(), rtol=0, atol=1e-7)
    too_many = aiayn("average", "--run", out, "--last", str(len(kept) + 1), "--out", tmp_path / "avg2")
    assert too_many.returncode == 2 and f"fewer than --last {len(kept) + 1}" in too_many.stderr
    assert len(too_many.stderr.strip().splitlines()) == 1


def test_epochs_of_a_language_model_are_refused_in_one_line(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    result = aiayn("train", *lm_args(text), "--train.save_every_epoch", "true", "--train.out_dir", tmp_path / "run")
    assert result.returncode == 2 and "train.save_every_epoch applies to translation pairs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
