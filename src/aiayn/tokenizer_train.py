"""Training a tokenizer: `train_tokenizer` (texts) and `train_tokenizer_from_files` (text files), both streamed to the
Rust BPE trainer, then the vocabulary laid out as aiayn.tokenizer's docstring describes (specials, bytes, trained).

Bounds, whatever the input (BPE's time and memory grow with the length of its words, and with the characters of its
distinct words): `training_texts` cuts each run without whitespace longer than `max_word_chars` into chunks of at
most that many characters, and keeps at most `max_train_chars` characters, sampled evenly over the input
(SentencePiece's input_sentence_size). Chunks of such long runs are nearly all distinct words, each held by the
trainer one by one (about 90 bytes a character), so at most LONG_RUN_CHARS of them are kept, sampled evenly too.

aiayn.tokenizer re-exports both functions; this module imports from it, not the other way round.
"""

from __future__ import annotations

import functools
import json
import os
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.models import BPE

from aiayn.config import TokenizerConfig
from aiayn.errors import ConfigError, DataError
from aiayn.tokenizer import (
    _BPE_PATTERN,
    _CHAR_PATTERN,
    _SPECIALS_BY_ID,
    BYTE_TOKENS,
    ENCODE_PIECE_CHARS,
    KINDS,
    SPECIAL_TOKENS,
    Tokenizer,
    _encode_pieces,
    _fix_surrogates,
    _rust_normalizer,
)

_INITIAL_ALPHABET = [" ", "\n"]  # always tokens of their own, even when the training text lacks them
MAX_WORD_CHARS = TokenizerConfig.max_word_chars
MAX_TRAIN_CHARS = TokenizerConfig.max_train_chars
LONG_RUN_CHARS = 10_000_000  # at most this many characters of chunks of long runs: ~1 GB and ~15 s in the trainer
PIECE_CHARS = ENCODE_PIECE_CHARS  # longer lines are cut into pieces (as the encoder cuts them): the unit of sampling
MAX_LINE_BYTES = 64 * 1024 * 1024  # as aiayn.data.reader.MAX_LINE_BYTES: a longer line is not a line of text


def _check_vocab_size(vocab_size: object) -> int:
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int) or vocab_size < 1:
        raise ConfigError(f"vocab_size must be an int >= 1, got {vocab_size!r}")
    return vocab_size


def _check_kind(kind: object) -> str:
    if kind not in KINDS:
        raise ConfigError(f"kind={kind!r} is not one of {' | '.join(map(repr, KINDS))}")
    return kind  # type: ignore[return-value]


def _empty_rust_tokenizer(kind: str) -> _RustTokenizer:
    tok = _RustTokenizer(BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = _rust_normalizer()
    pattern = _CHAR_PATTERN if kind == "char" else _BPE_PATTERN
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="isolated")
    tok.decoder = decoders.Sequence([decoders.ByteFallback(), decoders.Fuse()])
    return tok


def _batched(texts: Iterable[str], size: int = 1000) -> Iterator[list[str]]:
    """Groups of texts for the Rust trainer (fewer Python -> Rust calls)."""
    batch: list[str] = []
    for text in texts:
        batch.append(text)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _checked(texts: Iterable[str]) -> Iterator[str]:
    """The texts, type-checked, lone surrogates fixed."""
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of str, not one str (wrap it in a list)")
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        yield _fix_surrogates(text)


@functools.lru_cache(maxsize=8)
def _long_run(max_word_chars: int) -> re.Pattern[str]:
    return re.compile(rf"\S{{{max_word_chars + 1},}}")


def _check_bound(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ConfigError(f"{name} must be an int >= 1, got {value!r}")
    return value


def text_totals(texts: Iterable[str], max_word_chars: int = MAX_WORD_CHARS) -> tuple[int, int]:
    """(characters, characters in runs without whitespace longer than max_word_chars) of `texts`: what
    `training_texts` needs to sample evenly from an input it reads once (count on a first pass, train on a second)."""
    long_run = _long_run(_check_bound("max_word_chars", max_word_chars))
    total = long = 0
    for text in _checked(texts):
        total += len(text)
        if len(text) > max_word_chars:
            long += sum(m.end() - m.start() for m in long_run.finditer(text))
    return total, long


def _short_pieces(text: str, start: int, end: int) -> Iterator[tuple[str, bool]]:
    """text[start:end] in the pieces the encoder would cut it into (aiayn.tokenizer's ENCODE_PIECE_CHARS)."""
    if end > start:
        part = text[start:end]
        if len(part) <= PIECE_CHARS:
            yield part, False
        else:
            yield from ((piece, False) for piece in _encode_pieces(part))


def _pieces(text: str, max_word_chars: int) -> Iterator[tuple[str, bool]]:
    """(piece, cut from a long run) covering `text` in order: every run without whitespace longer than
    max_word_chars in chunks of max_word_chars characters (the last one shorter), the rest in pieces of at most
    PIECE_CHARS characters, cut where the encoder cuts a long text (at pre-tokenizer boundaries)."""
    if len(text) <= max_word_chars:
        yield text, False
        return
    start = 0
    for m in _long_run(max_word_chars).finditer(text):
        yield from _short_pieces(text, start, m.start())
        for i in range(m.start(), m.end(), max_word_chars):
            yield text[i : min(i + max_word_chars, m.end())], True
        start = m.end()
    yield from _short_pieces(text, start, len(text))


class _Sampler:
    """Keeps pieces while the characters kept stay within `share` (a fraction: numerator, denominator) of the
    characters seen (evenly spaced, deterministic) and within `cap` in all; share None (the total is not known):
    the first `cap` characters."""

    def __init__(self, share: tuple[int, int] | None, cap: int) -> None:
        self.share, self.cap, self.seen, self.kept = share, cap, 0, 0

    def take(self, n: int, room: int) -> bool:
        self.seen += n
        if n > room or self.kept + n > self.cap:
            return False
        if self.share is not None and (self.kept + n) * self.share[1] > self.seen * self.share[0]:
            return False
        self.kept += n
        return True


def training_texts(
    texts: Iterable[str],
    max_word_chars: int = MAX_WORD_CHARS,
    max_train_chars: int = MAX_TRAIN_CHARS,
    totals: tuple[int, int] | None = None,
) -> Iterator[str]:
    """The strings the BPE trainer is given for `texts`: no run without whitespace longer than max_word_chars,
    at most max_train_chars characters (and LONG_RUN_CHARS of chunks of long runs), sampled evenly.

    totals: `text_totals(texts, max_word_chars)`, counted on an earlier pass; computed here when texts is a list or
    tuple. Without it (an iterator read once) the first max_train_chars characters are kept, not a sample.
    """
    max_word_chars = _check_bound("max_word_chars", max_word_chars)
    max_train_chars = _check_bound("max_train_chars", max_train_chars)
    if totals is None and isinstance(texts, (list, tuple)):
        totals = text_totals(texts, max_word_chars)
    long_cap = min(LONG_RUN_CHARS, max_train_chars)
    if totals is None:
        short, long = _Sampler(None, max_train_chars), _Sampler(None, long_cap)
    else:
        total, long_total = max(totals[0], 1), max(totals[1], 1)
        share = (max_train_chars, total) if total > max_train_chars else (1, 1)
        short = _Sampler(share, max_train_chars)
        long = _Sampler(min(share, (long_cap, long_total), key=lambda f: f[0] / f[1]), long_cap)
    for text in _checked(texts):
        for piece, from_long_run in _pieces(text, max_word_chars):
            sampler = long if from_long_run else short
            if sampler.take(len(piece), room=max_train_chars - short.kept - long.kept):
                yield piece


def _finish(trained: _RustTokenizer) -> _RustTokenizer:
    """Lay out the trained vocabulary as specials (0..3), bytes (4..259), then the trained tokens in trained order.

    Drops merges whose result spells a special or byte token (possible only when the training text contains such
    strings), and everything that depended on them, so no text can ever encode to a special or byte id by a merge.
    """
    data = json.loads(trained.to_str())
    model = data["model"]
    trained_vocab = sorted(model["vocab"].items(), key=lambda item: item[1])
    reserved = set(SPECIAL_TOKENS) | set(BYTE_TOKENS)
    available = {token for token, _ in trained_vocab if len(token) == 1}  # the alphabet
    merges = []
    for merge in model["merges"]:
        left, right = merge.split(" ", 1) if isinstance(merge, str) else merge
        if left in available and right in available and left + right not in reserved:
            merges.append([left, right])
            available.add(left + right)
    tokens = _SPECIALS_BY_ID + BYTE_TOKENS + [t for t, _ in trained_vocab if t in available and t not in reserved]
    model["vocab"] = {token: i for i, token in enumerate(tokens)}
    model["merges"] = merges
    data["added_tokens"] = []  # specials are ordinary vocabulary entries; see aiayn.tokenizer's docstring
    return _RustTokenizer.from_str(json.dumps(data, ensure_ascii=False))


def train_tokenizer(
    texts: Iterable[str],
    vocab_size: int,
    kind: str = "bpe",
    min_frequency: int = 2,
    *,
    max_word_chars: int = MAX_WORD_CHARS,
    max_train_chars: int = MAX_TRAIN_CHARS,
    totals: tuple[int, int] | None = None,
) -> Tokenizer:
    """Train a tokenizer on `texts` (any iterable of str, consumed once, streamed to the Rust trainer).

    What the trainer sees is `training_texts(texts, max_word_chars, max_train_chars, totals)` (the bounds in this
    module's docstring); encoding is not bounded that way: a long word is encoded whole, with the merges learned.

    vocab_size: the requested size of the whole vocabulary, specials and the 256 byte tokens included. The vocabulary
    always holds the 4 specials, the 256 bytes and every character seen in training, so a smaller request is clamped
    up to that (read `Tokenizer.vocab_size` for the real size); merges fill the rest, and training stops early when
    no pair is seen `min_frequency` times. For kind="char" the vocabulary is always specials + bytes + every
    character seen (no merges), so `vocab_size` and `min_frequency` are only validated.
    Deterministic: the same texts give the same tokenizer.json, byte for byte.
    """
    vocab_size = _check_vocab_size(vocab_size)
    kind = _check_kind(kind)
    if isinstance(min_frequency, bool) or not isinstance(min_frequency, int) or min_frequency < 0:
        raise ConfigError(f"min_frequency must be an int >= 0, got {min_frequency!r}")
    if isinstance(texts, str):
        raise TypeError("texts must be an iterable of str, not one str (wrap it in a list)")
    pieces = training_texts(texts, max_word_chars, max_train_chars, totals)
    tok = _empty_rust_tokenizer(kind)
    trainer = trainers.BpeTrainer(
        # The trainer counts specials, alphabet and merges; the byte tokens are added afterwards.
        vocab_size=1 if kind == "char" else max(vocab_size - len(BYTE_TOKENS), 1),
        min_frequency=min_frequency,
        special_tokens=_SPECIALS_BY_ID,
        initial_alphabet=_INITIAL_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(_batched(pieces), trainer=trainer)
    return Tokenizer(_finish(tok))


def _file_texts(path: Path) -> Iterator[str]:
    """Lines of a file without their line ends, read in binary; .tsv: the first two tab-separated columns.

    A line longer than MAX_LINE_BYTES is a DataError, as in the data reader (it is never held in memory whole)."""
    tsv = path.suffix.lower() == ".tsv"
    with open(path, "rb") as f:
        for number, raw in enumerate(iter(lambda: f.readline(MAX_LINE_BYTES + 1), b"")):
            if len(raw) > MAX_LINE_BYTES and not raw.endswith(b"\n"):
                raise DataError(
                    f"{os.fspath(path)} line {number + 1} is longer than {MAX_LINE_BYTES:,} bytes; "
                    "expected one sentence per line"
                )
            line = raw[3:] if number == 0 and raw.startswith(b"\xef\xbb\xbf") else raw
            if line.endswith(b"\n"):
                line = line[:-1]
            if line.endswith(b"\r"):
                line = line[:-1]
            text = line.decode("utf-8", errors="replace")
            if tsv:
                yield from text.split("\t")[:2]
            elif text:
                yield text


def train_tokenizer_from_files(
    paths: Sequence[str | Path],
    vocab_size: int,
    kind: str = "bpe",
    min_frequency: int = 2,
    *,
    max_word_chars: int = MAX_WORD_CHARS,
    max_train_chars: int = MAX_TRAIN_CHARS,
) -> Tokenizer:
    """`train_tokenizer` on the lines of text files, streamed (a corpus is never held in memory whole); the files
    are read twice: once to count their characters (for even sampling), once to train.

    Files are read in binary and decoded as UTF-8 (invalid bytes become U+FFFD; the data module validates files
    separately); a UTF-8 BOM and CRLF line ends are handled, so CRLF and LF copies of a file train the same
    tokenizer. For .tsv files only the first two tab-separated columns are used. Line ends are not part of the
    training text; "\\n" is a token of every vocabulary anyway.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    files = [Path(p) for p in paths]
    for file in files:
        if not file.is_file():
            raise DataError(f"training file {str(file)!r} does not exist or is not a file")

    def texts() -> Iterator[str]:
        for file in files:
            yield from _file_texts(file)

    totals = text_totals(texts(), _check_bound("max_word_chars", max_word_chars))
    return train_tokenizer(
        texts(), vocab_size, kind=kind, min_frequency=min_frequency,
        max_word_chars=max_word_chars, max_train_chars=max_train_chars, totals=totals,
    )  # fmt: skip
