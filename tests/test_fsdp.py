"""`train.parallel: fsdp` (FSDP2) on 2 CPU processes (gloo), against one process with 2 accumulation steps (which
DDP equals: tests/test_trainer.py): the same losses and weights for both Transformer families, half the state
bytes per process, sharded checkpoints that resume bit-identically after a kill -9 and in one process, and that
every other command reads as ordinary model folders. The sharded runs recompute their layers in the backward
(train.activation_checkpointing), so the same comparisons cover it. torchrun starts cost ~8 s each on 2 cores:
the file starts five (one of them two agents)."""

import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import tiny_run
import torch
from safetensors.torch import load_file
from test_trainer import LM_TEXT, lm_args
from tiny_run import ROOT, aiayn, final_weights, metrics

from aiayn.config import TrainConfig
from aiayn.errors import ConfigError
from aiayn.modelfile import CheckpointError, verify
from aiayn.train.distributed import Dist
from aiayn.train.parallel import wrap
from aiayn.train.run_folder import RunFolder
from aiayn.train.saving import Saver, load_shards

TINY = [*tiny_run.TINY, "--train.device", "cpu", "--model.n_encoder_layers", "2", "--model.n_decoder_layers", "2"]
FSDP = ["--train.parallel", "fsdp", "--train.activation_checkpointing", "true"]


def torchrun(out: Path, *args: str, nproc: int = 2, env: dict[str, str] | None = None, restarts: int = 0):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
           "--max-restarts", str(restarts), "-m", "aiayn", "train", *args, "--train.out_dir", str(out)]  # fmt: skip
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)


def assert_same_losses(a: Path, b: Path, tol: float = 1e-5) -> None:
    ea, eb = metrics(a), metrics(b)
    assert [e["step"] for e in ea] == [e["step"] for e in eb]
    for x, y in zip(ea, eb, strict=True):
        assert x["tokens"] == y["tokens"] and x.get("lr") == y.get("lr") and x.get("split") == y.get("split")
        assert y["loss"] == pytest.approx(x["loss"], abs=tol)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys()
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=tol)


@pytest.fixture(scope="module")
def seq2seq_runs(tmp_path_factory):
    """The same 12 steps (dropout on) twice: one process with 2 accumulation steps, and FSDP on 2 processes."""
    root = tmp_path_factory.mktemp("s2s")
    one = aiayn("train", *TINY, "--train.grad_accum", "2", "--train.out_dir", root / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    fsdp = torchrun(root / "fsdp", *TINY, *FSDP)
    assert fsdp.returncode == 0, fsdp.stderr[-3000:]
    return {"one": root / "one", "one_stdout": one.stdout, "fsdp": root / "fsdp", "fsdp_stdout": fsdp.stdout}


def test_fsdp_gives_the_losses_and_weights_of_one_process_seq2seq(seq2seq_runs):
    assert_same_losses(seq2seq_runs["one"], seq2seq_runs["fsdp"])
    assert seq2seq_runs["fsdp_stdout"].count("model: seq2seq") == 1  # only rank 0 prints


def test_fsdp_gives_the_losses_and_weights_of_one_process_lm(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    args = [*lm_args(text), "--train.device", "cpu", "--model.dropout", "0.1"]
    one = aiayn("train", *args, "--train.grad_accum", "2", "--train.out_dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    result = torchrun(tmp_path / "fsdp", *args, *FSDP)
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(tmp_path / "one", tmp_path / "fsdp")


STATE_LINE = re.compile(r"state held by process 0: parameters ([\d,]+) B, gradients ([\d,]+) B, optimizer ([\d,]+) B")


def state_bytes(stdout: str) -> list[int]:
    match = STATE_LINE.search(stdout)
    assert match, stdout[-2000:]
    return [int(g.replace(",", "")) for g in match.groups()]


def test_fsdp_holds_about_half_the_state_per_process(seq2seq_runs):
    # One process holds what each DDP process holds: a whole copy.
    whole, sharded = state_bytes(seq2seq_runs["one_stdout"]), state_bytes(seq2seq_runs["fsdp_stdout"])
    for w, s in zip(whole, sharded, strict=True):
        # Each parameter is split on its first dimension, rounded up: half, or a little over.
        assert 0.5 * w <= s <= 0.55 * w


def test_fsdp_checkpoints_are_model_folders_with_their_sharded_state(seq2seq_runs):
    run = seq2seq_runs["fsdp"]
    folder = run / "checkpoints" / "step-000012"
    names = sorted(p.name for p in folder.iterdir())
    assert names == ["config.yaml", "manifest.json", "model.safetensors", "sharded", "tokenizer.json",
                     "trainer_state.pt"]  # fmt: skip
    shards = sorted(p.name for p in (folder / "sharded").iterdir())
    assert ".metadata" in shards and len([s for s in shards if s.endswith(".distcp")]) == 2  # one per rank
    state = torch.load(folder / "trainer_state.pt", weights_only=True)
    assert state["world_size"] == 2 and "optimizer" not in state  # Adam's state is in the shards
    result = aiayn("translate", "--model", run / "last", input="1 2 3\n")
    assert result.returncode == 0, result.stderr


def test_a_killed_fsdp_worker_resumes_bit_identically(seq2seq_runs, tmp_path):
    out = tmp_path / "run"
    # Rank 1 is killed with SIGKILL in step 7, between its forward and backward; torchrun restarts both workers.
    result = torchrun(out, *TINY, *FSDP, "--resume", "auto", restarts=1,
                      env={"AIAYN_FAULT": "step:7", "AIAYN_FAULT_RANK": "1"})  # fmt: skip
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-000006'} at step 6" in result.stdout
    reference = seq2seq_runs["fsdp"]
    assert metrics(out) == metrics(reference)
    a, b = final_weights(reference), final_weights(out)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_checkpoint_of_two_fsdp_processes_resumes_on_one_with_accumulation_bit_identically(seq2seq_runs, tmp_path):
    """The global batch (processes x accumulation) kept: 2 x 1 before, 1 x 2 after. The one-process run of the same
    12 steps is the reference: resumed at step 6, the run ends with its weights, byte for byte."""
    out = tmp_path / "run"
    shutil.copytree(seq2seq_runs["fsdp"], out, symlinks=True)
    for late in ("step-000008", "step-000012"):
        shutil.rmtree(out / "checkpoints" / late)
    (out / "last").unlink()
    result = aiayn("train", *TINY, "--train.grad_accum", "2", "--resume", "auto", "--train.out_dir", out)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resumed from {out / 'checkpoints' / 'step-000006'} at step 6" in result.stdout
    assert_same_losses(seq2seq_runs["one"], out)
    weights = [run / "last" / "model.safetensors" for run in (out, seq2seq_runs["one"])]
    assert weights[0].read_bytes() == weights[1].read_bytes()


def test_consolidation_gives_the_weights_of_the_sharded_state(seq2seq_runs, tmp_path):
    checkpoint = seq2seq_runs["fsdp"] / "checkpoints" / "step-000008"
    result = aiayn("checkpoint", "consolidate", checkpoint, "--out", tmp_path / "whole")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    whole = load_file(str(tmp_path / "whole" / "model.safetensors"))
    saved = load_file(str(checkpoint / "model.safetensors"))
    assert whole.keys() == saved.keys() and all(torch.equal(whole[k], saved[k]) for k in whole)
    # The shards themselves, read back as whole tensors without the folder's weights file.
    state = {"model": {k: torch.empty_like(v) for k, v in whole.items()}}
    load_shards(state, checkpoint / "sharded", distributed_run=False)
    assert all(torch.equal(state["model"][k], whole[k]) for k in whole)


def test_consolidating_a_checkpoint_without_shards_is_one_line(seq2seq_runs, tmp_path):
    result = aiayn("checkpoint", "consolidate", seq2seq_runs["one"] / "last", "--out", tmp_path / "x")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        f"error: {seq2seq_runs['one'] / 'last'}: no sharded/ folder: not a checkpoint of a train.parallel 'fsdp' run "
        "(its model.safetensors is already whole)"]  # fmt: skip
    assert not (tmp_path / "x").exists()


def test_a_checkpoint_written_without_fsdp_does_not_resume_sharded_and_says_so(seq2seq_runs):
    folder = seq2seq_runs["one"] / "checkpoints" / "step-000012"
    saver = Saver(RunFolder(seq2seq_runs["one"]), None, None, None, Dist(), True, print)  # what FSDP's resume reads
    with pytest.raises(CheckpointError) as e:
        saver.load(folder)
    assert str(e.value) == (f"{folder}: has no sharded/ (it was written without train.parallel 'fsdp'): resume it "
                            "with train.parallel 'ddp'")  # fmt: skip


def test_fsdp_refuses_compilation_in_one_line():
    train = TrainConfig(parallel="fsdp", compile=True)
    with pytest.raises(ConfigError, match="train.compile with train.parallel='fsdp' is not supported"):
        wrap(torch.nn.Linear(2, 2), train, Dist(rank=0, world_size=2))  # refused before any collective


def test_the_recurrent_family_shards_as_one_unit_with_the_losses_of_one_process(tmp_path):
    """No encoder/decoder `layers` stacks: the whole LSTM encoder-decoder is the root unit, sharded at rest."""
    args = [*TINY, "--model.arch", "rnn", "--model.rnn_cell", "lstm"]
    one = aiayn("train", *args, "--train.grad_accum", "2", "--train.out_dir", tmp_path / "one")
    assert one.returncode == 0, one.stderr[-3000:]
    result = torchrun(tmp_path / "fsdp", *args, "--train.parallel", "fsdp")
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_losses(tmp_path / "one", tmp_path / "fsdp")
    whole, sharded = state_bytes(one.stdout), state_bytes(result.stdout)
    assert all(0.5 * w <= s <= 0.55 * w for w, s in zip(whole, sharded, strict=True))


def test_two_nodes_on_loopback_give_the_losses_of_one_node_with_two_processes(seq2seq_runs, tmp_path):
    """Two torchrun agents of one process each, meeting through c10d rendezvous on 127.0.0.1, as two machines would
    (the run folder is on a filesystem both see: here, the same disk)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc_per_node", "1",
           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{port}", "--rdzv-id", "two-nodes",
           "-m", "aiayn", "train", *TINY, *FSDP, "--train.out_dir", str(out)]  # fmt: skip
    env = {**os.environ, "TORCH_DISABLE_SHARE_RDZV_TCP_STORE": "1"}
    nodes = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env)
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=600) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][1][-2000:] + outputs[1][1][-2000:]
    assert sum(stdout.count("2 process(es)") for stdout, _ in outputs) == 1  # global rank 0 alone prints
    assert_same_losses(seq2seq_runs["fsdp"], out, tol=1e-6)


def test_a_damaged_shard_is_found_by_the_manifest_before_anything_reads_it(seq2seq_runs, tmp_path):
    """The manifest lists the shards (sizes, sha256): a changed byte makes the checkpoint corrupt, which a resume
    skips with a warning and consolidation refuses in one line; a missing folder is one line too."""
    folder = tmp_path / "step-000012"
    shutil.copytree(seq2seq_runs["fsdp"] / "checkpoints" / "step-000012", folder)
    verify(folder)  # intact
    shard = folder / "sharded" / "__1_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 1
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"corrupt checkpoint \(sharded/__1_0.distcp: sha256 mismatch\)"):
        verify(folder)
    result = aiayn("checkpoint", "consolidate", folder, "--out", tmp_path / "whole")
    assert result.returncode == 2 and not (tmp_path / "whole").exists()
    assert result.stderr.strip().splitlines() == [f"error: {folder}: corrupt checkpoint (sharded/__1_0.distcp: "
                                                  "sha256 mismatch)"]  # fmt: skip
    result = aiayn("checkpoint", "consolidate", tmp_path / "nowhere", "--out", tmp_path / "whole")
    assert result.returncode == 2
    assert result.stderr.strip() == f"error: {tmp_path / 'nowhere'}: no such checkpoint folder"
