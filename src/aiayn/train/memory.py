"""Keep freed memory in the process for the next training step (glibc's malloc on Linux).

glibc serves every allocation above its mmap threshold (at most 32 MiB) with a fresh mmap and returns it to the
kernel on free. A training step allocates the same large tensors every time (the logits of a 4,096-token batch
over an 8,000-token vocabulary are 131 MB, and the loss and its gradient as many again), so each step would
page-fault all of them in again and have the kernel zero them. With mmap off for the heap and no trimming,
freed blocks stay in the process and the next step reuses them. The measurement is in benchmarks/RESULTS.md.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameters (malloc.h)
M_MMAP_MAX = -4


def keep_freed_memory() -> bool:
    """Tell glibc's malloc to reuse freed blocks instead of returning them to the kernel. Returns whether the
    setting took (False where the C library is not glibc: macOS, Windows, musl keep their own behaviour)."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: its mallopt parameters would mean something else
        return False
    return libc.mallopt(M_MMAP_MAX, 0) == 1 and libc.mallopt(M_TRIM_THRESHOLD, 2**31 - 1) == 1


# glibc's defaults: at most 65,536 mmapped blocks, and a trim threshold of 128 KiB (which glibc then adapts).
DEFAULT_MMAP_MAX = 65536
DEFAULT_TRIM_THRESHOLD = 128 * 1024


def restore_freed_memory() -> None:
    """Undo keep_freed_memory: glibc's default mmap and trim settings again (a run restores what it changed)."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return
    if hasattr(libc, "gnu_get_libc_version"):
        libc.mallopt(M_MMAP_MAX, DEFAULT_MMAP_MAX)
        libc.mallopt(M_TRIM_THRESHOLD, DEFAULT_TRIM_THRESHOLD)
