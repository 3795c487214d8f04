"""Issue 18, points 2, 3 and 6: a diverged run keeps no NaN checkpoint and stops with one line; a bad model still
decodes; a torn metrics.jsonl line does not block resume; failed writes leave no temporary and name their
target; devices, output paths and tiny temperatures are one line or handled exactly."""

import signal
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from tiny_run import ROOT, TINY, aiayn, metrics

from aiayn.config import ModelConfig
from aiayn.decoding import beam_search, greedy_search, sample
from aiayn.errors import ConfigError, UserError
from aiayn.files import write_atomic
from aiayn.model import build


def test_a_diverged_run_skips_its_updates_stops_with_exit_3_and_saves_only_finite_weights(tmp_path):
    out = tmp_path / "run"
    run = aiayn("train", *TINY, "--optim.lr", "1e8", "--train.max_bad_steps", "2", "--train.out_dir", out)
    assert run.returncode == 3, run.stderr
    assert "the loss or gradient norm was not finite in 3 steps in a row (train.max_bad_steps=2)" in run.stdout
    assert "Traceback" not in run.stderr
    logged = [e for e in metrics(out) if "split" not in e]
    assert sum(e.get("skipped_steps", 0) for e in logged) == 3
    for folder in (out / "checkpoints").iterdir():
        weights = load_file(str(folder / "model.safetensors"))
        assert all(torch.isfinite(t).all() for t in weights.values()), folder
    for pointer in ("best", "last"):  # never at a NaN checkpoint (here: the finite ones that exist)
        if (out / pointer).exists():
            weights = load_file(str(out / pointer / "model.safetensors"))
            assert all(torch.isfinite(t).all() for t in weights.values())


def test_non_finite_weights_are_never_saved(tmp_path):
    from aiayn.train import distributed
    from aiayn.train.run_folder import RunFolder
    from aiayn.train.saving import Saver
    from aiayn.train.state import TrainState

    lines = []
    model = build(ModelConfig(vocab_size=12, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32))
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    saver = Saver(RunFolder(tmp_path / "run"), model, None, None, distributed.Dist(), False, lines.append)
    saver.save(3, TrainState(), 5, config={}, tokenizer_json=b"{}")  # the trainer's _save
    assert not (tmp_path / "run" / "checkpoints").exists() and not (tmp_path / "run" / "last").exists()
    assert lines == ["not saving step 3: the weights are not finite (the last checkpoint, if any, is kept)"]


def test_beam_search_returns_n_best_hypotheses_even_for_a_nan_model():
    torch.manual_seed(0)
    model = build(ModelConfig(vocab_size=12, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32))
    with torch.no_grad():
        for p in model.parameters():
            p.fill_(float("nan"))
    src = torch.tensor([[4, 5, 6, 2], [7, 8, 2, 0]])
    hyps = beam_search(model.eval(), src, beam_size=3, max_len=5, n_best=3)
    assert [len(row) for row in hyps] == [3, 3]
    assert len(greedy_search(model, src, max_len=5)) == 2


def test_a_torn_metrics_line_is_dropped_and_resume_is_identical(tmp_path):
    ref = tmp_path / "ref"
    assert aiayn("train", *TINY, "--train.out_dir", ref).returncode == 0
    out = tmp_path / "run"
    killed = aiayn("train", *TINY, "--train.out_dir", out, env={"AIAYN_FAULT": "after_step:8"})
    assert killed.returncode == -signal.SIGKILL
    with open(out / "metrics.jsonl", "a", encoding="utf-8") as f:
        f.write('{"step": 9, "loss": 1.2')  # the disk filled in the middle of an append
    resumed = aiayn("train", *TINY, "--train.out_dir", out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"{out / 'metrics.jsonl'}: line" in resumed.stdout and "was cut short" in resumed.stdout
    assert metrics(out) == metrics(ref)
    a, b = load_file(str(ref / "last" / "model.safetensors")), load_file(str(out / "last" / "model.safetensors"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failed_atomic_write_leaves_no_temporary_and_names_its_target(tmp_path, monkeypatch):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def full(path, data):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("aiayn.files.write_file", full)
    with pytest.raises(UserError, match=rf"{target}: No space left on device \(writing 3 bytes; [\d,]+ bytes free"):
        write_atomic(target, b"new")
    monkeypatch.undo()

    def refused(src, dst):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("aiayn.files.os.replace", refused)
    with pytest.raises(PermissionError) as error:
        write_atomic(target, b"new")
    assert error.value.filename == str(target)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"] and target.read_text() == "old"
    with pytest.raises(UserError, match="is a folder; give a file name"):
        write_atomic(tmp_path, b"x")


def test_devices_this_machine_lacks_are_one_line():
    from aiayn.devices import parse_device

    assert parse_device("auto").type in ("cpu", "cuda") and parse_device("cpu") == torch.device("cpu")
    with pytest.raises(ConfigError, match="'gpu0' is not a device: expected auto, cpu, cuda or cuda:N"):
        parse_device("gpu0")
    count = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(ConfigError, match="cuda:7"):
        parse_device(f"cuda:{max(count, 7)}")


def test_cli_device_and_output_mistakes_are_one_line_with_exit_2(tmp_path):
    run = aiayn("train", *TINY, "--train.out_dir", tmp_path / "r", "--train.device", "gpu0")
    assert run.returncode == 2 and run.stderr.strip().splitlines()[-1].startswith("error: train.device 'gpu0'")
    ref = tmp_path / "ref"
    assert aiayn("train", *TINY, "--train.max_steps", "2", "--train.out_dir", ref).returncode == 0
    for args, expected in [
        (("--device", "cuda:99"), "error: --device 'cuda:99'"),
        (("--output", tmp_path), f"error: {tmp_path}: is a folder"),
    ]:
        run = subprocess.run([sys.executable, "-m", "aiayn", "translate", "--model", str(ref), *map(str, args)],
                             input="a b c\n", capture_output=True, text=True, timeout=120, cwd=ROOT)  # fmt: skip
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(expected), run.stderr


def test_a_tiny_temperature_samples_the_argmax_instead_of_failing():
    torch.manual_seed(1)
    lm = build(ModelConfig(arch="lm", vocab_size=12, d_model=16, n_heads=2, n_decoder_layers=1, d_ff=32)).eval()
    prompt = torch.tensor([[4, 5, 6]])
    for temperature in (1e-30, 1e-40, 1e-300, 5e-324):  # fp32 overflow, a subnormal, and below fp32's range
        tiny = sample(lm, prompt, 6, temperature=temperature, generator=torch.Generator().manual_seed(0))
        assert tiny == sample(lm, prompt, 6, temperature=0)


def test_cli_mistakes_found_by_a_sweep_are_one_line_and_lose_nothing(tmp_path):
    ref = tmp_path / "ref"
    assert aiayn("train", *TINY, "--train.max_steps", "2", "--train.out_dir", ref).returncode == 0
    keep = tmp_path / "keep"
    keep.mkdir()
    (keep / "notes.txt").write_text("precious")
    text = tmp_path / "in.txt"
    text.write_text("a b c\n")
    cases = [
        # an existing folder that is not a model folder was replaced (its files deleted) by `average --out`
        (("average", "--models", ref / "checkpoints" / "step-000002", "--out", keep),
         f"error: {keep}: exists and is not a model folder; refusing to replace it"),
        (("tokenizer", "train", "--input", text, "--vocab-size", "100", "--out", tmp_path),
         f"error: {tmp_path}: is a folder"),  # the temporary's name was printed
        (("train", *TINY, "--train.out_dir", text), f"error: train.out_dir {text} is a file"),  # a traceback
        (("demo", "--steps", "0"), "error: --steps 0: expected an integer >= 1"),  # ran the whole demo
    ]  # fmt: skip
    for args, expected in cases:
        run = aiayn(*args)
        assert run.returncode == 2 and "Traceback" not in run.stderr, run.stderr
        assert run.stderr.strip().splitlines()[-1].startswith(expected), run.stderr
    assert (keep / "notes.txt").read_text() == "precious"


def test_a_nul_byte_past_the_sniffed_head_is_one_line(tmp_path):
    from aiayn.data.reader import read_lines
    from aiayn.errors import DataError

    path = tmp_path / "train.txt"
    path.write_bytes(b"a b\n" * 20_000 + b"x\x00y\n")  # the NUL is 80,001 bytes in: past the 64 KiB sniffed
    with pytest.raises(DataError, match=r"train.txt line 20001 has a NUL byte \(byte offset 80001 in the file\)"):
        list(read_lines(path))


def test_a_trainer_state_without_what_resume_needs_is_one_line(tmp_path):
    from aiayn.train.checkpoint import STATE_FILE, CheckpointError, restore_trainer_state

    torch.save({"optimizer": {}}, tmp_path / STATE_FILE)  # loads safely (weights_only), lacks rng and trainer
    model = torch.nn.Linear(2, 2)
    optimizer = torch.optim.Adam(model.parameters())
    with pytest.raises(CheckpointError, match=r"trainer_state.pt: not a trainer state \(no rng, trainer\)"):
        restore_trainer_state(tmp_path, optimizer, None, lambda rng: None)
    torch.save({"optimizer": {"state": {}}, "rng": {}, "trainer": {"step": 3}}, tmp_path / STATE_FILE)
    with pytest.raises(CheckpointError, match="trainer_state.pt: does not fit this run"):
        restore_trainer_state(tmp_path, optimizer, None, lambda rng: None)


def test_one_non_finite_step_changes_no_weight_and_training_goes_on(tmp_path):
    out = tmp_path / "run"
    run = aiayn("train", *TINY, "--train.max_steps", "5", "--train.save_every", "1", "--train.eval_every", "5",
                "--train.out_dir", out, env={"AIAYN_FAULT": "loss:3:nan"})  # fmt: skip
    assert run.returncode == 0, run.stderr
    logged = {e["step"]: e for e in metrics(out) if "split" not in e}
    assert logged[3].get("skipped_steps") == 1 and all("skipped_steps" not in logged[s] for s in (1, 2, 4, 5))
    weights = {s: load_file(str(out / "checkpoints" / f"step-{s:06d}" / "model.safetensors")) for s in (2, 3, 4)}
    assert all(torch.equal(weights[2][k], weights[3][k]) for k in weights[2])  # step 3 made no update
    assert not all(torch.equal(weights[3][k], weights[4][k]) for k in weights[3])  # step 4 did
