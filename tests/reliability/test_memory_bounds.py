"""The battery's memory bounds: B7 (one 1 MB line through a whole training run: peak RSS grows < 200 MB, the line is
skipped and counted) and S3 (a damaged model folder is rejected with < 50 MB of RSS growth). Each run is a child
process whose peak RSS (getrusage of the children, Linux: KiB) is compared with the same run without the defect.
"""

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from tiny_run import ROOT

from aiayn.config import ModelConfig
from aiayn.model import build
from aiayn.tokenizer_train import train_tokenizer
from aiayn.train import checkpoint as ckpt

PEAK = """
import resource, subprocess, sys
run = subprocess.run(sys.argv[1:], capture_output=True, text=True)
print(run.stdout + run.stderr, end="", file=sys.stderr)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
sys.exit(run.returncode)
"""


def peak_kib(*command: str, cwd=ROOT) -> tuple[int, int, str]:
    """(exit code, peak RSS in KiB, output) of `command` run in a fresh child."""
    run = subprocess.run([sys.executable, "-c", PEAK, *command], capture_output=True, text=True, cwd=cwd, timeout=600)
    return run.returncode, int(run.stdout.strip().splitlines()[-1]), run.stderr


def words(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(["a", "dog", "runs", "in", "the", "snow", "two", "men", "play"]) for _ in range(n))


TRAIN = [
    "--tokenizer.vocab_size", "200", "--model.d_model", "32", "--model.n_heads", "2",
    "--model.n_encoder_layers", "1", "--model.n_decoder_layers", "1", "--model.d_ff", "64",
    "--train.max_steps", "3", "--train.max_tokens", "256", "--train.save_every", "3", "--train.eval_every", "100",
    "--train.threads", "1", "--data.max_example_tokens", "64",
]  # fmt: skip


@pytest.mark.slow
def test_b7_a_1_mb_line_is_skipped_and_counted_and_grows_peak_rss_by_less_than_200_mb(tmp_path):
    rng = random.Random(0)
    pairs = [(words(rng, 8), words(rng, 8)) for _ in range(300)]
    runs = {}
    for name, long_line in (("plain", None), ("long", words(rng, 250_000))):  # ~1 MB of words on one line
        src = [s for s, _ in pairs] if long_line is None else [*[s for s, _ in pairs[:4]], long_line,
                                                               *[s for s, _ in pairs[5:]]]  # fmt: skip
        (tmp_path / f"{name}.en").write_text("\n".join(src) + "\n", encoding="utf-8")
        (tmp_path / f"{name}.de").write_text("\n".join(t for _, t in pairs) + "\n", encoding="utf-8")
        args = ["--data.train_src", str(tmp_path / f"{name}.en"), "--data.train_tgt", str(tmp_path / f"{name}.de")]
        runs[name] = peak_kib(sys.executable, "-m", "aiayn", "train", *TRAIN, *args,
                              "--train.out_dir", str(tmp_path / name))  # fmt: skip
        assert runs[name][0] == 0, runs[name][2]
    assert len((tmp_path / "long.en").read_bytes()) > 1_000_000
    assert "skipped 0 empty, 1 longer than 64 tokens (first: line 5)" in runs["long"][2]
    growth_mb = (runs["long"][1] - runs["plain"][1]) / 1024
    assert growth_mb < 200, f"peak RSS {runs['plain'][1] / 1024:.0f} MB -> {runs['long'][1] / 1024:.0f} MB"


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("model")
    tokenizer = train_tokenizer(["two dogs play in the snow", "a man rides a bike"], 60)
    tokenizer.save(tmp / "tokenizer.json")
    config = ModelConfig(vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_encoder_layers=1,
                         n_decoder_layers=1, d_ff=32)  # fmt: skip
    path = tmp / "good"
    ckpt.save_checkpoint(path, model=build(config), config={"model": config.to_dict()},
                         tokenizer_json=(tmp / "tokenizer.json").read_bytes())  # fmt: skip
    return path


HUGE = {"d_ff 10^12": {"d_ff": 10**12}, "max_len 10^9": {"max_len": 10**9}}


def damaged(good: Path, out: Path, how: str) -> Path:
    """A copy of `good` with one defect, its manifest rewritten so that only the check under test trips."""
    import hashlib
    import shutil

    shutil.copytree(good, out)
    weights, config = out / "model.safetensors", out / "config.yaml"
    if how == "huge header length":
        weights.write_bytes((10**12).to_bytes(8, "little") + weights.read_bytes()[8:])
    if how == "truncated":
        weights.write_bytes(weights.read_bytes()[: len(weights.read_bytes()) // 2])
    if how in HUGE:
        data = yaml.safe_load(config.read_text())
        data["model"].update(HUGE[how])
        config.write_text(yaml.safe_dump(data))
    manifest = json.loads((out / "manifest.json").read_text())
    for name in manifest["files"]:
        data = (out / name).read_bytes()
        manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    (out / "manifest.json").write_text(json.dumps(manifest))
    return out


LOAD = "import sys, aiayn; aiayn.load(sys.argv[1], device='cpu')"


@pytest.mark.parametrize("how", ["huge header length", "truncated", "d_ff 10^12", "max_len 10^9"])
def test_s3_a_damaged_model_folder_is_rejected_with_less_than_50_mb_of_rss_growth(folder, tmp_path, how):
    bad = damaged(folder, tmp_path / "bad", how)
    code, good_kib, output = peak_kib(sys.executable, "-c", LOAD, str(folder))
    assert code == 0, output
    code, bad_kib, output = peak_kib(sys.executable, "-c", LOAD, str(bad))
    assert code == 1 and "CheckpointError" in output and str(bad) in output, output
    assert (bad_kib - good_kib) / 1024 < 50, f"peak RSS {good_kib / 1024:.0f} MB -> {bad_kib / 1024:.0f} MB"


def test_peak_kib_measures_the_child():
    code, kib, _ = peak_kib(sys.executable, "-c", "x = bytearray(300 * 2**20); x[::4096] = b'1' * len(x[::4096])")
    assert code == 0 and 300 * 1024 < kib < 400 * 1024  # the 300 MB the child touched, and not much more
