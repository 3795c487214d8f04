"""A tokenized corpus cached on disk, the length filters, batches by token count, and padding into tensors.

`TokenCorpus.build` streams (line number, source, target) examples through the tokenizer in chunks and appends
the ids to flat files in a cache folder, so that memory stays the same whatever the corpus size; `TokenCorpus.open`
memory-maps a folder built earlier. `token_batches` groups examples of similar lengths into batches of at most
`max_tokens` padded tokens, in an order that depends only on (seed, epoch), and `collate` pads one batch.

The pieces: aiayn.data.cache_writer writes the cache folder (its layout is described there) and keeps the build's
`CorpusStats`; aiayn.data.batching holds `token_batches` and `collate`. This module reads the folder back and
re-exports the rest, so that every name above imports from here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from aiayn.data.batching import TokenLayout, collate, token_batches
from aiayn.data.cache_writer import (
    _IDS,
    _LENGTHS,
    _LINES,
    _OFFSETS,
    FORMAT_VERSION,
    CorpusStats,
    EncodeBatch,
    _replace_folder,
    _Writer,
)
from aiayn.data.reader import DataError
from aiayn.files import disk_full, temp_beside

__all__ = ["CorpusStats", "TokenCorpus", "cache_key", "collate", "token_batches", "token_stream"]


class TokenCorpus(TokenLayout):
    """n examples of token ids in flat int32 arrays with int64 offsets, memory-mapped from a cache folder.

    `src(i)` / `tgt(i)` are the ids of example i without special tokens (read-only views of the memory map);
    `src_lengths` / `tgt_lengths` are their lengths (int32, (n,)); `tgt_lengths` is None for a monolingual (language
    model) corpus; `line_numbers` are the 1-based input line numbers of the kept examples; `stats` is the build's
    `CorpusStats`.
    """

    src_lengths: np.ndarray
    tgt_lengths: np.ndarray | None
    line_numbers: np.ndarray
    stats: CorpusStats

    def __init__(self, folder: Path, meta: dict, stats: CorpusStats):
        """Use `TokenCorpus.open` or `TokenCorpus.build`."""
        self.folder = folder
        self.stats = stats
        self._n = int(meta["n"])
        counts = meta["counts"]
        self._src_ids = _map(folder, "src.ids", _IDS, counts)
        self._src_offsets = _map(folder, "src.offsets", _OFFSETS, counts)
        self.src_lengths = _map(folder, "src.lengths", _LENGTHS, counts)
        self.line_numbers = _map(folder, "lines", _LINES, counts)
        if meta["paired"]:
            self._tgt_ids = _map(folder, "tgt.ids", _IDS, counts)
            self._tgt_offsets = _map(folder, "tgt.offsets", _OFFSETS, counts)
            self.tgt_lengths = _map(folder, "tgt.lengths", _LENGTHS, counts)
        else:
            self._tgt_ids = self._tgt_offsets = self.tgt_lengths = None

    def __repr__(self) -> str:
        return f"TokenCorpus({str(self.folder)!r}, n={self._n:,}, paired={self.paired})"

    def src(self, i: int) -> np.ndarray:
        """The source ids of example i (no EOS), a read-only view."""
        i = self._index(i)
        return self._src_ids[self._src_offsets[i] : self._src_offsets[i + 1]]

    def tgt(self, i: int) -> np.ndarray:
        """The target ids of example i (no BOS / EOS), a read-only view; for a monolingual corpus, its only side."""
        if not self.paired:
            return self.src(i)
        i = self._index(i)
        return self._tgt_ids[self._tgt_offsets[i] : self._tgt_offsets[i + 1]]

    def _index(self, i: int) -> int:
        i = int(i)
        if not -self._n <= i < self._n:
            raise IndexError(f"example {i} out of range for a corpus of {self._n:,}")
        return i + self._n if i < 0 else i

    @classmethod
    def open(cls, folder: str | os.PathLike) -> TokenCorpus:
        """Memory-map a cache folder written by `build` (raises DataError if it is missing, partial or from another
        version: delete the folder and build again)."""
        folder = Path(folder)
        try:
            meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
            version = meta.get("format")
            stats = CorpusStats(**json.loads((folder / "stats.json").read_text(encoding="utf-8")))
        except (OSError, ValueError, TypeError, AttributeError) as e:
            raise DataError(f"{folder} is not a readable token cache ({e.__class__.__name__}: {e})") from None
        if version != FORMAT_VERSION:
            raise DataError(
                f"{folder} is a token cache of format {version}, this version reads {FORMAT_VERSION}; "
                "delete it to rebuild"
            )
        try:
            return cls(folder, meta, stats)
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, DataError):
                raise
            raise DataError(f"{folder} is not a readable token cache (bad meta.json: {e!r}); delete it") from None

    @classmethod
    def build(
        cls,
        examples: Iterable[tuple[int, str, str | None]],
        encode_batch: EncodeBatch,
        folder: str | os.PathLike,
        *,
        max_tokens: int | None,
        max_ratio: float | None,
        name: str,
        chunk: int = 4096,
        encode_target: EncodeBatch | None = None,
    ) -> TokenCorpus:
        """Tokenize `examples` into the cache folder `folder` (replacing it atomically) and open it.

        examples: (1-based line number, source text, target text or None for a monolingual corpus), texts already
            cleaned. The iterable is drained here, so a reader's errors (e.g. parallel files of different lengths)
            surface now, and then nothing is left behind.
        encode_batch: texts -> token ids per text, without special tokens; called with up to 2 * chunk texts.
        encode_target: the same for the targets of pairs, when they are encoded differently (an imported Marian's
            target.spm); None: encode_batch encodes both.
        max_tokens: skip an example if len(src) + 1 (EOS) or len(tgt) + 2 (BOS, EOS) exceeds it; None = no limit.
        max_ratio: skip a pair if max(len) / max(min(len), 1) > max_ratio (token counts); None = no limit.
        name: the label used in the stats and in errors, e.g. the input file's path.
        Raises DataError "no training examples in <name> (...)" when nothing is kept.
        """
        _check_limits(chunk, max_tokens, max_ratio)
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        for stale in folder.parent.glob(f".{folder.name}.tmp-*"):  # a build of this cache that was killed
            shutil.rmtree(stale)
        tmp = temp_beside(folder)
        tmp.mkdir()
        writer = _Writer(tmp, encode_batch, max_tokens=max_tokens, max_ratio=max_ratio, name=name,
                         encode_target=encode_target)  # fmt: skip
        try:
            batch: list[tuple[int, str, str | None]] = []
            for example in examples:
                batch.append(example)
                if len(batch) >= chunk:
                    writer.add(batch)
                    batch = []
            if batch:
                writer.add(batch)
            writer.close()
            stats = writer.stats
            if stats.kept == 0:
                if stats.read == 0:
                    raise DataError(f"no training examples in {name} (it has no lines)")
                lines = "line" if stats.read == 1 else "lines"
                raise DataError(f"no training examples in {name} (read {stats.read:,} {lines}: {stats._counts()})")
            _replace_folder(tmp, folder)
        except BaseException as e:
            writer.close_files()  # errors closing (a full disk again, at the flush) are the one being raised
            written = sum(f.stat().st_size for f in tmp.iterdir()) if tmp.is_dir() else 0
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                raise disk_full(folder, written, "the token cache") from None
            raise
        return cls.open(folder)


def _check_limits(chunk: int, max_tokens: int | None, max_ratio: float | None) -> None:
    if chunk < 1:
        raise ValueError(f"chunk must be >= 1, got {chunk}")
    if max_tokens is not None and max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
    if max_ratio is not None and not max_ratio >= 1:
        raise ValueError(f"max_ratio must be >= 1 or None, got {max_ratio}")


def token_stream(corpus: TokenCorpus) -> np.ndarray:
    """All ids of a monolingual corpus, example after example with no separator: a read-only memory-mapped view."""
    if corpus.paired:
        raise ValueError("token_stream needs a monolingual corpus; this one has source and target sides")
    return corpus._src_ids


def cache_key(paths: Sequence[str | os.PathLike], extra: str) -> str:
    """A short hex key for a cache folder: each file's resolved path, size and modification time, plus `extra`
    (the tokenizer's fingerprint and the filter settings), plus this module's cache format version."""
    h = hashlib.sha256(f"aiayn-token-cache-{FORMAT_VERSION}\n".encode())
    for path in paths:
        resolved = Path(path).resolve()
        try:
            st = resolved.stat()
        except FileNotFoundError:
            raise DataError(f"{os.fspath(path)}: no such file") from None
        except OSError as e:
            raise DataError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
        h.update(f"{resolved}\0{st.st_size}\0{st.st_mtime_ns}\n".encode("utf-8", "surrogateescape"))
    h.update(extra.encode("utf-8", "surrogateescape"))
    return h.hexdigest()[:16]


def _map(folder: Path, name: str, dtype: np.dtype, counts: dict) -> np.ndarray:
    """Memory-map one array file of the cache read-only, after checking its size against meta.json."""
    path = folder / name
    count = int(counts[name])
    try:
        size = path.stat().st_size
    except OSError as e:
        reason = e.strerror or e
        raise DataError(f"token cache {folder} is incomplete ({name}: {reason}); delete it to rebuild") from None
    if size != count * dtype.itemsize:
        raise DataError(
            f"token cache {folder} is damaged ({name} has {size:,} bytes, expected {count * dtype.itemsize:,}); "
            "delete it to rebuild"
        )
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))
