"""From a run's data config to what the trainer needs: a tokenizer and tokenized, filtered, cached corpora.

Everything is streamed: files are read line by line, tokenized in chunks and appended to memory-mapped caches
under `<out_dir>/cache/`, keyed by the files' names, sizes and mtimes, the tokenizer and the filter settings,
so a second run (or a resumed one) opens them without tokenizing again.

The tokenizer a run trains is read from the training files through the data reader (aiayn.data.reader: UTF-8,
binary files, line caps), after every data file has been read through once: a data error leaves nothing derived
behind. `<out_dir>/tokenizer.source.json`, beside the tokenizer, records what it was trained on (the files' paths,
sizes and mtimes, or the built-in task; the `tokenizer.*` settings): a rerun with other data or settings trains a
new one, or, when the run has checkpoints, stops with one line.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from aiayn.config import DataConfig, TaskKind, TokenizerConfig
from aiayn.config.run import moses_langs
from aiayn.data.corpus import TokenCorpus, cache_key
from aiayn.data.reader import DataError, clean, read_lines, read_parallel, read_tsv
from aiayn.data.tasks import task_pairs
from aiayn.errors import ConfigError
from aiayn.files import write_atomic
from aiayn.tokenizer import Tokenizer, normalize
from aiayn.tokenizer_moses import PreprocessedText, preprocessed
from aiayn.tokenizer_train import text_totals, train_tokenizer

VALID_SEED_OFFSET = 7919  # validation examples of a built-in task come from another seed than training's
SOURCE_RECORD = "tokenizer.source.json"  # beside the run's tokenizer.json: what it was trained on
_STEP_DIR = re.compile(r"^step-\d+$")  # a checkpoint folder (aiayn.train.checkpoint.STEP_DIR)


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


def _raw_texts(data: DataConfig, split: str, seed: int) -> Iterator[str]:
    """The texts of one split as the files hold them (the tokenizer's training text), read by the data reader:
    both sides of a pair, each line of plain text, preprocessed as data.moses / data.lowercase say. Reading them
    all validates every file of the split."""
    get = lambda key: getattr(data, f"{split}_{key}")  # noqa: E731
    if data.task:
        lines: Iterable[tuple[int, str, str]] = ((0, s, t) for s, t in _task(data, seed, split))
    elif get("src"):
        lines = read_parallel(get("src"), get("tgt"))
    elif get("tsv"):
        lines = read_tsv(get("tsv"))
    else:
        lines = ((line, text, "") for line, text in read_lines(get("text"))) if get("text") else iter(())
    pre = _preprocessing(data)
    for _, s, t in lines:
        yield s if pre is None else pre.source(s)
        yield t if pre is None or not t else pre.target(t)


def _preprocessing(data: DataConfig) -> PreprocessedText | None:
    """data.moses / data.lowercase as source and target text functions (None when neither is set)."""
    if not data.moses and not data.lowercase:
        return None
    return PreprocessedText(None, moses_langs(data.moses) if data.moses else None, data.lowercase)


def tokenizer_source(cfg: TokenizerConfig, data: DataConfig, seed: int) -> dict[str, Any]:
    """What a trained tokenizer depends on: the training files (resolved path, size, mtime) or the built-in task,
    and the tokenizer settings (what `<run>/tokenizer.source.json` holds)."""
    files = []
    for path in [] if data.task else _files(data, "train"):
        try:
            st = os.stat(path)
        except OSError as e:
            raise DataError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
        files.append({"path": str(Path(path).resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns})
    task = {"task": data.task, "task_train_size": data.task_train_size, "seed": seed} if data.task else None
    settings = {
        k: getattr(cfg, k) for k in ("kind", "vocab_size", "min_frequency", "max_word_chars", "max_train_chars")
    }
    if data.moses or data.lowercase:  # only then: the records of earlier runs stay valid
        settings.update({"data.moses": data.moses, "data.lowercase": data.lowercase})
    return {"files": files, "task": task, "tokenizer": settings}


def _read_source(path: Path) -> dict[str, Any] | None:
    """The record beside a run's tokenizer; None when it is missing or not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and isinstance(record.get("tokenizer"), dict) else None


def _differences(old: dict[str, Any], new: dict[str, Any]) -> str:
    what = [f"{k if '.' in k else 'tokenizer.' + k}: {old['tokenizer'].get(k)!r} then, {v!r} now"
            for k, v in new["tokenizer"].items() if old["tokenizer"].get(k) != v]  # fmt: skip
    if old.get("files") != new["files"] or old.get("task") != new["task"]:
        what.insert(0, "the training data (files, sizes or modification times, or the task)")
    return "; ".join(what) or "its record"


def _has_checkpoints(run_dir: Path) -> bool:
    folder = run_dir / "checkpoints"
    return folder.is_dir() and any(_STEP_DIR.match(p.name) and p.is_dir() for p in folder.iterdir())


def _reusable(out: Path, source: dict[str, Any], log: Callable[[str], None]) -> bool:
    """Whether the run's tokenizer `out` was trained on `source`; a run with checkpoints cannot change it."""
    if not out.exists():
        return False
    saved = _read_source(out.with_name(SOURCE_RECORD))
    if saved == source:
        return True
    if _has_checkpoints(out.parent):
        if saved is None:
            return True  # a run folder from before the record was kept: nothing to compare with
        raise ConfigError(
            f"the tokenizer {out} no longer matches this run ({_differences(saved, source)}), and the run has "
            f"checkpoints trained with it: restore the data and settings, choose another --train.out_dir, "
            f"or keep it with --tokenizer.path {out}"
        )
    log(f"the tokenizer in {out.parent} was trained on other data or settings: training a new one")
    return False


def get_tokenizer(
    cfg: TokenizerConfig, data: DataConfig, seed: int, out: Path, log: Callable[[str], None]
) -> Tokenizer:
    """The configured tokenizer file, the run's own (when it was trained on this data with these settings), or a
    new one trained on the training text, saved to `out` with its record (after every data file was read once)."""
    if cfg.kind == "sentencepiece":
        return _sentencepiece(cfg, data, seed, out.parent, log)
    if cfg.path:
        return Tokenizer.load(cfg.path)
    source = tokenizer_source(cfg, data, seed)
    if _reusable(out, source, log):
        return Tokenizer.load(out)
    if data.task:
        texts: Iterable[str] = list(_raw_texts(data, "train", seed))
        totals = text_totals(texts, cfg.max_word_chars)
    else:
        totals = text_totals(_raw_texts(data, "train", seed), cfg.max_word_chars)  # reads every training file
        for _ in _raw_texts(data, "valid", seed):
            pass  # and every validation file: nothing is written before the data is known to be readable
        texts = _raw_texts(data, "train", seed)
    log(f"training a {cfg.kind} tokenizer (vocab_size {cfg.vocab_size}) on the training text")
    out.with_name(SOURCE_RECORD).unlink(missing_ok=True)
    tokenizer = train_tokenizer(
        texts, cfg.vocab_size, kind=cfg.kind, min_frequency=cfg.min_frequency,
        max_word_chars=cfg.max_word_chars, max_train_chars=cfg.max_train_chars, totals=totals,
    )  # fmt: skip
    tokenizer.save(out)
    write_atomic(out.with_name(SOURCE_RECORD), json.dumps(source, indent=1).encode("utf-8"))
    log(f"tokenizer: {tokenizer.vocab_size} tokens, saved to {out}")
    return tokenizer


def _sentencepiece(cfg: TokenizerConfig, data: DataConfig, seed: int, run_dir: Path, log: Callable[[str], None]):
    """`tokenizer.kind: sentencepiece`: the folder `tokenizer.path` (source.spm, target.spm, vocab.json), the run's
    own (trained on this data with these settings), or a new one trained on the training text (source and target
    together), its files written into the run folder."""
    from aiayn.tokenizer_pretrained import load_pretrained
    from aiayn.tokenizer_spm_train import train_sentencepiece

    if cfg.path:
        return load_pretrained(Path(cfg.path), "sentencepiece")
    source = tokenizer_source(cfg, data, seed)
    if _reusable(run_dir / "vocab.json", source, log):
        return load_pretrained(run_dir, "sentencepiece")
    for _ in _raw_texts(data, "valid", seed):
        pass  # every validation file is readable before anything is written
    log(f"training a sentencepiece tokenizer (vocab_size {cfg.vocab_size}) on the training text")
    (run_dir / SOURCE_RECORD).unlink(missing_ok=True)
    tokenizer = train_sentencepiece(_raw_texts(data, "train", seed), cfg.vocab_size, cfg.max_train_chars)
    for name, content in tokenizer.files().items():
        write_atomic(run_dir / name, content)
    write_atomic(run_dir / SOURCE_RECORD, json.dumps(source, indent=1).encode("utf-8"))
    log(f"tokenizer: {tokenizer.vocab_size} tokens, saved to {run_dir} (source.spm, target.spm, vocab.json)")
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
            encode_target=getattr(tokenizer, "encode_target_batch", None),  # an imported Marian's target side
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
    data: DataConfig, tok: TokenizerConfig, seed: int, run_dir: Path, bleu_sentences: int, log: Callable[[str], None],
    tokenizer=None,
) -> Prepared:
    """The run's tokenizer (`tokenizer` when given: an imported model's, for fine-tuning; else `get_tokenizer`),
    its token caches for train and valid, and the validation pairs BLEU is computed on."""
    if not data.has_training_data:
        raise DataError(
            "no training data: set data.task, data.train_src + data.train_tgt, data.train_tsv or data.train_text"
        )
    for split in ("train", "valid"):  # a missing, unreadable or binary file fails now, before any work
        for path in _files(data, split):
            next(iter(read_lines(path)), None)
    if tokenizer is None:
        tokenizer = get_tokenizer(tok, data, seed, run_dir / "tokenizer.json", log)
    tokenizer = preprocessed(tokenizer, data.moses, data.lowercase)  # itself, unless data.moses / data.lowercase
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
