"""F2 and F4 of docs/RELIABILITY.md at every site of a checkpoint write, through the `aiayn train` command: a
SIGKILL at each site of checkpoint 8 (and of its `last` / `best` pointers), and a full disk (ENOSPC injected at
the write, the fsync and the rename, then a real tmpfs too small for the run). Each time the resumed run is the
uninterrupted one, bit for bit, and checkpoint 6 (the previous one, and the best) is never touched."""

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from tiny_run import ROOT, TINY, aiayn, assert_same_run

from aiayn.train import checkpoint as ckpt

STEP6 = Path("checkpoints") / "step-000006" / "model.safetensors"
PAGE = 4096  # tmpfs counts whole pages


def train(out, *extra, fault=None):
    return aiayn("train", *TINY, "--train.out_dir", out, *extra, env={"AIAYN_FAULT": fault} if fault else None)


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def temporaries(run) -> list[str]:
    """Every `.NAME.tmp-*` left anywhere in a run folder (folders, files, pointer symlinks); symlinks not followed."""
    found = []
    for folder, dirs, files in os.walk(run):
        found += [os.path.join(folder, n) for n in dirs + files if n.startswith(".") and ".tmp-" in n]
    return found


def assert_resumes_to_the_reference(reference, out, at: int):
    resumed = train(out, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert f"resumed from {out / 'checkpoints' / f'step-{at:06d}'} at step {at}" in resumed.stdout
    assert "skipping corrupt checkpoint" not in resumed.stdout  # no final-named folder without a valid manifest
    assert temporaries(out) == []
    assert sha256(out / STEP6) == sha256(reference / STEP6)
    assert_same_run(reference, out)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """The uninterrupted run: checkpoints 4, 6 (the best), 8 and 12."""
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(out)
    assert result.returncode == 0, result.stderr
    steps = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert steps == ["step-000004", "step-000006", "step-000008", "step-000012"]
    return out


@pytest.mark.parametrize(
    ("fault", "resumed_at"),
    [
        ("ckpt:mid_file@8", 6),  # half of model.safetensors' bytes written and flushed
        ("ckpt:after_first_file@8", 6),
        ("ckpt:before_rename@8", 6),  # every file and the manifest written, the folder not yet renamed
        ("ckpt:after_rename@8", 8),  # renamed, the parent folder not yet fsynced
        ("ckpt:before_last@8", 8),  # checkpoint 8 complete; `last` (still at 6) being moved: a temporary symlink
        ("ckpt:before_best@8", 8),  # `last` moved to 8; `best` being re-pointed at 6
    ],
)
def test_a_kill_at_each_checkpoint_write_site_resumes_to_the_identical_run(reference, tmp_path, fault, resumed_at):
    out = tmp_path / "run"
    killed = train(out, fault=fault)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    step8 = out / "checkpoints" / "step-000008"
    if resumed_at == 6:  # killed before the rename: no final-named folder, the temporary is there until resume
        assert not step8.exists()
        [tmp] = temporaries(out)
        assert Path(tmp).parent == out / "checkpoints" and Path(tmp).name.startswith(".step-000008.tmp-")
        if "mid_file" in fault:  # killed with exactly half of the weights' bytes in the file
            half = (reference / "checkpoints" / "step-000008" / "model.safetensors").stat().st_size // 2
            assert (Path(tmp) / "model.safetensors").stat().st_size == half
    else:
        ckpt.verify(step8, need_state=True)
    if "before_last" in fault or "before_best" in fault:  # the half-made pointer: a symlink in the run folder
        pointer = "last" if "before_last" in fault else "best"
        [tmp] = temporaries(out)
        assert Path(tmp).parent == out and Path(tmp).name.startswith(f".{pointer}.tmp-") and Path(tmp).is_symlink()
        assert os.readlink(out / "last").endswith("step-000006" if pointer == "last" else "step-000008")
    assert sha256(out / STEP6) == sha256(reference / STEP6)
    assert_resumes_to_the_reference(reference, out, resumed_at)


def assert_one_disk_full_line(result, named: Path):
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {named}: No space left on device (writing "), lines


@pytest.mark.parametrize(
    "fault",
    [
        "ckpt:mid_file@8:enospc",  # a write that fails part-way through model.safetensors
        "ckpt:fsync@8:enospc",  # the data is written, the fsync reports the lost write
        "ckpt:rename@8:enospc",  # the folder's rename fails (a directory that needs a new block)
        "ckpt:before_last@8:enospc",  # checkpoint 8 is complete; moving `last` to it fails
    ],
)
def test_a_full_disk_at_a_checkpoint_write_is_one_line_and_resumes_to_the_identical_run(reference, tmp_path, fault):
    out = tmp_path / "run"
    full = train(out, fault=fault)
    step8 = out / "checkpoints" / "step-000008"
    pointer = "last" in fault
    assert_one_disk_full_line(full, out / "last" if pointer else step8)
    assert temporaries(out) == []  # removed on the way out, not only at the next start
    if pointer:
        ckpt.verify(step8, need_state=True)  # complete; only `last` still points at 6
        assert os.readlink(out / "last").endswith("step-000006")
    else:
        assert not step8.exists()
    assert sha256(out / STEP6) == sha256(reference / STEP6)
    assert_resumes_to_the_reference(reference, out, 8 if pointer else 6)


def pages(path: Path) -> int:
    """The bytes the files under `path` take on a tmpfs (symlinks: none)."""
    sizes = [p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink()]
    return sum(-(-size // PAGE) * PAGE for size in sizes)


def can_mount_tmpfs(mnt: Path) -> str:
    """'' when this user may mount a tmpfs in a user namespace of its own (`unshare -rm`), else why not."""
    if shutil.which("unshare") is None:
        return "no unshare command"
    probe = subprocess.run(["unshare", "-rm", "mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
    return "" if probe.returncode == 0 else f"cannot mount a tmpfs in a user namespace: {probe.stderr.strip()}"


def test_a_real_full_filesystem_stops_at_the_checkpoint_that_does_not_fit_and_loses_nothing(reference, tmp_path):
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    if reason := can_mount_tmpfs(mnt):
        pytest.skip(reason)
    # Room for everything written before checkpoint 8 (caches, tokenizer, config, metrics, checkpoints 4 and 6)
    # plus half a checkpoint: checkpoint 8 runs out of space part-way through its files (about 1.2 MB).
    size8 = pages(reference / "checkpoints" / "step-000008")
    before8 = pages(reference) - size8 - pages(reference / "checkpoints" / "step-000012")
    size = (before8 + size8 // 2) // 1024
    script = (
        'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; out="$2"/run; copy="$3"; shift 3; '
        '"$@" --train.out_dir "$out"; rc=$?; cp -a "$out" "$copy"; exit $rc'
    )  # the mount lives only in this namespace: the run is copied out before it ends
    full = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(size), str(mnt), str(copy),
         sys.executable, "-m", "aiayn", "train", *TINY],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert_one_disk_full_line(full, mnt / "run" / "checkpoints" / "step-000008")
    assert sorted(p.name for p in (copy / "checkpoints").iterdir()) == ["step-000004", "step-000006"]
    assert temporaries(copy) == []
    assert sha256(copy / STEP6) == sha256(reference / STEP6)
    assert os.readlink(copy / "last").endswith("step-000006")
    assert_resumes_to_the_reference(reference, copy, 6)


def test_a_disk_that_fills_while_the_token_cache_is_built_is_one_line_and_leaves_no_temporary(reference, tmp_path):
    mnt, copy = tmp_path / "mnt", tmp_path / "copy"
    mnt.mkdir()
    if reason := can_mount_tmpfs(mnt):
        pytest.skip(reason)
    # Room for the tokenizer and the config, and half of the training cache.
    cache = pages(reference / "cache")
    size = (pages(reference) - pages(reference / "checkpoints") - cache + cache // 4) // 1024
    script = (
        'mount -t tmpfs -o size="$1"k tmpfs "$2" || exit 99; out="$2"/run; copy="$3"; shift 3; '
        '"$@" --train.out_dir "$out"; rc=$?; cp -a "$out" "$copy"; exit $rc'
    )
    full = subprocess.run(
        ["unshare", "-rm", "sh", "-c", script, "sh", str(size), str(mnt), str(copy),
         sys.executable, "-m", "aiayn", "train", *TINY],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert full.returncode == 2 and "Traceback" not in full.stderr, full.stderr
    lines = full.stderr.strip().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"error: {re.escape(str(mnt))}/run/cache/train-[0-9a-f]+: No space left on device "
                        r"\([\d,]+ bytes of the token cache written; [\d,]+ bytes free in .*\)", lines[0])  # fmt: skip
    assert list((copy / "cache").iterdir()) == [] and temporaries(copy) == []
    again = subprocess.run([sys.executable, "-m", "aiayn", "train", *TINY, "--train.out_dir", copy, "--resume", "auto"],
                           capture_output=True, text=True, timeout=300, cwd=ROOT)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert_same_run(reference, copy)
