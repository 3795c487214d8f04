"""The checks aiayn.modelfile makes on a model folder before anything is allocated (issue 18).

- The manifest: `files` is a mapping of plain file names inside the folder to {"bytes": int, "sha256": str}.
- The safetensors header (the first 8 bytes are the little-endian length of a JSON header), read alone, without
  the tensors: names, dtypes (floating point only) and shapes, and its metadata (`aliases`: a JSON object of
  str -> str).
- The model the config implies, built on the `meta` device (no memory): its tensor names and shapes, compared
  with the header's, and the bytes of its parameters and buffers, refused above the memory this machine has;
  `max_len` is capped too (sinusoidal and rotary position tables are not stored, so the header cannot show it).
- After loading: every weight finite; the tokenizer's largest id inside the model's vocabulary.

Every failure is one line, a CheckpointError naming the folder or file and the field.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from aiayn.config import ModelConfig
from aiayn.errors import ModelFolderError
from aiayn.model import build
from aiayn.tokenizer import Tokenizer

FLOAT_DTYPES = ("F16", "BF16", "F32", "F64")
MAX_HEADER_BYTES = 100 * 2**20  # safetensors' own limit on the JSON header
MAX_LEN = 2**20  # positions: far beyond any family here, and a table of them still fits in memory
FALLBACK_MEMORY = 64 * 2**30  # the cap when /proc/meminfo cannot be read

Shape = tuple[int, ...]


class CheckpointError(ModelFolderError):
    """A checkpoint or model folder that cannot be used; the message names the folder and the reason."""


def check_manifest_files(folder: Path, manifest: Any) -> dict[str, dict[str, Any]]:
    """manifest["files"], checked: a mapping of plain file names (inside the folder) to int bytes + str sha256."""
    files = manifest.get("files") if isinstance(manifest, dict) else None
    if not isinstance(files, dict):
        raise CheckpointError(f"{folder}: corrupt manifest.json (files must be a mapping of file names to entries)")
    for name, entry in files.items():
        if not _plain_name(name):
            raise CheckpointError(
                f"{folder}: corrupt manifest.json (files: {name!r} is not a plain file name inside the folder)"
            )
        if not isinstance(entry, dict):
            raise CheckpointError(f"{folder}: corrupt manifest.json (files.{name} must be a mapping)")
        size = entry.get("bytes")
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise CheckpointError(f"{folder}: corrupt manifest.json (files.{name}.bytes must be an integer >= 0)")
        if not isinstance(entry.get("sha256"), str):
            raise CheckpointError(f"{folder}: corrupt manifest.json (files.{name}.sha256 must be a string)")
    return files


def check_manifest_dirs(folder: Path, manifest: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    """manifest["dirs"] (absent: none), checked: folders inside the folder (plain names), each a mapping of its
    files (plain names) to entries, as `files` is (a sharded checkpoint's `sharded/`)."""
    dirs = manifest.get("dirs", {})
    if not isinstance(dirs, dict):
        raise CheckpointError(f"{folder}: corrupt manifest.json (dirs must be a mapping of folder names to files)")
    for name, files in dirs.items():
        if not _plain_name(name):
            raise CheckpointError(f"{folder}: corrupt manifest.json (dirs: {name!r} is not a plain folder name)")
        check_manifest_files(folder / name, {"files": files})
    return dirs


def _plain_name(name: Any) -> bool:
    return (
        isinstance(name, str)
        and name not in ("", ".", "..")
        and not any(c in name for c in "/\\\0")
        and not Path(name).is_absolute()
        and Path(name).name == name
    )


def read_header(path: Path) -> tuple[dict[str, tuple[str, Shape]], dict[str, str]]:
    """The header of a safetensors file, without its tensors: ({name: (dtype, shape)}, aliases)."""
    try:
        with path.open("rb") as f:
            size = path.stat().st_size
            head = f.read(8)
            if len(head) < 8:
                raise CheckpointError(f"{path}: cannot read weights (shorter than a safetensors header)")
            (n,) = struct.unpack("<Q", head)
            if n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: cannot read weights (a header of {n:,} bytes is not safetensors)")
            header = json.loads(f.read(n).decode("utf-8"))
    except OSError as e:
        raise CheckpointError(f"{path}: cannot read weights ({e})") from None
    except (UnicodeDecodeError, ValueError) as e:
        raise CheckpointError(f"{path}: cannot read weights (the header is not JSON: {e})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: cannot read weights (the header is not a JSON object)")
    aliases = _aliases(path, header.pop("__metadata__", None) or {})
    tensors = {}
    for name, entry in header.items():
        dtype, shape = (entry.get("dtype"), entry.get("shape")) if isinstance(entry, dict) else (None, None)
        if not (isinstance(dtype, str) and isinstance(shape, list) and all(_count(d) for d in shape)):
            raise CheckpointError(f"{path}: cannot read weights (tensor {name}: no valid dtype and shape)")
        tensors[name] = (dtype, tuple(shape))
    return tensors, aliases


def _count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _aliases(path: Path, metadata: Any) -> dict[str, str]:
    """The tied weights' names in the header's metadata: {name: stored name}, one line when of the wrong type."""
    if not isinstance(metadata, dict):
        raise CheckpointError(f"{path}: cannot read weights (__metadata__ must be a JSON object)")
    try:
        aliases = json.loads(metadata.get("aliases", "{}"))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: metadata aliases is not JSON ({e})") from None
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{path}: metadata aliases must be a JSON object of str -> str")
    return aliases


def stored_shapes(path: Path) -> tuple[dict[str, Shape], dict[str, str]]:
    """({name: shape} of every weight, aliases included, aliases), from the header alone; integer or bool
    tensors are refused (weights are floating point)."""
    tensors, aliases = read_header(path)
    for name, (dtype, _) in tensors.items():
        if dtype not in FLOAT_DTYPES:
            raise CheckpointError(
                f"{path}: tensor {name} is {dtype}: weights must be floating point ({', '.join(FLOAT_DTYPES)})"
            )
    shapes = {name: shape for name, (_, shape) in tensors.items()}
    shapes |= {name: shapes[stored] for name, stored in aliases.items() if stored in shapes}
    return shapes, aliases


def planned_model(folder: Path, config: ModelConfig) -> dict[str, Shape]:
    """The shapes of the state dict the config implies, from a model built on the meta device (nothing is
    allocated); CheckpointError when its max_len or its memory is beyond what this machine can hold."""
    source = folder / "config.yaml"
    if config.max_len > MAX_LEN:
        raise CheckpointError(f"{source}: model.max_len={config.max_len:,} is more than {MAX_LEN:,} positions")
    with torch.device("meta"):
        model = build(config)
    tensors = [*model.parameters(), *model.buffers()]
    needed = sum(t.numel() * t.element_size() for t in tensors)
    cap, what = available_memory()
    if needed > cap:
        raise CheckpointError(
            f"{source}: the model needs {_gib(needed)} for its parameters and buffers, more than {what} ({_gib(cap)})"
        )
    return {name: tuple(t.shape) for name, t in model.state_dict().items()}


def available_memory() -> tuple[int, str]:
    """(bytes, where the figure comes from): MemAvailable of /proc/meminfo, else 64 GiB."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024, "the memory available"
    except (OSError, ValueError, IndexError):
        pass
    return FALLBACK_MEMORY, "the cap"


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**30 else f"{n / 2**20:,.1f} MiB"


def check_finite(path: Path, names: list[str], tensors: Mapping[str, torch.Tensor]) -> None:
    """CheckpointError naming the first of `names` whose tensor holds a NaN or an Inf."""
    for name in names:
        if not bool(torch.isfinite(tensors[name]).all()):
            raise CheckpointError(f"{path}: weights hold NaN or Inf (first in {name})")


def largest_id(tokenizer: Tokenizer) -> int:
    """The largest token id of the tokenizer (its BPE vocabulary and its added tokens)."""
    data = json.loads(tokenizer.to_json())
    ids = [i for i in (data.get("model") or {}).get("vocab", {}).values() if isinstance(i, int)]
    ids += [t["id"] for t in data.get("added_tokens") or [] if isinstance(t, dict) and isinstance(t.get("id"), int)]
    return max(ids, default=-1)


def check_tokenizer_ids(folder: Path, tokenizer: Tokenizer, vocab_size: int) -> None:
    """CheckpointError when an id of the tokenizer is beyond the model's vocabulary."""
    top = largest_id(tokenizer)
    if top >= vocab_size:
        raise CheckpointError(
            f"{folder}: tokenizer.json has the id {top:,}, beyond model.vocab_size {vocab_size:,}: "
            f"the tokenizer does not belong to this model"
        )
