"""Files that are whole or absent: fsynced writes, atomic replacement, and the fault-injection hook the
reliability tests use to kill a write at a chosen moment. Standard library only (layer 1).

Atomic write (reliability recipe §1.9): write beside the target, fsync, rename over it, fsync the folder; a kill
at any moment leaves either the old file or the new one.
"""

from __future__ import annotations

import errno
import os
import signal
import uuid
from pathlib import Path


def fault(site: str, step: int | None = None) -> None:
    """Fault injection for tests: AIAYN_FAULT=<site> kills this process with SIGKILL at that site,
    <site>:sigterm sends it SIGTERM (as a scheduler would), and <site>:enospc raises 'No space left on device'
    there. <site>@N fires only at the checkpoint of step N. A no-op otherwise."""
    wanted = os.environ.get("AIAYN_FAULT", "")
    if not wanted:
        return
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


def write_file(path: Path, data: bytes) -> None:
    """Write and fsync: errors such as ENOSPC can surface only at the fsync, and they propagate."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def write_atomic(path: str | Path, data: bytes) -> None:
    """Replace `path` with `data` all at once: a temporary file beside it, fsync, rename."""
    path = Path(path)
    tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
    try:
        write_file(tmp, data)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)  # a failed write leaves the old file and no temporary beside it
        raise


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def temp_beside(path: Path) -> Path:
    """A fresh hidden name beside `path` for a folder or file written before it is renamed into place."""
    return path.parent / f".{path.name}.tmp-{uuid.uuid4().hex[:8]}"
