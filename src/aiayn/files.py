"""Files that are whole or absent: fsynced writes, atomic replacement, and the fault-injection hook the
reliability tests use to kill a write at a chosen moment. Standard library only (layer 1).

Atomic write (reliability recipe §1.9): write beside the target, fsync, rename over it, fsync the folder; a kill
at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import errno
import os
import shutil
import signal
import uuid
from pathlib import Path

from aiayn.errors import UserError


def fault(site: str, step: int | None = None) -> bool:
    """Fault injection for tests: AIAYN_FAULT=<site> kills this process with SIGKILL at that site,
    <site>:sigterm sends it SIGTERM (as a scheduler would), and <site>:enospc raises 'No space left on device'
    there, and <site>:nan returns True (the caller then makes its value NaN). <site>@N fires only at the
    checkpoint of step N. A no-op (False) otherwise. Under torchrun it fires only in
    the first run of the workers (TORCHELASTIC_RESTART_COUNT 0: a restarted worker goes on), and only on rank
    AIAYN_FAULT_RANK when that is set (one worker of several killed).

    The sites of a checkpoint write, in order (all take @N): ckpt:mid_file (half of model.safetensors' bytes
    written and flushed; :enospc is a write that fails part-way), ckpt:fsync (model.safetensors written, before
    its fsync), ckpt:after_first_file, ckpt:before_manifest, ckpt:before_rename, ckpt:rename (the folder's
    os.replace itself; :enospc is a rename that fails for lack of space), ckpt:after_rename (before the parent
    folder's fsync), then for each pointer ckpt:before_pointer (any pointer: the first moved is `last`) and
    ckpt:before_last / ckpt:before_best (that one only), with its temporary symlink made but not renamed. The
    trainer's: step:N (mid-step), loss:N (:nan), after_step:N."""
    wanted = os.environ.get("AIAYN_FAULT", "")
    if not wanted or os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") != "0":
        return False
    if os.environ.get("AIAYN_FAULT_RANK", os.environ.get("RANK", "0")) != os.environ.get("RANK", "0"):
        return False
    if step is not None and wanted.partition(":")[2].count("@"):
        name, _, rest = wanted.partition("@")
        at, _, action = rest.partition(":")
        if at != str(step):
            return False
        wanted = f"{name}:{action}" if action else name
    if wanted == site:
        os.kill(os.getpid(), signal.SIGKILL)
    if wanted == f"{site}:sigterm":
        os.kill(os.getpid(), signal.SIGTERM)
    if wanted == f"{site}:enospc":
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    return wanted == f"{site}:nan"  # the caller makes its value non-finite (the trainer: one step's loss)


def write_file(path: Path, data: bytes, site: str = "", step: int | None = None) -> None:
    """Write and fsync: errors such as ENOSPC can surface only at the fsync, and they propagate. `site` names
    the write for fault injection (`<site>:mid_file`, `<site>:fsync`, see `fault`)."""
    with open(path, "wb") as f:
        if site and os.environ.get("AIAYN_FAULT"):  # tests only: a plain write otherwise
            half = len(data) // 2
            f.write(data[:half])
            f.flush()  # the half is in the file, not in Python's buffer, when the fault fires
            fault(f"{site}:mid_file", step)
            f.write(data[half:])
            f.flush()
            fault(f"{site}:fsync", step)
        else:
            f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temporary file beside it, fsync, rename. A failed write leaves
    the old file as it was and no temporary beside it, and its error names `path`, not the temporary."""
    path = Path(path)
    if path.is_dir():
        raise UserError(f"{path}: is a folder; give a file name to write")
    tmp = temp_beside(path)
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
        fsync_dir(path.parent)  # the rename itself survives a power cut
    except OSError as e:
        tmp.unlink(missing_ok=True)
        if e.errno == errno.ENOSPC:
            raise disk_full(path, len(data)) from None
        raise OSError(e.errno, e.strerror, str(path)) from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def disk_full(target: Path, needed: int, what: str = "") -> UserError:
    """The one line for a full disk: what could not be written, how much it needed (or, for `what` written in
    a stream, how much of it had been written), how much is free."""
    folder = target if target.is_dir() else target.parent
    try:
        free = f"{shutil.disk_usage(folder).free:,} bytes free"
    except OSError:
        free = "free space unknown"
    writing = f"{needed:,} bytes of {what} written" if what else f"writing {needed:,} bytes"
    return UserError(f"{target}: No space left on device ({writing}; {free} in {folder})")


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(path: Path) -> Path:
    """A fresh hidden name beside `path` for a folder or file written before it is renamed into place."""
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
