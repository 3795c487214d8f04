"""Training checkpoints: a model folder (aiayn.modelfile) plus, for resuming, the trainer state
(trainer_state.pt, loadable with torch.load(weights_only=True)), under `<run>/checkpoints/step-NNNNNN/`, with the
run folder's `best` and `last` pointers. The folder format itself, and its atomic write, live in aiayn.modelfile.
"""

from __future__ import annotations

import errno
import io
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from aiayn.files import disk_full, fault, fsync_dir, temp_beside, write_atomic
from aiayn.modelfile import (
    FORMAT,
    MANIFEST,
    MODEL_FILES,
    CheckpointError,
    load_weights,
    save_folder,
    state_dict_for_saving,
)
from aiayn.modelfile import resolve as resolve_model_dir
from aiayn.modelfile import verify as _verify

__all__ = [
    "FORMAT", "MANIFEST", "MODEL_FILES", "STATE_FILE", "CheckpointError", "fault", "latest_valid", "list_checkpoints",
    "load_trainer_state", "load_weights", "remove_stale", "resolve_model_dir", "save_checkpoint", "save_model_folder",
    "set_pointer",
    "state_dict_for_saving", "verify", "write_atomic",
]  # fmt: skip

STATE_FILE = "trainer_state.pt"
STEP_DIR = re.compile(r"^step-(\d+)$")


def save_checkpoint(
    folder: str | Path,
    *,
    model: torch.nn.Module,
    config: dict[str, Any],
    tokenizer_json: bytes | None = None,
    trainer_state: dict[str, Any] | None = None,
    step: int = 0,
    tokenizer_files: dict[str, bytes] | None = None,
    tokenizer_kind: str = "bpe",
    extra_dirs: dict[str, Path] | None = None,
) -> Path:
    """Write a checkpoint folder atomically: a model folder, plus trainer_state.pt when a state is given (and
    `extra_dirs`, e.g. an FSDP run's sharded state, moved in). A full
    disk is one line naming the folder and the space the checkpoint needs; nothing of the write is left behind.
    The tokenizer: aiayn's own `tokenizer_json`, or an imported one's `tokenizer_files` of `tokenizer_kind`."""
    extra = {STATE_FILE: lambda: _torch_bytes(trainer_state)} if trainer_state is not None else None
    try:
        return save_folder(folder, model=model, config=config, tokenizer_json=tokenizer_json, extra=extra, step=step,
                           tokenizer_files=tokenizer_files, tokenizer_kind=tokenizer_kind,
                           extra_dirs=extra_dirs)  # fmt: skip
    except OSError as e:
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(Path(folder), _tensor_bytes(model.state_dict()) + _tensor_bytes(trainer_state)) from None


def save_model_folder(folder: str | Path, model: torch.nn.Module, config: dict[str, Any], tokenizer: dict[str, bytes],
                      kind: str) -> Path:  # fmt: skip
    """A model folder of `model` with `tokenizer`, the files of a tokenizer of `kind` read from another folder (what
    `aiayn average` and `aiayn checkpoint consolidate` write)."""
    if kind in ("bpe", "char"):
        return save_checkpoint(Path(folder), model=model, config=config, tokenizer_json=tokenizer["tokenizer.json"])
    return save_checkpoint(Path(folder), model=model, config=config, tokenizer_files=tokenizer, tokenizer_kind=kind)


def _tensor_bytes(obj: Any) -> int:
    """The bytes of every tensor in a (nested) state: about what saving it takes."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(_tensor_bytes(v) for v in obj.values())
    if isinstance(obj, list | tuple):
        return sum(_tensor_bytes(v) for v in obj)
    return 0


def _torch_bytes(obj: Any) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def verify(folder: str | Path, need_state: bool = False) -> dict[str, Any]:
    """The manifest of a valid checkpoint folder (with its trainer state when need_state); CheckpointError
    naming the folder and what is wrong otherwise."""
    return _verify(folder, (STATE_FILE,) if need_state else ())


def list_checkpoints(root: str | Path) -> list[tuple[int, Path]]:
    """step-NNNNNN folders under `root`, oldest first."""
    root = Path(root)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := STEP_DIR.match(p.name)) and p.is_dir()]
    return sorted(found)


def remove_stale(root: str | Path) -> list[Path]:
    """Delete the temporaries (`.NAME.tmp-*`: folders, files, pointer symlinks) left under `root` by a write that
    was killed; returns what was removed. One that cannot be removed is an error, not silently kept."""
    root = Path(root)
    stale = sorted(root.glob(".*.tmp-*")) if root.is_dir() else []
    for p in stale:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:  # a file or a symlink (rmtree refuses a symlink, and ignore_errors used to hide that)
            p.unlink(missing_ok=True)
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


def set_pointer(run_dir: str | Path, name: str, target: Path, step: int | None = None) -> None:
    """Point `run_dir/name` (a relative symlink: `best`, `last`) at a checkpoint folder, atomically. A full disk
    is one line naming the pointer, with its temporary removed. `step` is the checkpoint being saved (for `@N`)."""
    run_dir = Path(run_dir)
    tmp = temp_beside(run_dir / name)
    link = os.path.relpath(target, run_dir)
    try:
        os.symlink(link, tmp)
        fault("ckpt:before_pointer", step)
        fault(f"ckpt:before_{name}", step)
        os.replace(tmp, run_dir / name)
        fsync_dir(run_dir)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise disk_full(run_dir / name, len(link)) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def load_trainer_state(folder: str | Path) -> dict[str, Any]:
    """The resume state; torch.load with weights_only=True, so a file that carries code is refused."""
    path = Path(folder) / STATE_FILE
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unpickling failure means the file is unusable; say which and why
        raise CheckpointError(f"{path}: cannot load trainer state ({type(e).__name__}: {e})") from None


def restore_trainer_state(folder: str | Path, optimizer, scaler, set_rng: Callable[[dict], None]) -> dict[str, Any]:
    """Load trainer_state.pt into the optimizer, the GradScaler (fp16) and the RNGs; return its trainer part. A
    state that loads safely but lacks what resume needs, or does not fit this optimizer, is one line naming the
    file (CheckpointError), not a traceback from deep inside PyTorch."""
    path = Path(folder) / STATE_FILE
    state = load_trainer_state(folder)
    missing = [key for key in ("optimizer", "rng", "trainer") if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a trainer state (no {', '.join(missing)}); resume from another checkpoint")
    try:
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        set_rng(state["rng"])
        if not isinstance(state["trainer"], dict) or not isinstance(state["trainer"].get("step"), int):
            raise ValueError("its trainer part has no step")
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise CheckpointError(f"{path}: does not fit this run ({type(e).__name__}: {e})") from None
    return state["trainer"]
