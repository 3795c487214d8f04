"""Issue 18: a model folder is checked before anything is allocated, and every defect is one line of error.

Each test writes a tiny model folder, damages one thing, and fixes the manifest's bytes and sha256 so that only
the check under test can trip.
"""

import hashlib
import json
import os
import re
import subprocess
import sys
import time

import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from aiayn import modelfile, modelfile_checks
from aiayn.config import ModelConfig
from aiayn.model import build
from aiayn.modelfile import CheckpointError
from aiayn.tokenizer_train import train_tokenizer
from aiayn.train import checkpoint as ckpt

TEXT = ["some text about two dogs that play in the snow", "a man rides a bike down the street"]


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, 60)


@pytest.fixture
def folder(tmp_path, tokenizer):
    """A valid tiny model folder (tied weights, so its safetensors has aliases)."""
    torch.manual_seed(0)
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32
    )
    tokenizer.save(tmp_path / "tokenizer.json")
    path = tmp_path / "model"
    ckpt.save_checkpoint(
        path, model=build(config), config={"model": config.to_dict()},
        tokenizer_json=(tmp_path / "tokenizer.json").read_bytes(),
    )  # fmt: skip
    return path


def manifest(folder):
    return json.loads((folder / "manifest.json").read_text(encoding="utf-8"))


def write_manifest(folder, data):
    (folder / "manifest.json").write_text(json.dumps(data), encoding="utf-8")


def refresh(folder, name):
    """Make the manifest agree with the file `name` as it is now."""
    data = manifest(folder)
    raw = (folder / name).read_bytes()
    data["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    write_manifest(folder, data)


def rewrite_weights(folder, change=None, metadata=None):
    """Rewrite model.safetensors: change(tensors) edits the tensors; `metadata` replaces the metadata."""
    path = folder / "model.safetensors"
    tensors = load_file(str(path))
    with safe_open(str(path), framework="pt") as f:
        old = f.metadata()
    if change is not None:
        change(tensors)
    save_file(tensors, str(path), metadata=old if metadata is None else metadata)
    refresh(folder, "model.safetensors")


def rewrite_config(folder, **model):
    config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
    config["model"].update(model)
    (folder / "config.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
    refresh(folder, "config.yaml")


def one_line(error):
    message = str(error.value)
    assert "\n" not in message, message
    return message


def no_build(monkeypatch):
    """Building the real model fails the test: the check must come first."""

    def fail(config):
        raise AssertionError("the real model was built before the folder was checked")

    monkeypatch.setattr(modelfile, "build", fail)


def test_a_valid_folder_still_loads(folder):
    model, tokenizer, config, path = modelfile.load(folder)
    stored = load_file(str(folder / "model.safetensors"))
    assert path == folder and config["model"]["d_ff"] == 32
    assert all(torch.equal(model.state_dict()[name], t) for name, t in stored.items())


# --- 1. the manifest ---------------------------------------------------------------------------------------------


def test_manifest_files_must_be_a_mapping(folder):
    data = manifest(folder)
    write_manifest(folder, data | {"files": sorted(data["files"])})
    with pytest.raises(CheckpointError) as e:
        modelfile.verify(folder)
    assert f"{folder}: corrupt manifest.json (files must be a mapping" in one_line(e)


@pytest.mark.parametrize("name", ["../outside.txt", "sub/x.txt", "ABSOLUTE", "..", "."])
def test_manifest_names_must_be_plain_file_names_inside_the_folder(folder, tmp_path, name):
    outside = tmp_path / "outside.txt"
    outside.write_text("not part of the model", encoding="utf-8")
    if name == "sub/x.txt":
        (folder / "sub").mkdir()
        (folder / "sub" / "x.txt").write_bytes(outside.read_bytes())
    name = str(outside) if name == "ABSOLUTE" else name
    data = manifest(folder)
    raw = outside.read_bytes()
    data["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    write_manifest(folder, data)
    with pytest.raises(CheckpointError) as e:
        modelfile.verify(folder)
    assert f"{folder}: corrupt manifest.json (files: {name!r} is not a plain file name" in one_line(e)


@pytest.mark.parametrize(
    ("entry", "field"),
    [
        (lambda e: e | {"bytes": str(e["bytes"])}, "bytes must be an integer"),
        (lambda e: e | {"bytes": True}, "bytes must be an integer"),
        (lambda e: {"sha256": e["sha256"]}, "bytes must be an integer"),
        (lambda e: e | {"sha256": 12}, "sha256 must be a string"),
        (lambda e: [e["bytes"], e["sha256"]], "must be a mapping"),
    ],
)
def test_manifest_entries_need_int_bytes_and_str_sha256(folder, entry, field):
    data = manifest(folder)
    data["files"]["config.yaml"] = entry(data["files"]["config.yaml"])
    write_manifest(folder, data)
    with pytest.raises(CheckpointError) as e:
        modelfile.verify(folder)
    assert f"{folder}: corrupt manifest.json (files.config.yaml" in one_line(e) and field in str(e.value)


# --- 2. the safetensors metadata ---------------------------------------------------------------------------------


@pytest.mark.parametrize("aliases", [json.dumps(["a", "b"]), json.dumps({"a": 1}), json.dumps("x")])
def test_aliases_of_the_wrong_type_are_one_line(folder, aliases):
    rewrite_weights(folder, metadata={"aliases": aliases})
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert "model.safetensors: metadata aliases must be a JSON object of str -> str" in one_line(e)


# --- 3. the header, before the model is built -------------------------------------------------------------------


def test_weights_that_do_not_match_are_found_before_the_model_is_built(folder, monkeypatch):
    rewrite_config(folder, d_ff=48)
    no_build(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert "weights do not match the config (shapes differ:" in one_line(e) and "(32, 16) vs (48, 16)" in str(e.value)


def test_missing_and_unexpected_tensors_are_found_before_the_model_is_built(folder, monkeypatch):
    def rename(tensors):
        tensors["not.a.weight"] = tensors.pop("decoder.layers.0.ffn_block.norm.weight")

    rewrite_weights(folder, rename)
    no_build(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert "missing: decoder.layers.0.ffn_block.norm.weight; unexpected: not.a.weight" in one_line(e)


@pytest.mark.parametrize(("dtype", "name"), [(torch.int64, "I64"), (torch.bool, "BOOL"), (torch.uint8, "U8")])
def test_integer_or_bool_weights_are_refused(folder, monkeypatch, dtype, name):
    def cast(tensors):
        tensors["decoder.layers.0.ffn_block.norm.weight"] = tensors["decoder.layers.0.ffn_block.norm.weight"].to(dtype)

    rewrite_weights(folder, cast)
    no_build(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert f"tensor decoder.layers.0.ffn_block.norm.weight is {name}: weights must be floating point" in one_line(e)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_other_floating_point_weights_still_load(folder, dtype):
    rewrite_weights(folder, lambda tensors: tensors.update({k: t.to(dtype) for k, t in tensors.items()}))
    model, *_ = modelfile.load(folder)
    assert model.state_dict()["decoder.layers.0.ffn_block.norm.weight"].dtype == torch.float32


@pytest.mark.parametrize(("field", "value"), [("d_ff", 10**12), ("max_len", 10**9), ("d_model", 2**20)])
def test_a_config_too_big_for_the_machine_fails_fast(folder, monkeypatch, field, value):
    rewrite_config(folder, **{field: value})
    no_build(monkeypatch)
    start = time.perf_counter()
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert time.perf_counter() - start < 10
    message = one_line(e)
    assert message.startswith(f"{folder / 'config.yaml'}: ")
    if field == "max_len":
        assert "model.max_len=1,000,000,000 is more than 1,048,576 positions" in message
    else:
        assert "the model needs " in message and " GiB for its parameters and buffers, more than" in message


def test_the_memory_cap_gives_the_figure(folder, monkeypatch):
    monkeypatch.setattr(modelfile_checks, "available_memory", lambda: (2**16, "the memory available"))
    no_build(monkeypatch)
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert re.search(
        r"the model needs 0\.\d MiB for its parameters and buffers, more than the memory available "
        r"\(0\.1 MiB\)$",
        one_line(e),
    ), str(e.value)


def test_the_cap_is_64_gib_without_meminfo(monkeypatch, tmp_path):
    real = modelfile_checks.Path
    monkeypatch.setattr(
        modelfile_checks, "Path", lambda p: real(tmp_path / "no-meminfo") if p == "/proc/meminfo" else real(p)
    )
    assert modelfile_checks.available_memory() == (64 * 2**30, "the cap")


def test_a_header_that_is_not_safetensors_is_one_line(folder):
    (folder / "model.safetensors").write_bytes((10**15).to_bytes(8, "little") + b"{}")
    refresh(folder, "model.safetensors")
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert "model.safetensors: cannot read weights" in one_line(e)


# --- 4. finite weights -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_weights_are_one_line_naming_the_folder_and_tensor(folder, bad):
    def poison(tensors):
        tensors["decoder.layers.0.ffn_block.norm.bias"][3] = bad
        tensors["decoder.layers.0.ffn.w2.weight"][0, 0] = bad  # later in the model: not the one named

    rewrite_weights(folder, poison)
    names = list(
        build(ModelConfig.from_dict(yaml.safe_load((folder / "config.yaml").read_text())["model"])).state_dict()
    )
    assert names.index("decoder.layers.0.ffn.w2.weight") < names.index("decoder.layers.0.ffn_block.norm.bias")
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert str(folder) in one_line(e)
    assert "weights hold NaN or Inf (first in decoder.layers.0.ffn.w2.weight)" in str(e.value)


# --- 5. the tokenizer's ids -------------------------------------------------------------------------------------


def test_a_tokenizer_whose_ids_pass_the_vocabulary_is_refused(folder, tokenizer):
    data = json.loads((folder / "tokenizer.json").read_text(encoding="utf-8"))
    vocab = data["model"]["vocab"]
    last = max(vocab, key=vocab.get)
    vocab[last] = tokenizer.vocab_size + 100  # as many tokens as the model has, but one id beyond them
    (folder / "tokenizer.json").write_text(json.dumps(data), encoding="utf-8")
    refresh(folder, "tokenizer.json")
    with pytest.raises(CheckpointError) as e:
        modelfile.load(folder)
    assert f"tokenizer.json has the id {tokenizer.vocab_size + 100:,}, beyond model.vocab_size" in one_line(e)


# --- the command line --------------------------------------------------------------------------------------------


def test_cli_translate_on_a_bad_folder_is_one_line_and_exit_2(folder):
    rewrite_weights(folder, lambda tensors: tensors["decoder.layers.0.ffn_block.norm.weight"].fill_(float("nan")))
    proc = subprocess.run(
        [sys.executable, "-m", "aiayn", "translate", "--model", str(folder)], input="two dogs\n",
        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert (
        "weights hold NaN or Inf (first in decoder.layers.0.ffn_block.norm.weight)" in proc.stderr and proc.stdout == ""
    )
