"""Checkpoint folders: atomic writes, manifest verification, safe loading, tied weights, clear errors."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from aiayn import ModelConfig
from aiayn.errors import UserError
from aiayn.model import Transformer
from aiayn.train import checkpoint as ckpt

CONFIG = ModelConfig(vocab_size=40, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32)


def save(folder, model=None, step=3, state=True):
    model = model or Transformer(CONFIG)
    return ckpt.save_checkpoint(
        folder,
        model=model,
        config={"model": CONFIG.to_dict()},
        tokenizer_json=b"{}",
        trainer_state={"step": step, "t": torch.arange(3)} if state else None,
        step=step,
    )


def test_round_trip_restores_weights_and_keeps_them_tied(tmp_path):
    torch.manual_seed(0)
    model = Transformer(CONFIG)
    folder = save(tmp_path / "step-000003", model)
    assert sorted(os.listdir(folder)) == [
        "config.yaml",
        "manifest.json",
        "model.safetensors",
        "tokenizer.json",
        "trainer_state.pt",
    ]
    manifest = ckpt.verify(folder, need_state=True)
    assert manifest["step"] == 3 and set(manifest["files"]) == set(os.listdir(folder)) - {"manifest.json"}
    other = Transformer(CONFIG)
    ckpt.load_weights(other, folder)
    for (name, a), (_, b) in zip(model.state_dict().items(), other.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
    assert other.src_embed.token.weight.data_ptr() == other.output.weight.data_ptr() or not CONFIG.tie_embeddings
    state = ckpt.load_trainer_state(folder)
    assert state["step"] == 3 and torch.equal(state["t"], torch.arange(3))


def test_no_file_in_a_checkpoint_is_a_pickle_except_the_weights_only_state(tmp_path):
    folder = save(tmp_path / "step-000001")
    for name in ["model.safetensors", "config.yaml", "tokenizer.json", "manifest.json"]:
        head = (folder / name).read_bytes()[:4]
        assert head[:2] != b"PK" and head[:1] != b"\x80", name  # neither zip (torch.save) nor raw pickle


@pytest.mark.parametrize("damage", ["truncate", "flip", "delete", "manifest"])
def test_corrupt_checkpoints_are_detected_and_skipped(tmp_path, damage):
    root = tmp_path / "checkpoints"
    good = save(root / "step-000005", step=5)
    bad = save(root / "step-000010", step=10)
    target = bad / "model.safetensors"
    if damage == "truncate":
        target.write_bytes(target.read_bytes()[:-10])
    elif damage == "flip":
        data = bytearray(target.read_bytes())
        data[len(data) // 2] ^= 0xFF
        target.write_bytes(bytes(data))
    elif damage == "delete":
        target.unlink()
    else:
        (bad / "manifest.json").write_text("{not json", encoding="utf-8")
    with pytest.raises(ckpt.CheckpointError, match="step-000010"):
        ckpt.verify(bad)
    warnings = []
    assert ckpt.latest_valid(root, warnings.append) == good
    assert len(warnings) == 1 and "WARNING" in warnings[0] and "step-000010" in warnings[0]


def test_a_kill_in_the_middle_of_a_write_leaves_the_previous_checkpoint_intact(tmp_path):
    root = tmp_path / "checkpoints"
    good = save(root / "step-000005", step=5)
    before = {p.name: p.read_bytes() for p in good.iterdir()}
    script = textwrap.dedent(f"""
        import sys; sys.path.insert(0, {os.path.dirname(__file__)!r})
        from test_checkpoint import save
        save({str(root / "step-000010")!r}, step=10)
    """)
    for site in ["ckpt:after_first_file", "ckpt:before_manifest", "ckpt:before_rename"]:
        result = subprocess.run([sys.executable, "-c", script], env={**os.environ, "AIAYN_FAULT": site}, timeout=120)
        assert result.returncode == -9, site  # killed by SIGKILL at the site
        assert not (root / "step-000010").exists()
        assert ckpt.latest_valid(root, print) == good
        assert {p.name: p.read_bytes() for p in good.iterdir()} == before
        assert len(ckpt.remove_stale(root)) == 1  # the unfinished temporary folder, cleaned at the next start
    # Killed after the rename: the new checkpoint is complete and is the one used.
    result = subprocess.run(
        [sys.executable, "-c", script], env={**os.environ, "AIAYN_FAULT": "ckpt:after_rename"}, timeout=120
    )
    assert result.returncode == -9
    assert ckpt.latest_valid(root, print) == root / "step-000010"


def test_disk_full_during_a_write_raises_and_leaves_nothing_behind(tmp_path, monkeypatch):
    root = tmp_path / "checkpoints"
    good = save(root / "step-000005", step=5)
    monkeypatch.setenv("AIAYN_FAULT", "ckpt:before_manifest:enospc")
    # One line (a UserError: the CLI prints it, exit 2) naming the folder and the bytes the checkpoint needs.
    full = r"step-000010: No space left on device \(writing [\d,]+ bytes; [\d,]+ bytes free"
    with pytest.raises(UserError, match=full):
        save(root / "step-000010", step=10)
    assert [p.name for p in root.iterdir()] == [good.name]


def test_weights_that_do_not_match_the_config_name_the_tensors(tmp_path):
    folder = save(tmp_path / "m", state=False)
    wider = Transformer(ModelConfig(**{**CONFIG.to_dict(), "d_model": 32, "d_ff": 32}))
    with pytest.raises(
        ckpt.CheckpointError,
        match=r"weights do not match the config \(shapes differ: .*\(40, 16\) vs "
        r"\(40, 32\)",
    ):
        ckpt.load_weights(wider, folder)
    deeper = Transformer(ModelConfig(**{**CONFIG.to_dict(), "n_encoder_layers": 2}))
    with pytest.raises(ckpt.CheckpointError, match="missing: encoder.layers.1"):
        ckpt.load_weights(deeper, folder)


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    folder = save(tmp_path / "m")
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, folder / "trainer_state.pt")
    with pytest.raises(ckpt.CheckpointError, match="trainer_state.pt: cannot load trainer state"):
        ckpt.load_trainer_state(folder)
    assert not marker.exists()


def test_missing_or_incomplete_model_folders(tmp_path):
    with pytest.raises(ckpt.CheckpointError, match="no such directory"):
        ckpt.verify(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ckpt.CheckpointError, match=r"incomplete model folder \(no manifest.json\)"):
        ckpt.verify(tmp_path / "empty")
    folder = save(tmp_path / "m", state=False)
    with pytest.raises(ckpt.CheckpointError, match="trainer_state.pt is not in its manifest"):
        ckpt.verify(folder, need_state=True)
    manifest = json.loads((folder / "manifest.json").read_text())
    assert "trainer_state.pt" not in manifest["files"]


def test_pointers_and_resolving_a_run_folder(tmp_path):
    a = save(tmp_path / "checkpoints" / "step-000001", step=1)
    b = save(tmp_path / "checkpoints" / "step-000002", step=2)
    ckpt.set_pointer(tmp_path, "last", b)
    assert ckpt.resolve_model_dir(tmp_path) == b.resolve()  # no best: last
    ckpt.set_pointer(tmp_path, "best", a)
    assert ckpt.resolve_model_dir(tmp_path) == a.resolve()
    assert ckpt.resolve_model_dir(b) == b
    assert os.readlink(tmp_path / "best") == os.path.join("checkpoints", "step-000001")  # relative: the run can move
