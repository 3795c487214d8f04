"""Writing a token cache folder: the filters, the tokenizing in chunks, and the files `TokenCorpus.open` reads.

`TokenCorpus.build` (aiayn.data.corpus) feeds chunks of examples to a `_Writer` in a temporary folder and moves the
finished folder into place with `_replace_folder`.

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
import itertools
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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

    def __init__(self, folder: Path, encode_batch: EncodeBatch, *, max_tokens, max_ratio, name: str,
                 encode_target: EncodeBatch | None = None):  # fmt: skip
        self.folder = folder
        self.encode_batch = encode_batch
        self.encode_target = encode_target  # targets' own encoding (Marian's target.spm); None: encode_batch
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
        if paired and self.encode_target is not None:
            encoded = self.encode_batch(keep_texts[: len(lines)]) + self.encode_target(keep_texts[len(lines) :])
        else:
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

        empty, too_long, bad_ratio = self._skip_reasons(src_len, tgt_len)
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

    def _skip_reasons(
        self, src_len: np.ndarray, tgt_len: np.ndarray | None
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(empty, too_long, bad_ratio), bool (n,) each, for the token counts of n examples (tgt_len None:
        monolingual). Each example is marked under the first reason that applies: empty after tokenizing, too
        long, then length ratio."""
        stats = self.stats
        paired = tgt_len is not None
        n = len(src_len)
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
        return empty, too_long, bad_ratio

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

    def close_files(self) -> list[OSError]:
        """Close every file, even when closing one fails (a full disk shows at the last flush); their errors."""
        errors = []
        for f in self.files.values():
            try:
                f.close()
            except OSError as e:
                errors.append(e)
        return errors

    def close(self) -> None:
        errors = self.close_files()
        if errors:
            raise errors[0]
        if self.stats.kept == 0:
            return
        meta = {"format": FORMAT_VERSION, "n": self.stats.kept, "paired": bool(self.paired), "counts": self.counts}
        stats = json.dumps(dataclasses.asdict(self.stats), indent=1)
        (self.folder / "stats.json").write_text(stats + "\n", encoding="utf-8")
        (self.folder / "meta.json").write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
