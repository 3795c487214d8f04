"""Checkpoint folders: complete models (config.yaml, tokenizer.json, model.safetensors) plus, for resuming, the
trainer state (trainer_state.pt, loadable with torch.load(weights_only=True)), written atomically with a manifest.

Atomic write (reliability recipe §1.9): every file goes into `.step-NNNNNN.tmp-<uuid>/` beside the final folder
and is fsynced; `manifest.json` (sizes and sha256 of every file) is written last; one os.replace renames the
folder into place and the parent directory is fsynced. A folder is a valid checkpoint only if its manifest
parses and every file matches it, so a kill at any moment leaves either the old state or the new one.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import shutil
import signal
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors import SafetensorError
from safetensors.torch import load as load_safetensors
from safetensors.torch import save as save_safetensors

FORMAT = 1
MODEL_FILES = ("config.yaml", "tokenizer.json", "model.safetensors")
STATE_FILE = "trainer_state.pt"
MANIFEST = "manifest.json"
STEP_DIR = re.compile(r"^step-(\d+)$")


class CheckpointError(ValueError):
    """A checkpoint or model folder that cannot be used; the message names the folder and the reason."""


def fault(site: str, step: int | None = None) -> None:
    """Fault injection for tests: AIAYN_FAULT=<site> kills this process with SIGKILL at that site,
    <site>:sigterm sends it SIGTERM (as a scheduler would), and <site>:enospc raises 'No space left on device'
    there. <site>@N fires only at the checkpoint of step N. A no-op otherwise."""
    wanted = os.environ.get("AIAYN_FAULT", "")
    if step is not None and wanted.partition(":")[2].count("@"):
        name, _, rest = wanted.partition("@")
        at, _, action = rest.partition(":")
        if at != str(step):
            return
        wanted = f"{name}:{action}" if action else name
    if wanted == site:
        os.kill(os.getpid(), signal.SIGKILL)
    if wanted == f"{site}:sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    if wanted == f"{site}:enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _write_file(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())  # errors such as ENOSPC can surface only here: they propagate


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temporary file beside it, fsync, rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    _write_file(tmp, data)
    os.replace(tmp, path)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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


def save_checkpoint(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_json: bytes,
    trainer_state: dict[str, Any] | None = None,
    step: int = 0,
) -> Path:
    """Write a checkpoint folder atomically; returns its path. An existing folder of that name is replaced."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = folder.parent / f".{folder.name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        tensors, aliases = state_dict_for_saving(model)
        files: list[tuple[str, Callable[[], bytes]]] = [
            ("model.safetensors", lambda: save_safetensors(tensors, metadata={"aliases": json.dumps(aliases)})),
            ("config.yaml", lambda: yaml.safe_dump(config, sort_keys=False, allow_unicode=True).encode()),
            ("tokenizer.json", lambda: tokenizer_json),
        ]
        if trainer_state is not None:
            files.append((STATE_FILE, lambda: _torch_bytes(trainer_state)))
        manifest: dict[str, Any] = {"format": FORMAT, "step": step, "files": {}}
        for i, (name, make) in enumerate(files):
            data = make()
            _write_file(tmp / name, data)
            manifest["files"][name] = {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            if i == 0:
                fault("ckpt:after_first_file", step)
        fault("ckpt:before_manifest", step)
        _write_file(tmp / MANIFEST, json.dumps(manifest, indent=1).encode())
        _fsync_dir(tmp)
        fault("ckpt:before_rename", step)
        if folder.exists():  # rewriting the same step (e.g. a save on SIGTERM right after a periodic save)
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        fault("ckpt:after_rename", step)
        _fsync_dir(folder.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def verify(folder: str | Path, need_state: bool = False) -> dict[str, Any]:
    """The manifest of a valid checkpoint folder; CheckpointError naming the folder and what is wrong otherwise."""
    folder = Path(folder)
    if not folder.is_dir():
        raise CheckpointError(f"{folder}: not a model folder (no such directory)")
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        files = manifest["files"]
    except FileNotFoundError:
        raise CheckpointError(f"{folder}: incomplete model folder (no {MANIFEST})") from None
    except (ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f"{folder}: corrupt {MANIFEST} ({e})") from None
    needed = list(MODEL_FILES) + ([STATE_FILE] if need_state else [])
    for name in needed:
        if name not in files:
            raise CheckpointError(f"{folder}: incomplete model folder ({name} is not in its manifest)")
    for name, entry in files.items():
        path = folder / name
        if not path.is_file():
            raise CheckpointError(f"{folder}: incomplete model folder ({name} is missing)")
        data = path.read_bytes()
        if len(data) != entry.get("bytes") or hashlib.sha256(data).hexdigest() != entry.get("sha256"):
            raise CheckpointError(f"{folder}: corrupt checkpoint ({name}: sha256 mismatch)")
    return manifest


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """step-NNNNNN folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def remove_stale(root: str | Path) -> list[Path]:
    """Delete temporary folders left by a write that was killed; returns what was removed."""
    root = Path(root)
    stale = [p for p in root.glob(".*.tmp-*")] if root.is_dir() else []
    for p in stale:
        shutil.rmtree(p, ignore_errors=True)
    return stale


def latest_valid(root: str | Path, warn: Callable[[str], None]) -> Path | None:
    """The newest checkpoint under `root` that verifies, warning about each corrupt one passed over."""
    for _, path in reversed(list_checkpoints(root)):
        try:
            verify(path, need_state=True)
            return path
        except CheckpointError as e:
            warn(f"WARNING skipping corrupt checkpoint: {e}")
    return None


def set_pointer(run_dir: str | Path, name: str, target: Path) -> None:
    """Point `run_dir/name` (a relative symlink: `best`, `last`) at a checkpoint folder, atomically."""
    run_dir = Path(run_dir)
    tmp = run_dir / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    os.symlink(os.path.relpath(target, run_dir), tmp)
    fault("ckpt:before_pointer")
    os.replace(tmp, run_dir / name)
    _fsync_dir(run_dir)


def resolve_model_dir(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (then its `best`, else its `last` checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: no such model folder")
    if (path / MANIFEST).exists() or not ((path / "best").exists() or (path / "last").exists()):
        return path
    return (path / "best").resolve() if (path / "best").exists() else (path / "last").resolve()


def load_weights(model: torch.nn.Module, folder: str | Path) -> None:
    """Load model.safetensors into `model` (never unpickles); a mismatch names the tensors and their shapes."""
    path = Path(folder) / "model.safetensors"
    try:
        data = path.read_bytes()
        tensors = load_safetensors(data)
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
    except (OSError, SafetensorError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    for name, stored in aliases.items():
        if stored in tensors:
            tensors[name] = tensors[stored]
    expected = model.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = [
        f"{n} {tuple(tensors[n].shape)} vs {tuple(t.shape)} in the config"
        for n, t in expected.items()
        if n in tensors and tensors[n].shape != t.shape
    ]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            parts.append("shapes differ: " + ", ".join(wrong[:4]) + (" ..." if len(wrong) > 4 else ""))
        if missing:
            parts.append(f"missing: {', '.join(missing[:4])}" + (" ..." if len(missing) > 4 else ""))
        if unexpected:
            parts.append(f"unexpected: {', '.join(unexpected[:4])}" + (" ..." if len(unexpected) > 4 else ""))
        raise CheckpointError(f"{path}: weights do not match the config ({'; '.join(parts)})")
    with torch.no_grad():
        for name, tensor in expected.items():
            tensor.copy_(tensors[name])


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """The resume state; torch.load with weights_only=True, so a file that carries code is refused."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable; say which and why
        raise CheckpointError(f"{path}: cannot load trainer state ({type(e).__name__}: {e})") from None
