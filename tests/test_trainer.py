"""Training runs end to end through the `aiayn` command: the run folder, exact resume after kill -9 / a fault in
a checkpoint write / SIGTERM, refusing incompatible resumes, averaging, early stopping, and torchrun (DDP)."""

import json
import os
import signal
import subprocess
import sys

import pytest
import tiny_run
import torch
import yaml
from safetensors.torch import load_file
from tiny_run import ROOT, aiayn, assert_same_run, final_weights, metrics

from aiayn.train.distributed import bf16_matmul_precision_works

TINY = [*tiny_run.TINY, "--train.grad_accum", "2"]
LM_TEXT = "\n".join(f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}" for i in range(300)) + "\n"


def lm_args(text_file):
    return [
        "--data.train_text", str(text_file), "--data.valid_fraction", "0.1", "--model.arch", "lm",
        "--tokenizer.kind", "char", "--model.d_model", "32", "--model.n_heads", "2", "--model.n_decoder_layers", "2",
        "--model.d_ff", "64", "--model.dropout", "0.1", "--model.max_len", "32",
        "--optim.schedule", "cosine", "--optim.lr", "0.003", "--optim.warmup", "3", "--optim.label_smoothing", "0",
        "--train.max_steps", "10", "--train.batch_size", "4", "--train.block_size", "16", "--train.save_every", "4",
        "--train.log_every", "1", "--train.eval_every", "5", "--train.seed", "5", "--train.threads", "1",
    ]  # fmt: skip


def train(out, *extra, fault=None):
    env = {"AIAYN_FAULT": fault} if fault else None
    return aiayn("train", *TINY, "--train.out_dir", out, *extra, env=env)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(out)
    assert result.returncode == 0, result.stderr
    return out


def test_run_folder_holds_config_metrics_checkpoints_and_pointers(reference):
    names = sorted(p.name for p in reference.iterdir())
    assert {"config.yaml", "metrics.jsonl", "checkpoints", "best", "last", "tokenizer.json"} <= set(names)
    entries = metrics(reference)
    train_entries = [e for e in entries if "split" not in e]
    assert [e["step"] for e in train_entries] == list(range(1, 13))
    assert set(train_entries[0]) == {"step", "loss", "nll", "lr", "tokens"}  # (+ tokens_per_s, seconds: not equal)
    assert train_entries[0]["lr"] == pytest.approx(0.003 / 4)  # inverse_sqrt warmup: step 1 of 4
    assert all(isinstance(e["loss"], float) and e["loss"] > 0 for e in train_entries)
    valid = [e for e in entries if e.get("split") == "valid"]
    assert [e["step"] for e in valid] == [6, 12]
    assert {"loss", "nll", "ppl", "bleu", "chrf"} <= set(valid[0])
    steps = sorted(p.name for p in (reference / "checkpoints").iterdir())
    assert steps == ["step-000004", "step-000006", "step-000008", "step-000012"]  # saves every 4, and the best (6)
    assert os.readlink(reference / "last") == os.path.join("checkpoints", "step-000012")
    for folder in (reference / "checkpoints").iterdir():
        assert sorted(p.name for p in folder.iterdir()) == [
            "config.yaml", "manifest.json", "model.safetensors", "tokenizer.json", "trainer_state.pt"]  # fmt: skip
        state = torch.load(folder / "trainer_state.pt", weights_only=True)
        assert {"optimizer", "rng", "trainer"} <= set(state)
        assert state["trainer"]["step"] == int(folder.name.split("-")[1])


@pytest.mark.parametrize(
    ("fault", "resumed_at"),
    [
        ("step:7", 6),  # kill -9 in the middle of step 7, between two accumulated micro-batches
        ("after_step:8", 8),  # kill -9 right after the checkpoint of step 8 was written
        ("ckpt:before_rename@4", None),  # kill -9 while writing the first checkpoint: nothing to resume, start over
    ],
)
def test_kill_and_resume_gives_the_identical_run(reference, tmp_path, fault, resumed_at):
    out = tmp_path / "run"
    first = train(out, fault=fault)
    assert first.returncode == -signal.SIGKILL, first.stderr
    resumed = train(out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    if resumed_at is None:
        assert "resumed from" not in resumed.stdout  # the only write was interrupted: no checkpoint to resume
    else:
        assert f"resumed from {out / 'checkpoints' / f'step-{resumed_at:06d}'} at step {resumed_at}" in resumed.stdout
    assert not list((out / "checkpoints").glob(".*tmp*"))
    assert_same_run(reference, out)


def test_a_fault_in_a_later_checkpoint_write_falls_back_to_the_previous_one(reference, tmp_path):
    out = tmp_path / "run"
    killed = train(out, fault="ckpt:before_rename@8")  # checkpoints 4 and 6 are written, 8 is interrupted
    assert killed.returncode == -signal.SIGKILL
    assert sorted(p.name for p in (out / "checkpoints").iterdir())[-2:] == ["step-000004", "step-000006"]
    assert len(list((out / "checkpoints").glob(".step-000008.tmp-*"))) == 1
    before = (out / "checkpoints" / "step-000006" / "model.safetensors").read_bytes()
    resumed = train(out, "--resume", "auto")
    assert resumed.returncode == 0 and "at step 6" in resumed.stdout, resumed.stderr
    assert "removed the unfinished checkpoint write" in resumed.stdout
    assert not list((out / "checkpoints").glob(".*tmp*"))
    assert (reference / "checkpoints" / "step-000006" / "model.safetensors").read_bytes() == before
    assert_same_run(reference, out)


def test_sigterm_finishes_the_step_saves_and_exits_then_resumes_exactly(reference, tmp_path):
    out = tmp_path / "run"
    stopped = train(out, fault="step:5:sigterm")
    assert stopped.returncode == 143, stopped.stderr
    assert "stopped by SIGTERM after step 5; saved" in stopped.stdout
    assert (out / "checkpoints" / "step-000005").is_dir()
    resumed = train(out, "--resume", "auto")
    assert resumed.returncode == 0 and "at step 5" in resumed.stdout, resumed.stderr
    assert_same_run(reference, out)


def test_language_model_kill_and_resume_is_exact(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert aiayn("train", *lm_args(text), "--train.out_dir", ref).returncode == 0
    killed = aiayn("train", *lm_args(text), "--train.out_dir", out, env={"AIAYN_FAULT": "step:6"})
    assert killed.returncode == -signal.SIGKILL
    resumed = aiayn("train", *lm_args(text), "--train.out_dir", out, "--resume", "auto")
    assert resumed.returncode == 0 and "at step 5" in resumed.stdout, resumed.stderr
    assert_same_run(ref, out)
    valid = [e for e in metrics(ref) if e.get("split") == "valid"]
    assert [e["step"] for e in valid] == [5, 10] and valid[-1]["nll"] < valid[0]["nll"]


def test_bf16_autocast_run_resumes_exactly(tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    assert train(ref, "--train.precision", "bf16", "--train.max_steps", "8").returncode == 0
    assert train(out, "--train.precision", "bf16", "--train.max_steps", "8", fault="step:6").returncode == -9
    resumed = train(out, "--train.precision", "bf16", "--train.max_steps", "8", "--resume", "auto")
    assert resumed.returncode == 0 and "at step 4" in resumed.stdout, resumed.stderr
    assert_same_run(ref, out)


def test_incompatible_resume_stops_before_training_and_lists_the_differences(reference, tmp_path):
    result = train(reference, "--resume", "auto", "--model.d_model", "64")
    assert result.returncode == 2
    assert "model.d_model: 32 in the checkpoint, 64 now" in result.stderr
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    other = tmp_path / "tok.json"
    made = aiayn("tokenizer", "train", "--input", ROOT / "README.md", "--vocab-size", "300", "--out", other)
    assert made.returncode == 0, made.stderr
    result = train(reference, "--resume", "auto", "--tokenizer.path", other)
    assert result.returncode == 2 and "tokenizer: fingerprint" in result.stderr


def test_starting_over_a_run_with_checkpoints_is_refused(reference):
    result = train(reference)
    assert result.returncode == 2
    assert "already holds checkpoints: continue it with --resume auto" in result.stderr


def test_resume_from_a_named_corrupt_checkpoint_is_an_error(reference, tmp_path):
    import shutil

    bad = tmp_path / "step-000004"
    shutil.copytree(reference / "checkpoints" / "step-000004", bad)
    (bad / "model.safetensors").write_bytes(b"garbage")
    result = train(tmp_path / "run", "--resume", bad)
    assert result.returncode == 2
    assert f"{bad}: corrupt checkpoint (model.safetensors: sha256 mismatch)" in result.stderr


def test_average_of_checkpoints_is_the_mean_of_their_weights(reference, tmp_path):
    folders = sorted((reference / "checkpoints").iterdir())[-2:]
    result = aiayn("average", "--models", *folders, "--out", tmp_path / "avg")
    assert result.returncode == 0, result.stderr
    avg = load_file(str(tmp_path / "avg" / "model.safetensors"))
    a, b = (load_file(str(f / "model.safetensors")) for f in folders)
    for name in avg:
        torch.testing.assert_close(avg[name], (a[name].double() + b[name].double()).div(2).float(), rtol=0, atol=1e-7)
    assert sorted(p.name for p in (tmp_path / "avg").iterdir()) == [
        "config.yaml", "manifest.json", "model.safetensors", "tokenizer.json"]  # fmt: skip


def test_early_stopping_with_patience(tmp_path):
    # A learning rate so small that BLEU stays 0: the first evaluation is the best, two more without gain stop it.
    out = tmp_path / "run"
    result = train(out, "--optim.lr", "1e-9", "--train.eval_every", "2", "--train.patience", "2",
                   "--train.best_metric", "bleu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert "early stop at step 6" in result.stdout
    assert max(e["step"] for e in metrics(out)) == 6
    assert os.readlink(out / "best") == os.path.join("checkpoints", "step-000002")


def test_keep_last_prunes_old_checkpoints_but_keeps_the_best(tmp_path):
    out = tmp_path / "run"
    result = train(out, "--train.save_every", "1", "--train.keep_last", "2", "--train.eval_every", "3",
                   "--train.max_steps", "7", "--optim.lr", "1e-9", "--train.best_metric", "bleu")  # fmt: skip
    assert result.returncode == 0, result.stderr
    kept = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert kept == ["step-000003", "step-000006", "step-000007"]  # best (first eval, BLEU 0 ties) + last two


def test_two_processes_equal_one_process_with_two_accumulation_steps(reference, tmp_path):
    # Two processes need two GPUs for NCCL; with fewer, both (and the one-process reference) run on the CPU (gloo).
    device = "cuda" if torch.cuda.device_count() >= 2 else "cpu"
    if device == "cpu" and torch.cuda.is_available():  # the shared reference ran on the GPU ("auto")
        reference = tmp_path / "ref"
        assert train(reference, "--train.device", "cpu").returncode == 0
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aiayn",
           "train", *TINY, "--train.grad_accum", "1", "--train.device", device,
           "--train.out_dir", str(out)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("model: seq2seq") == 1  # only rank 0 prints
    ref_entries, ddp_entries = metrics(reference), metrics(out)
    assert [e["step"] for e in ref_entries] == [e["step"] for e in ddp_entries]
    for r, d in zip(ref_entries, ddp_entries, strict=True):
        assert r["tokens"] == d["tokens"] and r.get("lr") == d.get("lr") and r.get("split") == d.get("split")
        assert d["loss"] == pytest.approx(r["loss"], abs=1e-5)
    wa, wb = final_weights(reference), final_weights(out)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5)


@pytest.mark.parametrize(
    ("files", "message"),
    [
        (
            {"a.en": "one\ntwo\nthree\n", "a.de": "eins\nzwei\n"},
            "line count mismatch: {src} has 3 lines, {tgt} has 2",
        ),
        ({"a.en": "one\ntwo\n", "a.de": "eins\n\xff\n"}, "invalid UTF-8 in {tgt} line 2"),
        ({"a.en": "\n\n", "a.de": "\n\n"}, "no training examples in {src} + {tgt}"),
        ({"a.en": None, "a.de": "eins\n"}, "{src}: no such file"),
    ],
)
def test_bad_training_data_is_one_line_and_exit_code_2(tmp_path, files, message):
    paths = {}
    for name, content in files.items():
        paths[name] = tmp_path / name
        if content is not None:
            paths[name].write_bytes(content.encode("utf-8").replace(b"\xc3\xbf", b"\xff"))
    result = aiayn("train", "--data.train_src", paths["a.en"], "--data.train_tgt", paths["a.de"],
                   "--train.out_dir", tmp_path / "run", "--tokenizer.vocab_size", "300")  # fmt: skip
    assert result.returncode == 2
    expected = message.format(src=paths["a.en"], tgt=paths["a.de"])
    assert result.stderr.startswith("error: ") and expected in result.stderr, result.stderr
    assert result.stderr.count("\n") == 1


def test_init_from_starts_a_new_run_from_a_models_weights_and_tokenizer(reference, tmp_path):
    out = tmp_path / "finetune"
    result = train(out, "--init-from", reference / "best", "--train.max_steps", "2", "--train.eval_every", "100")
    assert result.returncode == 0, result.stderr
    assert "weights from" in result.stdout and "new optimizer and schedule" in result.stdout
    assert (out / "tokenizer.json").read_bytes() == (reference / "tokenizer.json").read_bytes()
    entries = metrics(out)
    assert entries[0]["step"] == 1 and entries[0]["lr"] == pytest.approx(0.003 / 4)  # the schedule starts over
    assert entries[0]["loss"] < metrics(reference)[0]["loss"]  # but the weights are trained ones
    # Fine-tuning takes the architecture from the folder (issue 20): a config's other model says so, and is not used.
    wider = train(tmp_path / "x", "--init-from", reference / "best", "--model.d_model", "64", "--train.max_steps", "1")
    assert wider.returncode == 0, wider.stderr
    assert "its architecture, not the config's: model.d_model: 64 -> 32" in wider.stdout
    assert yaml.safe_load((tmp_path / "x" / "config.yaml").read_text())["model"]["d_model"] == 32


def test_max_minutes_stops_evaluates_and_saves(tmp_path):
    out = tmp_path / "run"
    result = train(out, "--train.max_minutes", "0.00001")  # reached after the first step
    assert result.returncode == 0, result.stderr
    assert "stopped after step 1: train.max_minutes=1e-05 reached" in result.stdout
    assert [e["step"] for e in metrics(out)] == [1, 1]  # the step's log line, then its validation
    assert os.readlink(out / "last") == os.path.join("checkpoints", "step-000001")


def test_matmul_precision_reaches_training_and_a_wrong_device_is_one_line(tmp_path):
    exact = train(tmp_path / "fp32", "--train.max_steps", "3")
    assert exact.returncode == 0, exact.stderr
    wrong = train(tmp_path / "tf32", "--train.max_steps", "3", "--train.matmul_precision", "tf32")
    assert wrong.returncode == 2
    assert wrong.stderr.strip().splitlines()[-1] == (
        "error: train.matmul_precision='tf32' is for CUDA devices; on CPUs use 'bf16'"
    )
    fast = train(tmp_path / "bf16", "--train.max_steps", "3", "--train.matmul_precision", "bf16")
    if not bf16_matmul_precision_works():  # the setting would change nothing here (no AMX): refused in one line
        assert fast.returncode == 2 and "Traceback" not in fast.stderr
        assert fast.stderr.strip().splitlines()[-1] == (
            f"error: train.matmul_precision='bf16' has no effect with torch {torch.__version__} on this CPU: its "
            "fp32 matrix products keep fp32 inputs (oneDNN gives them bf16 inputs only on CPUs with AMX); use 'fp32'"
        )
        assert not (tmp_path / "bf16" / "metrics.jsonl").exists()  # no step ran
        return
    assert fast.returncode == 0, fast.stderr

    def losses(run):
        rows = (run / "metrics.jsonl").read_text().splitlines()
        return [json.loads(r)["loss"] for r in rows if "split" not in json.loads(r)]

    a, b = losses(tmp_path / "fp32"), losses(tmp_path / "bf16")
    assert len(a) == len(b) == 3 and a != b  # bf16 inputs change the numbers a little...
    assert a == pytest.approx(b, rel=2e-2)  # ...and only a little


def test_compiled_training_on_the_cpu_gives_the_eager_losses(tmp_path):
    # train.compile on the CPU: torch.compile with inductor's C++ wrapper, dynamic shapes for seq2seq batches, the
    # chunked loss outside the compiled part. No dropout: compiled code draws other random masks than eager.
    text = tmp_path / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    runs = {
        "seq2seq": [*TINY, "--model.dropout", "0", "--train.max_steps", "4", "--train.eval_every", "100"],
        "lm": [*lm_args(text), "--model.dropout", "0", "--train.max_steps", "4", "--train.eval_every", "100"],
    }
    for name, args in runs.items():
        got = {}
        for mode in ("eager", "compiled"):
            out = tmp_path / f"{name}-{mode}"
            extra = ["--train.compile", "true"] if mode == "compiled" else []
            result = aiayn("train", *args, *extra, "--train.out_dir", out, timeout=600)
            assert result.returncode == 0, result.stderr
            entries = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
            got[mode] = [e["loss"] for e in entries if "split" not in e]
        assert len(got["eager"]) == 4
        assert got["compiled"] == pytest.approx(got["eager"], rel=1e-4), name
