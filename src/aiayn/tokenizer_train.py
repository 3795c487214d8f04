"""Training a tokenizer: `train_tokenizer` (texts) and `train_tokenizer_from_files` (text files), both streamed to the
Rust BPE trainer, then the vocabulary laid out as aiayn.tokenizer's docstring describes (specials, bytes, trained).

aiayn.tokenizer re-exports both functions; this module imports from it, not the other way round.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path

from tokenizers import Regex, decoders, pre_tokenizers, trainers
from tokenizers import Tokenizer as _RustTokenizer
from tokenizers.models import BPE

from aiayn.errors import ConfigError, DataError
from aiayn.tokenizer import (
    _BPE_PATTERN,
    _CHAR_PATTERN,
    _SPECIALS_BY_ID,
    BYTE_TOKENS,
    KINDS,
    SPECIAL_TOKENS,
    Tokenizer,
    _fix_surrogates,
    _rust_normalizer,
)

_INITIAL_ALPHABET = [" ", "\n"]  # always tokens of their own, even when the training text lacks them


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
    """Groups of texts for the Rust trainer (fewer Python -> Rust calls); checks types, fixes lone surrogates."""
    batch: list[str] = []
    for text in texts:
        if not isinstance(text, str):
            raise TypeError(f"training texts must be str, got {type(text).__name__}")
        batch.append(_fix_surrogates(text))
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


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


def train_tokenizer(texts: Iterable[str], vocab_size: int, kind: str = "bpe", min_frequency: int = 2) -> Tokenizer:
    """Train a tokenizer on `texts` (any iterable of str, consumed once, streamed to the Rust trainer).

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
    tok = _empty_rust_tokenizer(kind)
    trainer = trainers.BpeTrainer(
        # The trainer counts specials, alphabet and merges; the byte tokens are added afterwards.
        vocab_size=1 if kind == "char" else max(vocab_size - len(BYTE_TOKENS), 1),
        min_frequency=min_frequency,
        special_tokens=_SPECIALS_BY_ID,
        initial_alphabet=_INITIAL_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(_batched(texts), trainer=trainer)
    return Tokenizer(_finish(tok))


def _file_texts(path: Path) -> Iterator[str]:
    """Lines of a file without their line ends, read in binary; .tsv: the first two tab-separated columns."""
    tsv = path.suffix.lower() == ".tsv"
    with open(path, "rb") as f:
        for number, raw in enumerate(f):
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
    paths: Sequence[str | Path], vocab_size: int, kind: str = "bpe", min_frequency: int = 2
) -> Tokenizer:
    """`train_tokenizer` on the lines of text files, streamed (a corpus is never held in memory whole).

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

    return train_tokenizer(texts(), vocab_size, kind=kind, min_frequency=min_frequency)
