"""From a run's data config to what the trainer needs: a tokenizer and tokenized, filtered, cached corpora.

Everything is streamed: files are read line by line, tokenized in chunks and appended to memory-mapped caches
under `<out_dir>/cache/`, keyed by the files' names, sizes and mtimes, the tokenizer and the filter settings,
so a second run (or a resumed one) opens them without tokenizing again.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from aiayn.config import DataConfig, TaskKind, TokenizerConfig
from aiayn.data.corpus import TokenCorpus, cache_key
from aiayn.data.reader import DataError, clean, read_lines, read_parallel, read_tsv
from aiayn.data.tasks import task_pairs
from aiayn.tokenizer import Tokenizer, normalize, train_tokenizer, train_tokenizer_from_files

VALID_SEED_OFFSET = 7919  # validation examples of a built-in task come from another seed than training's


@dataclass
class Prepared:
    tokenizer: Tokenizer
    train: TokenCorpus
    valid: TokenCorpus | None
    valid_pairs: list[tuple[str, str]]  # (source, reference) texts of the validation set, for BLEU
    task: TaskKind

    @property
    def lm(self) -> bool:
        return self.task is TaskKind.TEXT


def _task(data: DataConfig, seed: int, split: str) -> list[tuple[str, str]]:
    pairs = task_pairs(data.task, data.task_train_size, seed)
    if split == "train":
        return pairs
    seen = {s for s, _ in pairs}
    fresh = [p for p in task_pairs(data.task, data.task_valid_size * 2, seed + VALID_SEED_OFFSET) if p[0] not in seen]
    return fresh[: data.task_valid_size]  # held out: no validation source occurs in training


def _pairs(data: DataConfig, split: str, seed: int) -> Iterator[tuple[int, str, str | None]]:
    """(1-based line, source, target) of one split; targets are None for language-model text."""
    if data.task:
        for i, (s, t) in enumerate(_task(data, seed, split), start=1):
            yield i, s, t
        return
    get = lambda key: getattr(data, f"{split}_{key}")  # noqa: E731
    if get("src"):
        for line, s, t in read_parallel(get("src"), get("tgt")):
            yield line, clean(s), clean(t)
    elif get("tsv"):
        for line, s, t in read_tsv(get("tsv")):
            yield line, clean(s), clean(t)
    elif get("text"):
        for line, text in read_lines(get("text")):
            yield line, text + "\n", None  # a language model reads the text as one stream, newlines included


def _files(data: DataConfig, split: str) -> list[str]:
    return [getattr(data, f"{split}_{k}") for k in ("src", "tgt", "tsv", "text") if getattr(data, f"{split}_{k}")]


def has_split(data: DataConfig, split: str) -> bool:
    return bool(data.task) or bool(_files(data, split))


def get_tokenizer(
    cfg: TokenizerConfig, data: DataConfig, seed: int, out: Path, log: Callable[[str], None]
) -> Tokenizer:
    """The configured tokenizer file, the run's own (when resuming), or a new one trained on the training text."""
    if cfg.path:
        return Tokenizer.load(cfg.path)
    if out.exists():
        return Tokenizer.load(out)
    log(f"training a {cfg.kind} tokenizer (vocab_size {cfg.vocab_size}) on the training text")
    if data.task:
        texts = [text for s, t in _task(data, seed, "train") for text in (s, t)]
        tokenizer = train_tokenizer(texts, cfg.vocab_size, kind=cfg.kind, min_frequency=cfg.min_frequency)
    else:
        tokenizer = train_tokenizer_from_files(
            _files(data, "train"), cfg.vocab_size, kind=cfg.kind, min_frequency=cfg.min_frequency
        )
    tokenizer.save(out)
    log(f"tokenizer: {tokenizer.vocab_size} tokens, saved to {out}")
    return tokenizer


def build_corpus(
    data: DataConfig, split: str, tokenizer: Tokenizer, seed: int, cache: Path, log: Callable[[str], None]
) -> TokenCorpus:
    settings = f"{tokenizer.fingerprint()} {data.max_example_tokens} {data.max_ratio} {split}"
    if data.task:
        key = cache_key([], f"{settings} {data.task} {data.task_train_size} {data.task_valid_size} {seed}")
    else:
        key = cache_key(_files(data, split), settings)
    folder = cache / f"{split}-{key}"
    split_is_text = bool(getattr(data, f"{split}_text")) and not data.task
    if folder.exists():
        corpus = TokenCorpus.open(folder)
    else:
        name = data.task and f"the '{data.task}' task" or " + ".join(_files(data, split))
        corpus = TokenCorpus.build(
            _pairs(data, split, seed),
            tokenizer.encode_batch,
            folder,
            max_tokens=None if split_is_text else data.max_example_tokens,  # LM text is one stream: no line is too long
            max_ratio=None if split_is_text else (data.max_ratio or None),
            name=name,
        )
    log(corpus.stats.summary())
    return corpus


def valid_texts(data: DataConfig, seed: int, limit: int) -> list[tuple[str, str]]:
    """The first `limit` validation pairs as text, references normalised as the tokenizer would (for BLEU)."""
    out = []
    for _, s, t in _pairs(data, "valid", seed):
        if len(out) >= limit:
            break
        if s and t:
            out.append((s, clean(normalize(t))))
    return out


def prepare(
    data: DataConfig, tok: TokenizerConfig, seed: int, run_dir: Path, bleu_sentences: int, log: Callable[[str], None]
) -> Prepared:
    if not data.has_training_data:
        raise DataError(
            "no training data: set data.task, data.train_src + data.train_tgt, data.train_tsv or data.train_text"
        )
    for split in ("train", "valid"):  # a missing, unreadable or binary file fails now, before any work
        for path in _files(data, split):
            next(iter(read_lines(path)), None)
    tokenizer = get_tokenizer(tok, data, seed, run_dir / "tokenizer.json", log)
    cache = run_dir / "cache"
    cache.mkdir(parents=True, exist_ok=True)
    task = data.task_kind
    train = build_corpus(data, "train", tokenizer, seed, cache, log)
    valid = build_corpus(data, "valid", tokenizer, seed, cache, log) if has_split(data, "valid") else None
    pairs = valid_texts(data, seed, bleu_sentences) if valid is not None and task is TaskKind.PAIRS else []
    return Prepared(tokenizer=tokenizer, train=train, valid=valid, valid_pairs=pairs, task=task)


def lm_blocks(stream: np.ndarray, block_size: int, batch_size: int, seed: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k-th language-model batch: `batch_size` windows of `block_size + 1` tokens at offsets drawn from a
    generator seeded by (seed, k), so any batch can be rebuilt from its index alone (exact resume, sharding)."""
    n = len(stream) - block_size - 1
    if n < 1:
        raise DataError(
            f"language-model text has {len(stream)} tokens, fewer than train.block_size + 2 = "
            f"{block_size + 2}; lower train.block_size or give more text"
        )
    starts = np.random.default_rng([seed, k]).integers(0, n, size=batch_size)  # (B,)
    windows = stream[starts[:, None] + np.arange(block_size + 1)[None, :]]  # (B, block + 1)
    return windows[:, :-1], windows[:, 1:]
