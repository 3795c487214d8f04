"""A tokenized corpus cached on disk, the length filters, batches by token count, and padding into tensors.

`TokenCorpus.build` streams (line number, source, target) examples through the tokenizer in chunks and appends
the ids to flat files in a cache folder, so that memory stays the same whatever the corpus size; `TokenCorpus.open`
memory-maps a folder built earlier. `token_batches` groups examples of similar lengths into batches of at most
`max_tokens` padded tokens, in an order that depends only on (seed, epoch), and `collate` pads one batch.

Cache folder layout (all little-endian, no pickles):
    meta.json                  format version, number of examples, whether paired, element counts of each file
    stats.json                 the `CorpusStats` of the build
    src.ids, tgt.ids           int32: the token ids of every kept example, one after the other, without specials
    src.offsets, tgt.offsets   int64 (n + 1,): example i is ids[offsets[i]:offsets[i + 1]]
    src.lengths, tgt.lengths   int32 (n,)
    lines                      int64 (n,): the 1-based input line number of each kept example
The tgt.* files exist only for paired (translation) corpora.
"""

from __future__ import annotations

import dataclasses
import hashlib
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.data.reader import DataError

if TYPE_CHECKING:
    import torch

__all__ = ["CorpusStats", "TokenCorpus", "cache_key", "collate", "token_batches", "token_stream"]

FORMAT_VERSION = 1
_IDS = np.dtype("<i4")
_OFFSETS = np.dtype("<i8")
_LENGTHS = np.dtype("<i4")
_LINES = np.dtype("<i8")

EncodeBatch = Callable[[list[str]], Sequence[Sequence[int]]]


@dataclass
class CorpusStats:
    """What the builder saw. Each skipped example is counted once, under the first reason that applies, in the
    order empty, too long, length ratio; `first_*` are the 1-based line numbers of the first example of each kind."""

    name: str = ""
    paired: bool = True
    max_tokens: int | None = None
    max_ratio: float | None = None
    read: int = 0
    kept: int = 0
    skipped_empty: int = 0
    skipped_too_long: int = 0
    skipped_ratio: int = 0
    first_empty: int | None = None
    first_too_long: int | None = None
    first_ratio: int | None = None

    def summary(self) -> str:
        """One log line, e.g. "train: kept 28,990 of 29,000 pairs; skipped 3 empty (first: line 37), ..."."""
        return f"{self.name}: {self._counts()}" if self.name else self._counts()

    def _counts(self) -> str:
        def first(line: int | None) -> str:
            return f" (first: line {line})" if line is not None else ""

        skipped = [f"{self.skipped_empty:,} empty{first(self.first_empty)}"]
        if self.max_tokens is not None:
            skipped.append(
                f"{self.skipped_too_long:,} longer than {self.max_tokens:,} tokens{first(self.first_too_long)}"
            )
        if self.paired and self.max_ratio is not None:
            skipped.append(f"{self.skipped_ratio:,} with length ratio > {self.max_ratio}{first(self.first_ratio)}")
        unit = "pairs" if self.paired else "lines"
        return f"kept {self.kept:,} of {self.read:,} {unit}; skipped " + ", ".join(skipped)


class TokenCorpus:
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

    @property
    def paired(self) -> bool:
        """True for a translation corpus (source and target), False for a monolingual one."""
        return self.tgt_lengths is not None

    def __len__(self) -> int:
        return self._n

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
    ) -> TokenCorpus:
        """Tokenize `examples` into the cache folder `folder` (replacing it atomically) and open it.

        examples: (1-based line number, source text, target text or None for a monolingual corpus), texts already
            cleaned. The iterable is drained here, so a reader's errors (e.g. parallel files of different lengths)
            surface now, and then nothing is left behind.
        encode_batch: texts -> token ids per text, without special tokens; called with up to 2 * chunk texts.
        max_tokens: skip an example if len(src) + 1 (EOS) or len(tgt) + 2 (BOS, EOS) exceeds it; None = no limit.
        max_ratio: skip a pair if max(len) / max(min(len), 1) > max_ratio (token counts); None = no limit.
        name: the label used in the stats and in errors, e.g. the input file's path.
        Raises DataError "no training examples in <name> (...)" when nothing is kept.
        """
        if chunk < 1:
            raise ValueError(f"chunk must be >= 1, got {chunk}")
        if max_tokens is not None and max_tokens < 1:
            raise ValueError(f"max_tokens must be >= 1 or None, got {max_tokens}")
        if max_ratio is not None and not max_ratio >= 1:
            raise ValueError(f"max_ratio must be >= 1 or None, got {max_ratio}")
        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
        writer = _Writer(tmp, encode_batch, max_tokens=max_tokens, max_ratio=max_ratio, name=name)
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
        except BaseException:
            writer.close_files()
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return cls.open(folder)


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


def token_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray | None, max_tokens: int, seed: int, epoch: int
) -> list[np.ndarray]:
    """Batches of example indices (int64 arrays) with at most `max_tokens` padded tokens each.

    The padded size of a batch is n * max(max src length + 1, max tgt length + 2) (src + EOS; BOS + tgt + EOS);
    with tgt_lengths None (language model) it is n * (max src length + 1). An example longer than max_tokens on
    its own is a batch of one. Indices are shuffled, stably sorted by (tgt length, src length) so that similar
    lengths share a batch and little is padding, cut greedily, and the batches are shuffled: all with one
    numpy Generator seeded by (seed, epoch), so the result depends on nothing else (a resumed run gets the same
    batches) and each epoch has another order. Every index appears exactly once.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    src = np.asarray(src_lengths, dtype=np.int64)
    n = len(src)
    if tgt_lengths is not None and len(tgt_lengths) != n:
        raise ValueError(f"src_lengths has {n} entries, tgt_lengths {len(tgt_lengths)}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(n)
    width = src[perm] + 1
    if tgt_lengths is None:
        key = width
    else:
        tgt = np.asarray(tgt_lengths, dtype=np.int64)[perm]
        key = tgt * (int(width.max(initial=0)) + 1) + width  # sorts by (tgt length, src length)
        width = np.maximum(width, tgt + 2)
    if n and key.min() >= 0 and key.max() < 2**16:
        key = key.astype(np.uint16)  # numpy's stable sort is a radix sort for 16-bit keys: ~10x faster
    order = np.argsort(key, kind="stable")
    indices = perm[order]
    width = width[order]

    batches = []
    # No batch that starts at `start` can hold more than max_tokens // width[start] examples: look at that many at
    # most, in a window that grows geometrically, so that the work stays about the size of the batch.
    counts = np.arange(1, min(n, max(max_tokens // max(int(width.min(initial=1)), 1), 1)) + 1)
    start = 0
    while start < n:
        bound = min(max(max_tokens // int(width[start]), 1), n - start)
        window = min(bound, 256)
        while True:
            running_max = np.maximum.accumulate(width[start : start + window])
            size = int(np.count_nonzero(running_max * counts[:window] <= max_tokens))  # True up to the cut
            if size < window or window == bound:
                break
            window = min(2 * window, bound)
        size = max(size, 1)  # a single example over max_tokens: a batch of its own
        batches.append(indices[start : start + size])
        start += size
    return [batches[b] for b in rng.permutation(len(batches))]


def collate(
    corpus: TokenCorpus, indices: Sequence[int] | np.ndarray, device: torch.device | str | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the examples `indices` into (src (B, S), tgt (B, T)) int64 tensors, right-padded with PAD_ID.

    src rows are ids + EOS, tgt rows BOS + ids + EOS; S = longest source + 1, T = longest target + 2. For a
    monolingual corpus both are built from its one side (use tgt[:, :-1] as input and tgt[:, 1:] as labels).
    """
    import torch

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        raise ValueError("collate needs at least one example index")
    if idx.min() < -len(corpus) or idx.max() >= len(corpus):
        raise IndexError(f"example index out of range for a corpus of {len(corpus):,}")
    idx = np.where(idx < 0, idx + len(corpus), idx)
    src = _pad(corpus._src_ids, corpus._src_offsets, idx, before=None, after=EOS_ID)
    if corpus.paired:
        tgt = _pad(corpus._tgt_ids, corpus._tgt_offsets, idx, before=BOS_ID, after=EOS_ID)
    else:
        tgt = _pad(corpus._src_ids, corpus._src_offsets, idx, before=BOS_ID, after=EOS_ID)
    src_t, tgt_t = torch.from_numpy(src), torch.from_numpy(tgt)
    if device is not None:
        src_t, tgt_t = src_t.to(device, non_blocking=True), tgt_t.to(device, non_blocking=True)
    return src_t, tgt_t


# ---------------------------------------------------------------------------------------------------------------


def _pad(ids: np.ndarray, offsets: np.ndarray, idx: np.ndarray, before: int | None, after: int) -> np.ndarray:
    """Rows [before] + ids[offsets[i]:offsets[i + 1]] + [after] for i in idx, right-padded with PAD_ID (int64)."""
    starts = np.asarray(offsets[idx], dtype=np.int64)
    lengths = np.asarray(offsets[idx + 1], dtype=np.int64) - starts
    lead = 0 if before is None else 1
    rows = np.arange(len(idx))
    out = np.full((len(idx), int(lengths.max()) + lead + 1), PAD_ID, dtype=np.int64)
    if before is not None:
        out[:, 0] = before
    total = int(lengths.sum())
    row_of = np.repeat(rows, lengths)
    col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within each example
    out[row_of, col + lead] = ids[np.repeat(starts, lengths) + col]
    out[rows, lengths + lead] = after
    return out


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


def _replace_folder(tmp: Path, folder: Path) -> None:
    """Move the finished `tmp` to `folder`; an existing `folder` (an older build) is moved aside and deleted."""
    try:
        os.replace(tmp, folder)
        return
    except OSError:
        if not folder.exists():
            raise
    old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".old", dir=folder.parent))
    os.replace(folder, old / "old")
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)


class _Writer:
    """Filters and tokenizes chunks of examples and appends the kept ones to the files of a cache folder."""

    def __init__(self, folder: Path, encode_batch: EncodeBatch, *, max_tokens, max_ratio, name: str):
        self.folder = folder
        self.encode_batch = encode_batch
        self.stats = CorpusStats(name=name, max_tokens=max_tokens, max_ratio=max_ratio)
        self.paired: bool | None = None
        self.files: dict = {}
        self.counts: dict[str, int] = {}
        self.src_total = 0
        self.tgt_total = 0

    def _open(self, paired: bool) -> None:
        self.paired = self.stats.paired = paired
        names = ["src.ids", "src.offsets", "src.lengths", "lines"]
        if paired:
            names += ["tgt.ids", "tgt.offsets", "tgt.lengths"]
        for name in names:
            self.files[name] = open(self.folder / name, "wb")  # noqa: SIM115 (closed in close())
            self.counts[name] = 0
        self._write("src.offsets", np.zeros(1, dtype=_OFFSETS))
        if paired:
            self._write("tgt.offsets", np.zeros(1, dtype=_OFFSETS))

    def _write(self, name: str, array: np.ndarray) -> None:
        self.files[name].write(memoryview(np.ascontiguousarray(array)).cast("B"))
        self.counts[name] += len(array)

    def add(self, examples: list[tuple[int, str, str | None]]) -> None:
        if self.paired is None:
            self._open(examples[0][2] is not None)
        paired = self.paired
        stats = self.stats
        stats.read += len(examples)
        lines, keep_texts, empty_lines = [], [], []
        for line_no, src, tgt in examples:
            if (tgt is not None) != paired:
                raise ValueError(f"line {line_no}: examples mix pairs and single texts (target None)")
            if not src or (paired and not tgt):
                empty_lines.append(line_no)
            else:
                lines.append(line_no)
                keep_texts.append(src)
        if paired:
            keep_texts += [tgt for _, src, tgt in examples if src and tgt]
        if not lines:
            self._skip("empty", len(empty_lines), min(empty_lines))
            return
        encoded = self.encode_batch(keep_texts)
        if len(encoded) != len(keep_texts):
            raise ValueError(f"encode_batch returned {len(encoded)} sequences for {len(keep_texts)} texts")
        lengths = np.fromiter(map(len, encoded), dtype=np.int64, count=len(encoded))
        ids = np.fromiter(itertools.chain.from_iterable(encoded), dtype=_IDS, count=int(lengths.sum()))
        del encoded
        n = len(lines)
        line_arr = np.asarray(lines, dtype=_LINES)
        src_len = lengths[:n]
        tgt_len = lengths[n:] if paired else None

        # The first reason that applies: empty after tokenizing, too long, then length ratio.
        empty = src_len == 0
        if paired:
            empty |= tgt_len == 0
        too_long = np.zeros(n, dtype=bool)
        if stats.max_tokens is not None:
            too_long = src_len + 1 > stats.max_tokens
            if paired:
                too_long |= tgt_len + 2 > stats.max_tokens
            too_long &= ~empty
        bad_ratio = np.zeros(n, dtype=bool)
        if paired and stats.max_ratio is not None:
            longer = np.maximum(src_len, tgt_len)
            shorter = np.maximum(np.minimum(src_len, tgt_len), 1)
            bad_ratio = (longer / shorter > stats.max_ratio) & ~empty & ~too_long
        for kind, mask in (("empty", empty), ("too_long", too_long), ("ratio", bad_ratio)):
            hits = line_arr[mask].tolist()
            if kind == "empty":
                hits += empty_lines  # the examples with an empty text, which were not sent to the tokenizer
            self._skip(kind, len(hits), min(hits) if hits else None)
        keep = ~(empty | too_long | bad_ratio)
        if not keep.any():
            return
        stats.kept += int(keep.sum())
        self._write("lines", line_arr[keep])
        src_mask = np.repeat(keep, src_len)
        self.src_total = self._append("src", ids[: int(src_len.sum())][src_mask], src_len[keep], self.src_total)
        if paired:
            tgt_mask = np.repeat(keep, tgt_len)
            self.tgt_total = self._append("tgt", ids[int(src_len.sum()) :][tgt_mask], tgt_len[keep], self.tgt_total)

    def _append(self, side: str, ids: np.ndarray, lengths: np.ndarray, total: int) -> int:
        self._write(f"{side}.ids", ids)
        self._write(f"{side}.lengths", lengths.astype(_LENGTHS))
        self._write(f"{side}.offsets", (total + np.cumsum(lengths)).astype(_OFFSETS))
        return total + int(lengths.sum())

    def _skip(self, kind: str, count: int, first_line: int | None) -> None:
        if count == 0:
            return
        setattr(self.stats, f"skipped_{kind}", getattr(self.stats, f"skipped_{kind}") + count)
        if getattr(self.stats, f"first_{kind}") is None:
            setattr(self.stats, f"first_{kind}", first_line)

    def close_files(self) -> None:
        for f in self.files.values():
            f.close()

    def close(self) -> None:
        self.close_files()
        if self.stats.kept == 0:
            return
        meta = {"format": FORMAT_VERSION, "n": self.stats.kept, "paired": bool(self.paired), "counts": self.counts}
        stats = json.dumps(dataclasses.asdict(self.stats), indent=1)
        (self.folder / "stats.json").write_text(stats + "\n", encoding="utf-8")
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
