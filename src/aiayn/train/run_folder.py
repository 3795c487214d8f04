"""The run folder: what one training run writes, and only rank 0 writes it.

<out_dir>/config.yaml        the run's resolved config
<out_dir>/tokenizer.json     the tokenizer (trained here, or a copy of the one given)
<out_dir>/metrics.jsonl      one JSON object per log line and per evaluation
<out_dir>/checkpoints/step-NNNNNN/   model folders + trainer_state.pt (aiayn.train.checkpoint)
<out_dir>/best, <out_dir>/last       relative symlinks to checkpoints
<out_dir>/cache/             token caches (aiayn.data.prepare)
"""

from __future__ import annotations

import errno
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from aiayn.config import ModelConfig
from aiayn.errors import DataError, UserError
from aiayn.files import disk_full, write_atomic
from aiayn.modelfile import tokenizer_kind
from aiayn.tokenizer import Tokenizer
from aiayn.tokenizer_moses import preprocessed
from aiayn.tokenizer_pretrained import FILES as PRETRAINED_FILES
from aiayn.tokenizer_pretrained import load_pretrained
from aiayn.train import checkpoint as ckpt


class ResumeError(UserError):
    """A resume that cannot continue (incompatible config or tokenizer); the message lists what differs."""


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'model.d_model: 64 in the checkpoint, 128 now' for every model key that differs (keys a checkpoint
    predates count at their defaults)."""
    old, new = ModelConfig.from_dict(old).to_dict(), ModelConfig.from_dict(new).to_dict()
    keys = sorted(set(old) | set(new))
    return [
        f"model.{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    ]


class RunFolder:
    """Paths and writes of one run folder (see the module docstring)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.checkpoints = self.root / "checkpoints"
        self.metrics = self.root / "metrics.jsonl"

    def append_metrics(self, entry: dict[str, Any]) -> None:
        """One JSON line. An append cut short (a full disk, a kill) leaves a torn last line, which resume drops."""
        line = json.dumps(entry) + "\n"
        try:
            with open(self.metrics, "a", encoding="utf-8") as f:
                f.write(line)
        except OSError as e:
            if e.errno == errno.ENOSPC:
                raise disk_full(self.metrics, len(line)) from None
            raise

    def truncate_metrics(self, step: int, log: Callable[[str], None]) -> None:
        """Drop entries written after `step` (a resumed run's log reads as one uninterrupted run), and a torn last
        line (with a warning naming the file and the line)."""
        if not self.metrics.exists():
            return
        lines = self.metrics.read_text(encoding="utf-8", errors="replace").splitlines(keepends=True)
        kept = []
        for number, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                entry = json.loads(line)
            except ValueError:
                if number < len(lines):
                    raise DataError(
                        f"{self.metrics}: line {number} is not a JSON object; fix or delete the line"
                    ) from None
                log(f"WARNING {self.metrics}: line {number} was cut short (its write did not finish); dropped it")
                continue
            if entry["step"] <= step:
                kept.append(line if line.endswith("\n") else line + "\n")
        write_atomic(self.metrics, "".join(kept).encode())

    def write_config(self, config: dict[str, Any]) -> None:
        """config.yaml, headed by a comment naming the model keys its family does not read (ModelConfig.ignored_keys):
        a comment, so that loading, resuming and `config_differences` read the file exactly as before."""
        model = ModelConfig.from_dict(config.get("model") or {})
        ignored = ", ".join(f"model.{key}" for key in model.ignored_keys)
        note = (
            f"# ignored by model.arch {model.arch!r} (not read, whatever their values): {ignored}\n" if ignored else ""
        )
        text = note + yaml.safe_dump(config, sort_keys=False, allow_unicode=True)
        write_atomic(self.root / "config.yaml", text.encode())

    def find_resume(self, resume: str, log: Callable[[str], None], is_main: bool, barrier: Callable[[], None]):
        """The checkpoint to continue from: None for a new run ('none'), the newest valid one ('auto'), or the
        folder given (verified: a corrupt explicit choice is an error, not a fallback)."""
        if resume == "none":
            if ckpt.list_checkpoints(self.checkpoints):
                raise ResumeError(
                    f"{self.root} already holds checkpoints: continue it with --resume auto, "
                    f"or choose another --train.out_dir"
                )
            return None
        if resume == "auto":
            # the run folder too: a pointer's temporary symlink (`.last.tmp-*`), a config or metrics rewrite
            stale = [*ckpt.remove_stale(self.checkpoints), *ckpt.remove_stale(self.root)] if is_main else []
            for path in stale:
                log(f"removed the unfinished checkpoint write {path}")
            barrier()
            return ckpt.latest_valid(self.checkpoints, log)
        path = Path(resume)
        ckpt.verify(path, need_state=True)
        return path

    def save(self, step: int, best_step: int | None, keep_last: int, **checkpoint: Any) -> Path:
        """Write checkpoint `step` (see ckpt.save_checkpoint), point `last` at it and `best` at the best one, and
        prune to the newest keep_last plus the best."""
        folder = self.checkpoints / f"step-{step:06d}"
        ckpt.save_checkpoint(folder, step=step, **checkpoint)
        ckpt.set_pointer(self.root, "last", folder, step)
        if best_step is not None:
            best = self.checkpoints / f"step-{best_step:06d}"
            if best.exists():
                ckpt.set_pointer(self.root, "best", best, step)
        elif not (self.root / "best").exists():
            ckpt.set_pointer(self.root, "best", folder, step)
        self.prune(keep_last)
        return folder

    def prune(self, keep_last: int) -> None:
        """Keep the newest keep_last checkpoints and the best; delete older ones (after the new one exists)."""
        keep = {p.resolve() for _, p in ckpt.list_checkpoints(self.checkpoints)[-keep_last:]}
        best = self.root / "best"
        if best.exists():
            keep.add(best.resolve())
        for _, path in ckpt.list_checkpoints(self.checkpoints):
            if path.resolve() not in keep:
                shutil.rmtree(path, ignore_errors=True)

    def check_compatible(self, path: Path, model: dict[str, Any], tokenizer_fingerprint: str) -> None:
        """ResumeError listing every difference between checkpoint `path` and this run (model keys, tokenizer)."""
        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        problems = config_differences(saved.get("model", {}), model)
        kind = tokenizer_kind(ckpt.verify(path))
        kept = load_pretrained(path, kind) if kind in PRETRAINED_FILES else Tokenizer.load(path / "tokenizer.json")
        data = saved.get("data") or {}
        old = preprocessed(kept, data.get("moses", ""), data.get("lowercase", False)).fingerprint()
        if old != tokenizer_fingerprint:
            now = _short(tokenizer_fingerprint)
            problems.append(f"tokenizer: fingerprint {_short(old)} in the checkpoint, {now} now")
        if problems:
            raise ResumeError(f"cannot resume from {path}: the run differs: " + "; ".join(problems))


def _short(fingerprint: str) -> str:
    """A tokenizer fingerprint for a message: the hash's first 12 characters, and data.moses / data.lowercase."""
    head, plus, rest = fingerprint.partition("+")
    return head[:12] + plus + rest
