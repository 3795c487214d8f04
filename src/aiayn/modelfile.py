"""The model folder: config.yaml + tokenizer.json + model.safetensors + manifest.json, the one format that
training writes and inference, viz, explain, serve, interop and the CLI read.

Written atomically (reliability recipe §1.9): every file goes into `.NAME.tmp-<uuid>/` beside the final folder
and is fsynced; `manifest.json` (sizes and sha256 of every file) is written last; one os.replace renames the
folder into place and the parent directory is fsynced. A folder is valid only if its manifest parses and every
file matches it, so a kill at any moment leaves either the old folder or the new one. Weights are safetensors
(never a pickle); tied weights are stored once. The model's special ids are part of its config (`model.*_id`).

Loading checks before it allocates (aiayn.modelfile_checks): the manifest's names and fields; the config's model
built on the meta device (its memory against this machine's, its names and shapes against the safetensors
header, read alone; floating-point weights only); then the real model, finite weights, and a tokenizer whose
ids fit the model's vocabulary. Every failure is one line, a CheckpointError naming the folder and the field.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

from aiayn.config import ModelConfig
from aiayn.errors import ConfigError
from aiayn.files import fault, fsync_dir, temp_beside, write_file
from aiayn.model import build
from aiayn.modelfile_checks import (
    CheckpointError,
    check_finite,
    check_manifest_dirs,
    check_manifest_files,
    check_tokenizer_ids,
    planned_model,
    stored_shapes,
)
from aiayn.tokenizer import Tokenizer
from aiayn.tokenizer_moses import preprocessed
from aiayn.tokenizer_pretrained import FILES as PRETRAINED_FILES
from aiayn.tokenizer_pretrained import load_pretrained

__all__ = [
    "FORMAT", "MANIFEST", "MODEL_FILES", "TOKENIZER_FILES", "CheckpointError", "load", "load_weights", "read_config",
    "read_tokenizer", "resolve", "save_folder", "state_dict_for_saving", "tokenizer_kind", "verify",
]  # fmt: skip

FORMAT = 1
MODEL_FILES = ("config.yaml", "tokenizer.json", "model.safetensors")  # a folder with aiayn's own tokenizer
MANIFEST = "manifest.json"
# The tokenizer's files by kind (manifest.json's "tokenizer"; absent: aiayn's own, in tokenizer.json). An imported
# model keeps the tokenizer it came with (aiayn.tokenizer_pretrained).
TOKENIZER_FILES = {"bpe": ("tokenizer.json",), "char": ("tokenizer.json",), **PRETRAINED_FILES}


def tokenizer_kind(manifest: dict[str, Any]) -> str:
    """The kind of tokenizer a (verified) folder's manifest records: "bpe" for aiayn's own, whether bpe or char."""
    return manifest.get("tokenizer", "bpe")


def state_dict_for_saving(model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The model's tensors with tied weights stored once: (tensors, aliases {name: stored name})."""
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    seen: dict[tuple[int, int, tuple[int, ...]], str] = {}
    for name, tensor in model.state_dict().items():
        key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        if key in seen:
            aliases[name] = seen[key]
        else:
            seen[key] = name
            tensors[name] = tensor.detach().to("cpu").contiguous()
    return tensors, aliases


def save_folder(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_json: bytes | None = None,
    extra: dict[str, Callable[[], bytes]] | None = None,
    step: int = 0,
    tokenizer_files: dict[str, bytes] | None = None,
    tokenizer_kind: str = "bpe",
    extra_dirs: dict[str, Path] | None = None,
) -> Path:
    """Write a model folder atomically (plus `extra` files, e.g. a trainer state, and `extra_dirs`, folders of plain
    files written elsewhere, e.g. by other processes, moved in under their names); returns its path. An existing
    folder of that name is replaced. `step` names the checkpoint for the fault-injection hook (`@N`).
    The tokenizer is aiayn's own `tokenizer_json`, or an imported one's `tokenizer_files` of `tokenizer_kind`."""
    tokenizer = _tokenizer_files(tokenizer_json, tokenizer_files, tokenizer_kind)
    folder = Path(folder)
    if folder.exists() and not (folder / MANIFEST).is_file() and (not folder.is_dir() or any(folder.iterdir())):
        # Replacing is for rewriting a model folder (the same step saved twice); anything else is the user's.
        raise CheckpointError(f"{folder}: exists and is not a model folder; refusing to replace it (choose a new name)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_beside(folder)
    tmp.mkdir()
    try:
        dirs = {name: _move_into(src, tmp / name) for name, src in (extra_dirs or {}).items()}
        tensors, aliases = state_dict_for_saving(model)
        files: list[tuple[str, Callable[[], bytes]]] = [
            ("model.safetensors", lambda: save_safetensors(tensors, metadata={"aliases": json.dumps(aliases)})),
            ("config.yaml", lambda: yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()),
            *((name, lambda data=data: data) for name, data in tokenizer.items()),
            *(extra or {}).items(),
        ]
        manifest: dict[str, Any] = {"format": FORMAT, "step": step, "files": {}, **({"dirs": dirs} if dirs else {})}
        if tokenizer_kind not in ("bpe", "char"):
            manifest["tokenizer"] = tokenizer_kind
        for i, (name, make) in enumerate(files):
            data = make()
            write_file(tmp / name, data, "ckpt" if i == 0 else "", step)  # the weights carry the mid-file sites
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if i == 0:
                fault("ckpt:after_first_file", step)
        fault("ckpt:before_manifest", step)
        write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        fsync_dir(tmp)
        fault("ckpt:before_rename", step)
        if folder.exists():  # rewriting the same step (e.g. a save on SIGTERM right after a periodic save)
            shutil.rmtree(folder)
        fault("ckpt:rename", step)  # tests: the rename itself failing (ckpt:rename:enospc)
        os.replace(tmp, folder)
        fault("ckpt:after_rename", step)
        fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for src in (extra_dirs or {}).values():
            shutil.rmtree(src, ignore_errors=True)
        raise
    return folder


def _move_into(src: Path, dest: Path) -> dict[str, dict[str, Any]]:
    """Move folder `src` to `dest`; its files' manifest entries (plain names: bytes, sha256)."""
    os.replace(src, dest)
    return {p.name: {"bytes": p.stat().st_size, "sha256": _sha256(p)} for p in sorted(dest.iterdir())}


def _tokenizer_files(json_bytes: bytes | None, files: dict[str, bytes] | None, kind: str) -> dict[str, bytes]:
    if (json_bytes is None) == (files is None):
        raise TypeError("save_folder needs either tokenizer_json or tokenizer_files")
    if kind not in TOKENIZER_FILES:
        raise ValueError(f"tokenizer_kind={kind!r} is not one of {', '.join(TOKENIZER_FILES)}")
    files = {"tokenizer.json": json_bytes} if files is None else files
    missing = set(TOKENIZER_FILES[kind]) - set(files)
    if missing:
        raise ValueError(f"a {kind} tokenizer needs the files {', '.join(sorted(missing))}")
    return files


def verify(folder: str | Path, need: tuple[str, ...] = ()) -> dict[str, Any]:
    """The manifest of a valid model folder holding its config, weights and tokenizer files (and `need`);
    CheckpointError naming the folder and what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (no such directory)")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: incomplete model folder (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder}: corrupt {MANIFEST} ({e})") from None
    files = check_manifest_files(folder, manifest)
    entries = dict(files)
    for name, dir_files in check_manifest_dirs(folder, manifest).items():
        entries.update({f"{name}/{file}": entry for file, entry in dir_files.items()})
    kind = tokenizer_kind(manifest)
    if kind not in TOKENIZER_FILES:
        known = ", ".join(TOKENIZER_FILES)
        raise CheckpointError(f"{folder}: corrupt {MANIFEST} (tokenizer {kind!r} is not one of {known})")
    for name in ("config.yaml", *TOKENIZER_FILES[kind], "model.safetensors", *need):
        if name not in files:
            raise CheckpointError(f"{folder}: incomplete model folder ({name} is not in its manifest)")
    for name, entry in entries.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: incomplete model folder ({name} is missing)")
        if path.stat().st_size != entry["bytes"] or _sha256(path) != entry["sha256"]:
            raise CheckpointError(f"{folder}: corrupt checkpoint ({name}: sha256 mismatch)")
    return manifest


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 24):
            digest.update(chunk)
    return digest.hexdigest()


def resolve(path: str | Path) -> Path:
    """A model folder, or a run folder (then its `best`, else its `last` checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if (path / MANIFEST).exists() or not ((path / "best").exists() or (path / "last").exists()):
        return path
    return (path / "best").resolve() if (path / "best").exists() else (path / "last").resolve()


def load_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load model.safetensors into `model` (never unpickles); a mismatch names the tensors and their shapes.
    The header is checked first (names, shapes, floating-point dtypes), then every weight must be finite."""
    path = Path(folder) / "model.safetensors"
    expected = model.state_dict()
    check_header(path, {name: tuple(t.shape) for name, t in expected.items()})
    try:
        tensors = load_safetensors(path.read_bytes())
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    _, aliases = stored_shapes(path)
    for name, stored in aliases.items():
        if stored in tensors:
            tensors[name] = tensors[stored]
    problems = _mismatch(expected, tensors)
    if problems:
        raise CheckpointError(f"{path}: weights do not match the config ({problems})")
    check_finite(path, list(expected), tensors)
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(tensors[name])


def check_header(path: Path, expected: dict[str, tuple[int, ...]]) -> None:
    """The safetensors header of `path` (read alone, no tensor loaded) against the expected {name: shape}:
    CheckpointError naming what differs, or the first tensor that is not floating point."""
    shapes, _ = stored_shapes(path)
    problems = _mismatch(expected, shapes)
    if problems:
        raise CheckpointError(f"{path}: weights do not match the config ({problems})")


def _shape(value: Any) -> tuple[int, ...]:
    return tuple(value.shape) if hasattr(value, "shape") else tuple(value)


def _mismatch(expected: dict[str, Any], tensors: dict[str, Any]) -> str:
    """'' when the names and shapes agree, else what differs (the first four of each kind). The values are
    tensors or shapes."""

    def first(names: list[str]) -> str:
        return ", ".join(names[:4]) + (" ..." if len(names) > 4 else "")

    wrong = [
        f"{n} {_shape(tensors[n])} vs {_shape(t)} in the config"
        for n, t in expected.items()
        if n in tensors and _shape(tensors[n]) != _shape(t)
    ]
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    parts = [f"shapes differ: {first(wrong)}"] if wrong else []
    parts += [f"missing: {first(missing)}"] if missing else []
    parts += [f"unexpected: {first(unexpected)}"] if unexpected else []
    return "; ".join(parts)


def read_config(folder: Path) -> tuple[dict[str, Any], ModelConfig]:
    """(the folder's whole config.yaml as plain data, its model section as a ModelConfig)."""
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        return config, ModelConfig.from_dict(config["model"])
    except yaml.YAMLError as e:  # PyYAML's own message spans several lines: its line and problem, in one
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark is not None else ""
        problem = " ".join(str(getattr(e, "problem", None) or e).split())
        raise CheckpointError(f"{folder / 'config.yaml'}{where}: not valid YAML ({problem})") from None
    except (OSError, KeyError, TypeError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise CheckpointError(f"{folder / 'config.yaml'}: not a usable model config ({reason})") from None


def read_tokenizer(folder: Path, model_config: ModelConfig, kind: str = "bpe") -> Tokenizer:
    """The folder's tokenizer (of the kind its manifest records), checked against the model it belongs to."""
    if kind in PRETRAINED_FILES:
        try:
            tokenizer = load_pretrained(folder, kind)
        except (OSError, ValueError) as e:
            raise CheckpointError(f"{folder}: cannot load its {kind} tokenizer ({e})") from None
        if tokenizer.vocab_size > model_config.vocab_size:
            raise CheckpointError(
                f"{folder}: the {kind} tokenizer has ids up to {tokenizer.vocab_size - 1:,}, beyond model.vocab_size "
                f"{model_config.vocab_size:,}: the tokenizer does not belong to this model"
            )
        return tokenizer
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{folder / 'tokenizer.json'}: cannot load the tokenizer ({e})") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer.json has {tokenizer.vocab_size:,} tokens but the weights were made for "
            f"model.vocab_size {model_config.vocab_size:,}: the tokenizer does not belong to this model"
        )
    check_tokenizer_ids(folder, tokenizer, model_config.vocab_size)
    return tokenizer


def load(path: str | Path) -> tuple[torch.nn.Module, Tokenizer, dict[str, Any], Path]:
    """A model folder (or a run folder's best) -> (model on the CPU in eval mode, tokenizer, whole config as
    plain data, the folder). CheckpointError, one line naming the folder and the problem, when the folder is
    missing or incomplete, its files do not match their manifest, the tokenizer does not belong to the weights,
    the weights do not match the config or are not finite, or the config implies more memory than there is. The
    weights' header is compared with a model built on the meta device before the real one is built."""
    folder = resolve(path)
    manifest = verify(folder)
    config, model_config = read_config(folder)
    check_header(folder / "model.safetensors", planned_model(folder, model_config))
    tokenizer = _preprocessed(folder, read_tokenizer(folder, model_config, tokenizer_kind(manifest)), config)
    model = build(model_config)
    load_weights(model, folder)
    return model.eval(), tokenizer, config, folder


def _preprocessed(folder: Path, tokenizer, config: dict[str, Any]):
    """The tokenizer seeing text as the model was trained on it: data.moses / data.lowercase of its config."""
    data = config.get("data") or {}
    try:
        return preprocessed(tokenizer, data.get("moses") or "", bool(data.get("lowercase")))
    except ConfigError as e:
        raise CheckpointError(f"{folder / 'config.yaml'}: {e}") from None
