"""Batches by token count, and padding one batch into tensors.

`token_batches` groups examples of similar lengths into batches of at most `max_tokens` padded tokens, in an order
that depends only on (seed, epoch); `collate` pads one batch of a `TokenCorpus` (aiayn.data.corpus) or of
`TokenRows` (the same layout in memory, for the texts inference is given). Training, validation, translation and
scoring all batch and pad through these two functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from aiayn.config import PAD_ID, SpecialIds

AIAYN_IDS = SpecialIds()  # the ids of every tokenizer aiayn trains

if TYPE_CHECKING:
    import torch


def token_batches(
    src_lengths: np.ndarray, tgt_lengths: np.ndarray | None, max_tokens: int, seed: int, epoch: int,
    bucket: int = 0,
) -> list[np.ndarray]:
    """Batches of example indices (int64 arrays) with at most `max_tokens` padded tokens each.

    The padded size of a batch is n * max(max src length + 1, max tgt length + 2) (src + EOS; BOS + tgt + EOS);
    with tgt_lengths None (language model) it is n * (max src length + 1). An example longer than max_tokens on
    its own is a batch of one. Indices are shuffled, stably sorted by (tgt length, src length) so that similar
    lengths share a batch and little is padding, cut greedily, and the batches are shuffled: all with one
    numpy Generator seeded by (seed, epoch), so the result depends on nothing else (a resumed run gets the same
    batches) and each epoch has another order. Every index appears exactly once.

    bucket > 0 (static shapes, `bucket_shape`): widths are rounded up to a multiple of `bucket` first and sorted on
    before the lengths, so that a batch holds examples of one rounded width w (or, where two widths meet, is cut
    for the wider one) and at most max_tokens // w of them.
    """
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be >= 1, got {max_tokens}")
    src = np.asarray(src_lengths)  # not copied: often the memory-mapped lengths of a token cache
    n = len(src)
    if tgt_lengths is not None and len(tgt_lengths) != n:
        raise ValueError(f"src_lengths has {n} entries, tgt_lengths {len(tgt_lengths)}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(n)
    width, key = _width_and_key(src[perm], None if tgt_lengths is None else np.asarray(tgt_lengths)[perm], bucket)
    if n and key.min() >= 0 and key.max() < 2**16:
        key = key.astype(np.uint16)  # numpy's stable sort is a radix sort for 16-bit keys: ~10x faster
    order = np.argsort(key, kind="stable")
    del key
    indices = perm[order]
    del perm
    width = width[order]
    del order

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


def _width_and_key(src: np.ndarray, tgt: np.ndarray | None, bucket: int) -> tuple[np.ndarray, np.ndarray]:
    """Each example's padded width and its sort key: (tgt length, src length), led by the rounded width with
    buckets. Memory is a few arrays of n (about 40 bytes an example at the peak): widths are int32 where they fit."""
    width = _widths(src, 1)
    if tgt is None:
        key = width
    else:
        tgt = tgt.astype(np.int64)
        key = tgt * (int(width.max(initial=0)) + 1) + width  # sorts by (tgt length, src length)
        width = np.maximum(width, _widths(tgt, 2))
        del tgt
    if bucket > 0:
        width = -(-width // bucket) * bucket  # rounded up to the bucket: the width the batch is padded to
        key = width.astype(np.int64) * (int(key.max(initial=0)) + 1) + key  # sorts by (rounded width, lengths)
    return width, key


def bucket_shape(src_lengths: np.ndarray, tgt_lengths: np.ndarray | None, max_tokens: int,
                 bucket: int) -> tuple[int, int]:  # fmt: skip
    """(rows, width) that a batch of examples of these lengths is padded to for static shapes: width the
    batch's padded length (longest source + 1, or target + 2 with BOS and EOS) rounded up to a multiple of `bucket`,
    rows max_tokens // width (at least the batch's own). Every batch `token_batches(..., bucket)` makes of one
    rounded width gets the same shape, so a run meets about (longest width / bucket) shapes in all."""
    width = int(np.max(src_lengths)) + 1
    if tgt_lengths is not None:
        width = max(width, int(np.max(tgt_lengths)) + 2)
    width = -(-width // bucket) * bucket
    return max(max_tokens // width, len(src_lengths)), width


def _widths(lengths: np.ndarray, extra: int) -> np.ndarray:
    """lengths + extra as int32 when every value fits, else int64."""
    lengths = np.asarray(lengths, dtype=np.int64) if lengths.dtype.kind not in "iu" else lengths
    small = len(lengths) == 0 or (int(lengths.min()) >= -(2**31) and int(lengths.max()) + extra < 2**31)
    out = lengths.astype(np.int32 if small else np.int64)  # a copy: safe to add to in place
    out += extra
    return out


class TokenLayout:
    """What `collate` and `token_batches` read, shared by TokenCorpus (memory-mapped caches) and TokenRows (in
    memory): flat ids + offsets per side (`_src_ids`, `_src_offsets`, `_tgt_*`), `src_lengths`, `tgt_lengths`
    (None for a monolingual corpus)."""

    src_lengths: np.ndarray
    tgt_lengths: np.ndarray | None

    @property
    def paired(self) -> bool:
        """True for a translation corpus (source and target), False for a monolingual one."""
        return self.tgt_lengths is not None

    def __len__(self) -> int:
        return len(self.src_lengths)


class TokenRows(TokenLayout):
    """Examples held in memory in a TokenCorpus's layout (flat ids + offsets per side): what `collate` and
    `token_batches` read. From lists of ids (no specials): `TokenRows(src)` or `TokenRows(src, tgt)`."""

    def __init__(self, src: Sequence[Sequence[int]], tgt: Sequence[Sequence[int]] | None = None) -> None:
        self._src_ids, self._src_offsets, self.src_lengths = _flat(src)
        if tgt is not None:
            if len(tgt) != len(src):
                raise ValueError(f"{len(src)} sources for {len(tgt)} targets")
            self._tgt_ids, self._tgt_offsets, self.tgt_lengths = _flat(tgt)
        else:
            self._tgt_ids = self._tgt_offsets = self.tgt_lengths = None


def _flat(rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Lists of ids -> (flat ids, offsets (n + 1,), lengths (n,))."""
    lengths = np.fromiter((len(r) for r in rows), dtype=np.int64, count=len(rows))
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    ids = np.fromiter((i for r in rows for i in r), dtype=np.int64, count=int(offsets[-1]))
    return ids, offsets, lengths


def collate(
    corpus: TokenLayout,
    indices: Sequence[int] | np.ndarray,
    device: torch.device | str | None = None,
    specials: SpecialIds = AIAYN_IDS,
    shape: tuple[int, int] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the examples `indices` into (src (B, S), tgt (B, T)) int64 tensors, right-padded with specials.pad.

    src rows are ids + EOS, tgt rows BOS + ids + EOS; S = longest source + 1, T = longest target + 2. For a
    monolingual corpus both are built from its one side (use tgt[:, :-1] as input and tgt[:, 1:] as labels).
    shape=(rows, width) (`bucket_shape`) pads both to (rows, width) instead: rows past the examples hold one token
    (src EOS, tgt BOS, so their labels are all padding) and padding.
    """
    import torch

    idx = np.asarray(indices, dtype=np.int64).reshape(-1)
    if len(idx) == 0:
        raise ValueError("collate needs at least one example index")
    if idx.min() < -len(corpus) or idx.max() >= len(corpus):
        raise IndexError(f"example index out of range for a corpus of {len(corpus):,}")
    idx = np.where(idx < 0, idx + len(corpus), idx)
    pad, bos, eos = specials.pad, specials.bos, specials.eos
    src = _pad(corpus._src_ids, corpus._src_offsets, idx, before=None, after=eos, pad_id=pad, shape=shape)
    if corpus.paired:
        tgt = _pad(corpus._tgt_ids, corpus._tgt_offsets, idx, before=bos, after=eos, pad_id=pad, shape=shape)
    else:
        tgt = _pad(corpus._src_ids, corpus._src_offsets, idx, before=bos, after=eos, pad_id=pad, shape=shape)
    src_t, tgt_t = torch.from_numpy(src), torch.from_numpy(tgt)
    if device is not None:
        src_t, tgt_t = src_t.to(device, non_blocking=True), tgt_t.to(device, non_blocking=True)
    return src_t, tgt_t


def _pad(
    ids: np.ndarray, offsets: np.ndarray, idx: np.ndarray, before: int | None, after: int, pad_id: int = PAD_ID,
    shape: tuple[int, int] | None = None,
) -> np.ndarray:
    """Rows [before] + ids[offsets[i]:offsets[i + 1]] + [after] for i in idx, right-padded with pad_id (int64),
    to (len(idx), longest row) or to `shape` (rows, width), which must hold them."""
    starts = np.asarray(offsets[idx], dtype=np.int64)
    lengths = np.asarray(offsets[idx + 1], dtype=np.int64) - starts
    lead = 0 if before is None else 1
    rows = np.arange(len(idx))
    own = (len(idx), int(lengths.max()) + lead + 1)
    if shape is not None and (shape[0] < own[0] or shape[1] < own[1]):
        raise ValueError(f"collate: a shape of {shape} cannot hold {own[0]} rows of up to {own[1]} tokens")
    out = np.full(own if shape is None else shape, pad_id, dtype=np.int64)
    if before is not None:
        out[rows, 0] = before
    # Rows past the examples (a static shape's fillers) hold one token: the first of a row (BOS of a target, EOS of
    # a source), whose label is padding, so they add no loss or gradient, but every attention query sees a key.
    # A query with every key masked gets a logsumexp near -inf, and cuDNN's SDPA backward on H100/H200 (the
    # default from torch 2.11) returns NaN gradients for it at key lengths of 64 mod 128 (pytorch/pytorch#196678).
    out[len(idx) :, 0] = after if before is None else before
    total = int(lengths.sum())
    row_of = np.repeat(rows, lengths)
    col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within each example
    out[row_of, col + lead] = ids[np.repeat(starts, lengths) + col]
    out[rows, lengths + lead] = after
    return out
