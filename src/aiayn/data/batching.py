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
    src = np.asarray(src_lengths)  # not copied: often the memory-mapped lengths of a token cache
    n = len(src)
    if tgt_lengths is not None and len(tgt_lengths) != n:
        raise ValueError(f"src_lengths has {n} entries, tgt_lengths {len(tgt_lengths)}")
    rng = np.random.default_rng([int(seed), int(epoch)])
    perm = rng.permutation(n)
    # Memory is a few arrays of n (about 40 bytes an example at the peak): widths are int32 where they fit.
    width = _widths(src[perm], 1)
    if tgt_lengths is None:
        key = width
    else:
        tgt = np.asarray(tgt_lengths)[perm].astype(np.int64)
        key = tgt * (int(width.max(initial=0)) + 1) + width  # sorts by (tgt length, src length)
        width = np.maximum(width, _widths(tgt, 2))
        del tgt
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad the examples `indices` into (src (B, S), tgt (B, T)) int64 tensors, right-padded with specials.pad.

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
    pad, bos, eos = specials.pad, specials.bos, specials.eos
    src = _pad(corpus._src_ids, corpus._src_offsets, idx, before=None, after=eos, pad_id=pad)
    if corpus.paired:
        tgt = _pad(corpus._tgt_ids, corpus._tgt_offsets, idx, before=bos, after=eos, pad_id=pad)
    else:
        tgt = _pad(corpus._src_ids, corpus._src_offsets, idx, before=bos, after=eos, pad_id=pad)
    src_t, tgt_t = torch.from_numpy(src), torch.from_numpy(tgt)
    if device is not None:
        src_t, tgt_t = src_t.to(device, non_blocking=True), tgt_t.to(device, non_blocking=True)
    return src_t, tgt_t


def _pad(
    ids: np.ndarray, offsets: np.ndarray, idx: np.ndarray, before: int | None, after: int, pad_id: int = PAD_ID
) -> np.ndarray:
    """Rows [before] + ids[offsets[i]:offsets[i + 1]] + [after] for i in idx, right-padded with pad_id (int64)."""
    starts = np.asarray(offsets[idx], dtype=np.int64)
    lengths = np.asarray(offsets[idx + 1], dtype=np.int64) - starts
    lead = 0 if before is None else 1
    rows = np.arange(len(idx))
    out = np.full((len(idx), int(lengths.max()) + lead + 1), pad_id, dtype=np.int64)
    if before is not None:
        out[:, 0] = before
    total = int(lengths.sum())
    row_of = np.repeat(rows, lengths)
    col = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)  # position within each example
    out[row_of, col + lead] = ids[np.repeat(starts, lengths) + col]
    out[rows, lengths + lead] = after
    return out
