"""Batches per task kind, as training, validation and inference ask for them.

Training: `train_batches` gives an object whose `batch(k)` is global batch k of the run, as (model inputs,
target), and `tokens(k)` its target tokens: a pure function of (seed, k), which makes resume and sharding exact.
- pairs: batches of about `train.max_tokens` padded tokens from length buckets, reshuffled each epoch
  (aiayn.data.batching); inputs (src, tgt[:, :-1]), target tgt[:, 1:] (teacher forcing). With
  `train.length_bucket` N > 0, every batch is padded to (max_tokens // w rows, w tokens) for w a multiple of N:
  a handful of shapes in a run, for compiled code with fixed shapes and CUDA graphs.
- text: `train.batch_size` random windows of `train.block_size + 1` tokens (aiayn.data.prepare.lm_blocks).

Scoring (validation loss, `score`, `perplexity`): `pair_score_batches` and `text_windows` cover every example or
token exactly once, in batches of a token budget.

Shapes: B batch, S source length, T target length.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from aiayn.config import SpecialIds, TaskKind, TrainConfig
from aiayn.data.batching import AIAYN_IDS, TokenRows, bucket_shape, collate, token_batches
from aiayn.data.corpus import TokenCorpus, token_stream
from aiayn.data.prepare import lm_blocks
from aiayn.errors import ConfigError

Batch = tuple[tuple[torch.Tensor, ...], torch.Tensor]  # (model inputs, target ids)


class PairBatches:
    """Global batch k of a parallel corpus: epoch k // n_per_epoch, batch k % n_per_epoch of that epoch."""

    def __init__(self, corpus: TokenCorpus, max_tokens: int, seed: int, device: torch.device, specials=AIAYN_IDS,
                 bucket: int = 0) -> None:  # fmt: skip
        self.corpus, self.max_tokens, self.seed, self.device, self.specials = corpus, max_tokens, seed, device, specials
        self.bucket = bucket  # > 0: static shapes (train.length_bucket)
        self._epoch: tuple[int, list[np.ndarray]] = (-1, [])
        self.n_per_epoch = len(self._batches(0))

    def _batches(self, epoch: int) -> list[np.ndarray]:
        if self._epoch[0] != epoch:
            c = self.corpus
            batches = token_batches(c.src_lengths, c.tgt_lengths, self.max_tokens, self.seed, epoch, self.bucket)
            self._epoch = (epoch, batches)
        return self._epoch[1]

    def indices(self, k: int) -> np.ndarray:
        return self._batches(k // self.n_per_epoch)[k % self.n_per_epoch]

    def shape(self, k: int) -> tuple[int, int] | None:
        """The (rows, width) batch k is padded to, with static shapes; None without."""
        if not self.bucket:
            return None
        indices, c = self.indices(k), self.corpus
        return bucket_shape(c.src_lengths[indices], c.tgt_lengths[indices], self.max_tokens, self.bucket)

    def batch(self, k: int) -> Batch:
        src, tgt = collate(self.corpus, self.indices(k), self.device, self.specials, self.shape(k))  # (B, S), (B, T+2)
        return (src, tgt[:, :-1]), tgt[:, 1:]  # teacher forcing: predict token t + 1 from tokens <= t

    def ended_epoch(self, batches_done: int, per_step: int) -> bool:
        """Whether the step that brought the run to `batches_done` global batches (per_step of them) finished an
        epoch: a pass over every training example (train.save_every_epoch)."""
        return batches_done // self.n_per_epoch > (batches_done - per_step) // self.n_per_epoch

    def tokens(self, k: int) -> int:
        indices = self.indices(k)
        return int(self.corpus.tgt_lengths[indices].sum()) + len(indices)  # answer tokens + EOS


@dataclass
class TextBatches:
    """Global batch k of a token stream: batch_size windows at offsets drawn from (seed, k)."""

    stream: np.ndarray
    block_size: int
    batch_size: int
    seed: int
    device: torch.device

    def batch(self, k: int) -> Batch:
        x, y = lm_blocks(self.stream, self.block_size, self.batch_size, self.seed, k)
        x = torch.from_numpy(x.astype(np.int64)).to(self.device)  # (B, block)
        y = torch.from_numpy(y.astype(np.int64)).to(self.device)  # (B, block)
        return (x,), y

    def tokens(self, k: int) -> int:
        return self.batch_size * self.block_size


def text_streams(
    train: TokenCorpus, valid: TokenCorpus | None, valid_fraction: float
) -> tuple[np.ndarray, np.ndarray | None]:
    """(training stream, validation stream or None): the validation text, or else (nanoGPT) the last
    valid_fraction of the training text."""
    stream = token_stream(train)
    if valid is not None:
        return stream, token_stream(valid)
    if valid_fraction > 0:
        cut = int(len(stream) * (1 - valid_fraction))
        return stream[:cut], stream[cut:]
    return stream, None


def train_batches(
    task: TaskKind, train: TokenCorpus | np.ndarray, config: TrainConfig, device: torch.device, specials=AIAYN_IDS
) -> PairBatches | TextBatches:
    """The training batches of a task: a parallel corpus (pairs) or a token stream (text)."""
    if task is TaskKind.TEXT:
        if config.save_every_epoch:
            raise ConfigError("train.save_every_epoch applies to translation pairs: a language model's batches are "
                              "random windows of the text, with no epochs (use train.save_every)")  # fmt: skip
        return TextBatches(train, config.block_size, config.batch_size, config.seed, device)
    return PairBatches(train, config.max_tokens, config.seed, device, specials, config.length_bucket)


def pair_score_batches(
    rows: TokenCorpus | TokenRows, max_tokens: int, device: torch.device, specials: SpecialIds = AIAYN_IDS
) -> Iterator[tuple[np.ndarray, Batch]]:
    """Every example once, in batches of about max_tokens padded tokens: (indices, ((src, tgt_in), tgt_out))."""
    for indices in token_batches(rows.src_lengths, rows.tgt_lengths, max_tokens, 0, 0):
        src, tgt = collate(rows, indices, device, specials)  # (B, S), (B, T + 2)
        yield indices, ((src, tgt[:, :-1]), tgt[:, 1:])


def text_windows(
    stream: np.ndarray, block: int, rows_per_batch: int, device: torch.device, whole: bool = False
) -> Iterator[Batch]:
    """The token stream cut into windows of block + 1 tokens, each predicting its last block tokens, so every
    token after the first is predicted once, in order, rows_per_batch windows at a time: ((inputs,), target).
    whole=True also yields a last partial window (a short text's every token counts).
    The stream (often the int32 memory map of a token cache) is read a batch at a time, never copied whole."""
    stream = np.asarray(stream)
    n_full = (len(stream) - 1) // block if len(stream) > 1 else 0
    for start in range(0, n_full, rows_per_batch):
        rows = np.arange(start, min(start + rows_per_batch, n_full)) * block
        windows = stream[rows[:, None] + np.arange(block + 1)[None, :]].astype(np.int64)  # (B, block + 1)
        windows = torch.from_numpy(windows).to(device)
        yield (windows[:, :-1],), windows[:, 1:]
    rest = len(stream) - 1 - n_full * block
    if whole and rest > 0:
        tail = torch.from_numpy(stream[n_full * block :][None, :].astype(np.int64)).to(device)  # (1, rest + 1)
        yield (tail[:, :-1],), tail[:, 1:]
