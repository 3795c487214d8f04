"""Subword tokenizer: BPE with byte fallback, trained with Hugging Face `tokenizers` (Rust), saved as tokenizer.json.

Design
- Special tokens `<pad>`, `<bos>`, `<eos>`, `<unk>` have the ids of `aiayn.config` (0, 1, 2, 3), the 256 byte tokens
  `<0x00>` .. `<0xFF>` come next (ids 4 .. 259), then the characters seen in training, then the learned merges.
- Byte fallback: a character the vocabulary lacks (an emoji never seen, say) is encoded as its UTF-8 bytes, so
  nothing ever becomes `<unk>` and every text round-trips: `decode(encode(t)) == normalize(t)` for any str `t`.
- Whitespace is kept as it is, inside the tokens (" the" is one token); there is no "▁" substitute, so a text that
  contains "▁" itself still round-trips. The pre-tokenizer splits a text into pieces (an optional leading space then
  letters, digits, or other symbols; runs of spaces; each "\\n") and merges never cross pieces. Chinese has no
  spaces, so a Chinese clause is one piece and learns merges inside it; a character seen in training is one token.
- The special tokens are plain vocabulary entries, not "added tokens": the text "<eos>" in user data is ordinary
  text (tokens "<", "eos", ">"), never the id EOS_ID. Merges that would spell a special or byte token are dropped.
- `kind="char"`: the same model with no merges and a pre-tokenizer that isolates every character: one token per
  character seen in training, bytes for the rest (the nanoGPT Shakespeare setup).

Normalisation (`normalize`, also built into tokenizer.json so that the Rust encoder applies it): U+200B (zero-width
space) and U+FEFF (BOM) are removed; "\\r\\n" becomes "\\n"; every other space-like character (str.isspace(): tab,
"\\r", NBSP, U+2000-U+200A, U+202F, U+205F, U+3000, U+0085, U+2028, U+2029, ...) becomes " ". "\\n" is kept. There is
no case folding, no NFKC, and spaces are neither collapsed nor stripped. U+200D (zero-width joiner) is kept. Lone
surrogates (which are not valid Unicode text) become U+FFFD.

Training (`train_tokenizer`, `train_tokenizer_from_files`) lives in aiayn.tokenizer_train and is re-exported here,
loaded on first use: that module imports this one.

This module imports no torch.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from tokenizers import Regex, normalizers
from tokenizers import Tokenizer as _RustTokenizer

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID, SpecialIds
from aiayn.errors import DataError
from aiayn.files import write_atomic

if TYPE_CHECKING:
    from aiayn.tokenizer_train import train_tokenizer, train_tokenizer_from_files

__all__ = [
    "KINDS",
    "SPECIAL_TOKENS",
    "BYTE_TOKENS",
    "Tokenizer",
    "normalize",
    "train_tokenizer",
    "train_tokenizer_from_files",
]

KINDS = ("bpe", "char")
SPECIAL_TOKENS = {"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID, "<unk>": UNK_ID}
_SPECIALS_BY_ID = sorted(SPECIAL_TOKENS, key=SPECIAL_TOKENS.__getitem__)
assert [SPECIAL_TOKENS[t] for t in _SPECIALS_BY_ID] == list(range(len(SPECIAL_TOKENS))), "special ids must be 0..3"
BYTE_TOKENS = [f"<0x{b:02X}>" for b in range(256)]
FIRST_BYTE_ID = len(SPECIAL_TOKENS)  # byte b has id FIRST_BYTE_ID + b
_SKIP_IDS = frozenset((PAD_ID, BOS_ID, EOS_ID))
# A longer text is encoded in pieces of at most this many characters, cut after a "\n" or before a " " (piece
# boundaries of the pre-tokenizer, so the ids are those of the whole text), or inside a longer word: BPE's time on one
# word grows faster than its length (1M unbroken characters took 0.8 s, 10M 13 s and 50M over 6 GB), so no text
# reaches it whole. At most _ENCODE_GROUP_CHARS characters of pieces are in the Rust encoder at a time.
ENCODE_PIECE_CHARS = 10_000
_ENCODE_GROUP_CHARS = 1_000_000

# Every character c with c.isspace() except "\n" (tests check this list against all of Unicode).
_SPACE_LIKE = (
    "\t\x0b\x0c\r\x1c\x1d\x1e\x1f\x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004\u2005\u2006\u2007\u2008\u2009\u200a"
    "\u2028\u2029\u202f\u205f\u3000"
)
_REMOVED = "\u200b\ufeff"  # zero-width space, byte order mark
_SPACE_TABLE = str.maketrans({c: " " for c in _SPACE_LIKE} | {c: None for c in _REMOVED})
_SURROGATE = re.compile("[\ud800-\udfff]")

# Pre-tokenizer patterns (Oniguruma syntax, as the Rust library reads them).
_BPE_PATTERN = r" ?[\p{L}\p{M}]+| ?\p{N}+| ?[^\s\p{L}\p{M}\p{N}]+| +(?= )| +|\n"
_CHAR_PATTERN = r"[\s\S]"


def normalize(text: str) -> str:
    """The tokenizer's normalisation, for callers that compare with decoded text (references, say).

    Removes U+200B and U+FEFF, turns "\\r\\n" into "\\n" and every other space-like character into " ".
    """
    if not isinstance(text, str):
        raise TypeError(f"normalize expects a str, got {type(text).__name__}")
    text = _fix_surrogates(text)
    # Zero-width characters go first, so that "\r\u200b\n" normalises as "\r\n" does (and normalize is idempotent).
    for c in _REMOVED:
        text = text.replace(c, "")
    return text.replace("\r\n", "\n").translate(_SPACE_TABLE)


def _fix_surrogates(text: str) -> str:
    return _SURROGATE.sub("\ufffd", text) if _SURROGATE.search(text) else text


def _encode_pieces(text: str) -> list[str]:
    """`text` cut into pieces of at most ENCODE_PIECE_CHARS characters (see there) that join to it."""
    pieces, start, limit = [], 0, ENCODE_PIECE_CHARS
    while len(text) - start > limit:
        space = text.rfind(" ", start + 1, start + limit + 1)
        while space > start and (text[space - 1].isspace() or text[space - 1] in _REMOVED):
            space = text.rfind(" ", start + 1, space)  # only where a run of spaces starts: a boundary in any case
        cut = max(space, text.rfind("\n", start, start + limit) + 1)
        if cut <= start:  # a word longer than the limit: cut inside it, never between "\r" and "\n"
            cut = start + limit - (text[start + limit - 1] == "\r" and limit > 1)
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


def _rust_normalizer() -> normalizers.Normalizer:
    """`normalize` as a tokenizers normalizer (same steps, same order)."""
    steps = [normalizers.Replace(c, "") for c in _REMOVED]
    steps.append(normalizers.Replace("\r\n", "\n"))
    steps.append(normalizers.Replace(Regex("[" + _SPACE_LIKE + "]"), " "))
    return normalizers.Sequence(steps)


class Tokenizer:
    """A trained tokenizer: encode text to ids and back. Wraps a `tokenizers.Tokenizer` (Rust)."""

    def __init__(self, rust: _RustTokenizer, source: str = "tokenizer") -> None:
        self._tok = rust
        self._check(source)
        self._vocab_size = rust.get_vocab_size(with_added_tokens=True)
        pre = json.loads(rust.to_str()).get("pre_tokenizer") or {}
        self.kind = "char" if (pre.get("pattern") or {}).get("Regex") == _CHAR_PATTERN else "bpe"

    def _check(self, source: str) -> None:
        want = dict(SPECIAL_TOKENS) | {t: FIRST_BYTE_ID + b for b, t in enumerate(BYTE_TOKENS)}
        got = {t: self._tok.token_to_id(t) for t in SPECIAL_TOKENS}
        if got != SPECIAL_TOKENS:
            expected = ", ".join(f"{t}={i}" for t, i in SPECIAL_TOKENS.items())
            found = ", ".join(f"{t}={i}" for t, i in got.items())
            raise DataError(f"{source}: special token ids must be {expected} (aiayn.config); found {found}")
        missing = [t for t, i in want.items() if self._tok.token_to_id(t) != i]
        if missing:
            raise DataError(
                f"{source}: the byte tokens <0x00>..<0xFF> must have ids {FIRST_BYTE_ID}..{FIRST_BYTE_ID + 255} "
                f"(byte fallback); wrong or missing: {missing[:5]}"
            )

    @property
    def vocab_size(self) -> int:
        """The real vocabulary size: specials, byte tokens, characters and merges."""
        return self._vocab_size

    @property
    def special_ids(self) -> SpecialIds:
        """The ids of <pad>, <bos>, <eos>, <unk>: the same in every tokenizer aiayn trains (aiayn.config)."""
        return SpecialIds()

    def __repr__(self) -> str:
        return f"Tokenizer(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Tokenizer) and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]  # mutable wrapper; compare by fingerprint()

    # --- encoding --------------------------------------------------------------------------------------------
    def encode(self, text: str) -> list[int]:
        """Token ids of `text` (normalised first). No BOS / EOS is added. A text longer than ENCODE_PIECE_CHARS is
        encoded in pieces (linear time, bounded memory): the same ids, except inside a word longer than that."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        text = _fix_surrogates(text)
        if len(text) <= ENCODE_PIECE_CHARS:
            return self._tok.encode(text, add_special_tokens=False).ids
        return self._encode_long([text])[0]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """`encode` of many texts at once, in parallel in Rust."""
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of str, not one str")
        fixed = []
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode_batch expects str items, got {type(text).__name__}")
            fixed.append(_fix_surrogates(text))
        if all(len(text) <= ENCODE_PIECE_CHARS for text in fixed):
            return [e.ids for e in self._tok.encode_batch(fixed, add_special_tokens=False)]
        return self._encode_long(fixed)

    def _encode_long(self, texts: list[str]) -> list[list[int]]:
        """encode_batch for texts of any length: in pieces (`_encode_pieces`), a bounded group at a time."""
        out: list[list[int]] = [[] for _ in texts]
        group: list[tuple[int, str]] = []  # (index of the text, piece)
        size = 0
        for i, text in enumerate(texts):
            for piece in _encode_pieces(text):
                group.append((i, piece))
                size += len(piece)
                if size >= _ENCODE_GROUP_CHARS:
                    self._encode_group(group, out)
                    group, size = [], 0
        self._encode_group(group, out)
        return out

    def _encode_group(self, group: list[tuple[int, str]], out: list[list[int]]) -> None:
        encoded = self._tok.encode_batch([piece for _, piece in group], add_special_tokens=False)
        for (i, _), enc in zip(group, encoded, strict=True):
            out[i].extend(enc.ids)

    def _clean(self, ids: Iterable[int]) -> list[int]:
        # int() accepts numpy / torch integer scalars; pad, bos, eos and ids outside the vocabulary are skipped.
        out = []
        for i in ids:
            i = int(i)
            if 0 <= i < self._vocab_size and i not in _SKIP_IDS:
                out.append(i)
        return out

    def decode(self, ids: Sequence[int]) -> str:
        """Text of token ids. Skips pad / bos / eos (it does not stop at eos) and ids outside the vocabulary;
        `<unk>` reads "<unk>". Byte tokens are joined into UTF-8; invalid bytes read U+FFFD (never raises)."""
        return self._tok.decode(self._clean(ids), skip_special_tokens=False)

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        """`decode` of many id sequences (a list of lists, or a 2-D tensor / array)."""
        return self._tok.decode_batch([self._clean(ids) for ids in batch], skip_special_tokens=False)

    def tokens(self, text: str) -> list[str]:
        """Readable token strings of `encode(text)`, one per id, for plots and printing.

        Spaces show as "▁", a newline as "\\n". A run of byte tokens that forms characters shows each character's
        glyph on its first byte and the raw "<0xNN>" on the continuation bytes; invalid bytes show as "<0xNN>".
        """
        return self.labels(self.encode(text))

    def labels(self, ids: Sequence[int]) -> list[str]:
        """Readable token strings of ids, one per id (see `tokens`); specials read "<bos>", "<eos>", ..."""
        ids = [int(i) for i in ids]
        labels: list[str] = []
        i = 0
        while i < len(ids):
            byte = ids[i] - FIRST_BYTE_ID
            if 0 <= byte < 256:
                j = i
                while j < len(ids) and 0 <= ids[j] - FIRST_BYTE_ID < 256:
                    j += 1
                labels += _byte_labels(bytes(k - FIRST_BYTE_ID for k in ids[i:j]))
                i = j
            else:
                labels.append(self._tok.id_to_token(ids[i]).replace(" ", "▁").replace("\n", "\\n"))
                i += 1
        return labels

    def id_to_token(self, token_id: int) -> str | None:
        """The raw vocabulary string of an id (None outside the vocabulary)."""
        return self._tok.id_to_token(int(token_id))

    # --- files -----------------------------------------------------------------------------------------------
    def to_json(self) -> str:
        """The tokenizer.json text (what `save` writes)."""
        return self._tok.to_str(pretty=True)

    @classmethod
    def from_json(cls, text: str, source: str = "tokenizer.json") -> Tokenizer:
        """A tokenizer from tokenizer.json text; ValueError naming `source` when it is not a valid one."""
        try:
            rust = _RustTokenizer.from_str(text)
        except Exception as e:  # the Rust library raises a bare Exception for bad JSON
            raise DataError(f"{source}: not a valid tokenizer.json ({e})") from e
        try:
            model = json.loads(text).get("model") or {}
        except (json.JSONDecodeError, AttributeError) as e:
            raise DataError(f"{source}: not a valid tokenizer.json ({e})") from e
        if model.get("type") != "BPE" or not model.get("byte_fallback"):
            raise DataError(f"{source}: expected a BPE model with byte_fallback=true")
        return cls(rust, source=source)

    def save(self, path: str | Path) -> None:
        """Write tokenizer.json atomically (aiayn.files.write_atomic: a temporary file beside it, fsync, rename)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, self.to_json().encode("utf-8"))

    @classmethod
    def load(cls, path: str | Path) -> Tokenizer:
        """Read a tokenizer.json; ValueError naming the path when it is missing, corrupt, or has other special ids."""
        path = Path(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise DataError(f"cannot read tokenizer file {str(path)!r}: {e}") from e
        return cls.from_json(text, source=str(path))

    def fingerprint(self) -> str:
        """sha256 (hex) of the canonical JSON (sorted keys, compact): equal tokenizers have equal fingerprints."""
        canonical = json.dumps(
            json.loads(self._tok.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
        )
        return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _byte_labels(data: bytes) -> list[str]:
    """One label per byte: a character's glyph on its first byte, "<0xNN>" on the others, on invalid bytes and on
    control characters other than a newline (they have no glyph in any font: a picture could not show them)."""
    labels: list[str] = []
    i = 0
    while i < len(data):
        lead = data[i]
        width = 1 if lead < 0x80 else 2 if 0xC2 <= lead < 0xE0 else 3 if 0xE0 <= lead < 0xF0 else 4
        try:
            char = data[i : i + width].decode("utf-8") if width else ""
        except UnicodeDecodeError:
            char = ""
        if len(char) == 1 and (char == "\n" or not unicodedata.category(char).startswith("C")):
            glyph = char.replace(" ", "▁").replace("\n", "\\n")
            labels += [glyph] + [BYTE_TOKENS[b] for b in data[i + 1 : i + width]]
            i += width
        else:
            labels.append(BYTE_TOKENS[lead])
            i += 1
    return labels


_TRAINING = ("train_tokenizer", "train_tokenizer_from_files")


def __getattr__(name: str) -> object:
    """The training functions, imported from aiayn.tokenizer_train on first use (it imports this module)."""
    if name in _TRAINING:
        from aiayn import tokenizer_train

        value = getattr(tokenizer_train, name)
        globals()[name] = value  # later lookups find it without coming here
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
