"""Issue 18, point 7: `torchrun --max-restarts 1` after a worker is killed resumes from the last checkpoint
(`--resume auto`) and ends bit-identical to an uninterrupted run, with 2 CPU processes (gloo).

PyTorch's restarted workers otherwise reconnect to the dead worker's TCP store and hang (pytorch/pytorch#135712);
TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1, set for torchrun itself, gives each restart a store of its own. The README
says to set it."""

import os
import subprocess
import sys
from pathlib import Path

import tiny_run
import torch
from safetensors.torch import load_file
from tiny_run import ROOT, metrics

TINY = [*tiny_run.TINY, "--train.device", "cpu"]


def torchrun(out: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "--max-restarts", "1",
           "-m", "aiayn", "train", *TINY, "--train.out_dir", str(out), "--resume", "auto"]  # fmt: skip
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **env}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=ROOT, env=env)


def test_a_killed_worker_is_restarted_and_the_run_ends_as_if_uninterrupted(tmp_path):
    reference = tmp_path / "ref"
    assert torchrun(reference, {}).returncode == 0
    out = tmp_path / "run"
    # Rank 1 is killed with SIGKILL after step 6 (checkpoint 6 is written); torchrun restarts both workers once.
    result = torchrun(out, {"AIAYN_FAULT": "after_step:6", "AIAYN_FAULT_RANK": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-000006'} at step 6" in result.stdout
    assert metrics(out) == metrics(reference)
    a, b = load_file(str(reference / "last" / "model.safetensors")), load_file(str(out / "last" / "model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
