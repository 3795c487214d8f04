"""Tokenizers that come with a pretrained model, kept as they are: their own pieces, vocabulary and special ids.

aiayn's own tokenizer (aiayn.tokenizer) fixes its special ids and byte tokens. A model made elsewhere was trained
on its own tokenizer, and its ids must be carried, not remapped, or the imported weights compute something else.
Two kinds, each the files its model came with:

- `sentencepiece` (Marian, opus-mt): `source.spm` cuts the source text into pieces, `target.spm` the target text,
  and `vocab.json` maps the pieces of both to the one shared vocabulary of the model (a piece it lacks is the
  unknown token). `tokenizer_config.json` (Hugging Face's file) names the special tokens and the source language
  of Moses punctuation normalisation, which Marian's tokenizer applies to sources when `sacremoses` is installed
  (aiayn needs it then: the `interop` extra). A leading language code such as ">>fra<<" is one token.
  Decoding joins pieces with the target model, as Marian's tokenizer does.
- `hf` (GPT-2's byte-level BPE): a `tokenizer.json` of Hugging Face `tokenizers`, loaded as it is, with the
  `tokenizer_config.json` that names its special tokens. GPT-2 has one token for start and end and no padding.

Both offer what aiayn.tokenizer.Tokenizer offers (encode, encode_batch, decode, decode_batch, labels, tokens,
id_to_token, vocab_size, special_ids, fingerprint) plus `encode_target_batch` (target texts: fine-tuning
references) and `files()` (what a model folder stores). Special tokens are skipped when decoding, as
`skip_special_tokens=True` does in Hugging Face; text that spells a special token is encoded as ordinary text.

Shapes: none (lists of ids).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from aiayn.config import PAD_ID, SpecialIds
from aiayn.errors import DataError

SPM_FILES = ("source.spm", "target.spm", "vocab.json", "tokenizer_config.json")
HF_FILES = ("tokenizer.json", "tokenizer_config.json")
_UNDERLINE = "\u2581"  # SentencePiece's word-start mark


def _token_name(config: dict[str, Any], key: str, default: str | None) -> str | None:
    """A special token's text from tokenizer_config.json (a plain string or an AddedToken dict)."""
    value = config.get(key, default)
    return value.get("content") if isinstance(value, dict) else value


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise DataError(f"{path}: cannot read it as JSON ({e})") from None


class _Pretrained:
    """What both kinds share: files, fingerprint, decoding around the special tokens."""

    kind = ""
    FILES: tuple[str, ...] = ()  # what a folder of this kind holds; tokenizer_config.json may be absent
    _ids: SpecialIds

    @classmethod
    def load(cls, folder: str | Path):
        """The tokenizer whose files are in `folder`; DataError naming a file that cannot be read."""
        folder = Path(folder)
        files = {}
        for name in cls.FILES:
            path = folder / name
            if name == "tokenizer_config.json" and not path.exists():
                continue
            try:
                files[name] = path.read_bytes()
            except OSError as e:
                raise DataError(f"{path}: cannot read the {cls.kind} tokenizer file ({e.strerror})") from None
        return cls(files, source=str(folder))

    @property
    def special_ids(self) -> SpecialIds:
        return self._ids

    def __init__(self, files: dict[str, bytes], source: str) -> None:
        self._files = files
        self.source = source

    def files(self) -> dict[str, bytes]:
        """{file name: bytes} of the tokenizer, as a model folder stores them."""
        return dict(self._files)

    def fingerprint(self) -> str:
        """sha256 (hex) over the files' names and contents."""
        digest = hashlib.sha256(self.kind.encode())
        for name in sorted(self._files):
            digest.update(name.encode() + b"\0" + hashlib.sha256(self._files[name]).digest())
        return digest.hexdigest()

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Pretrained) and self.fingerprint() == other.fingerprint()

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"{type(self).__name__}(kind={self.kind!r}, vocab_size={self.vocab_size})"

    def max_id(self) -> int:
        return self.vocab_size - 1

    def encode(self, text: str) -> list[int]:
        """Token ids of a source text (no end token added)."""
        return self.encode_batch([text])[0]

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]

    def tokens(self, text: str) -> list[str]:
        return self.labels(self.encode(text))

    def _kept(self, ids: Iterable[int]) -> list[int]:
        """ids without the special tokens and ids outside the vocabulary."""
        return [int(i) for i in ids if 0 <= int(i) < self.vocab_size and int(i) not in self._skip]

    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError("encode_batch expects a sequence of str, not one str")
        for text in texts:
            if not isinstance(text, str):
                raise TypeError(f"encode_batch expects str items, got {type(text).__name__}")
        return list(texts)


class SentencePieceTokenizer(_Pretrained):
    """Marian's tokenizer: source.spm / target.spm pieces mapped through the shared vocab.json."""

    kind = "sentencepiece"
    FILES = SPM_FILES

    def __init__(self, files: dict[str, bytes], source: str = "tokenizer") -> None:
        super().__init__(files, source)
        try:
            import sentencepiece
        except ImportError:
            raise DataError(
                f"{source}: a SentencePiece tokenizer needs the sentencepiece package: pip install 'aiayn[interop]'"
            ) from None
        self._spm = {}
        for side in ("source", "target"):
            processor = sentencepiece.SentencePieceProcessor()
            try:
                processor.LoadFromSerializedProto(files[f"{side}.spm"])
            except (RuntimeError, OSError) as e:
                raise DataError(f"{source}/{side}.spm: not a SentencePiece model ({e})") from None
            self._spm[side] = processor
        self.vocab = json.loads(files["vocab.json"])
        if not isinstance(self.vocab, dict) or not all(isinstance(i, int) for i in self.vocab.values()):
            raise DataError(f"{source}/vocab.json: expected an object mapping pieces to integer ids")
        config = json.loads(files.get("tokenizer_config.json") or b"{}")
        if config.get("separate_vocabs") or config.get("target_vocab_file"):
            raise DataError(
                f"{source}/tokenizer_config.json: separate source and target vocabularies (separate_vocabs) are not "
                f"supported: aiayn's models share one vocabulary between source and target"
            )
        self._pieces = {i: p for p, i in self.vocab.items()}
        self.vocab_size = max(self.vocab.values()) + 1
        names = {k: _token_name(config, f"{k}_token", d) for k, d in
                 (("eos", "</s>"), ("unk", "<unk>"), ("pad", "<pad>"))}  # fmt: skip
        for key, name in names.items():
            if name not in self.vocab:
                raise DataError(f"{source}/vocab.json: has no {key} token {name!r} (tokenizer_config.json)")
        eos, unk, pad = (self.vocab[names[k]] for k in ("eos", "unk", "pad"))
        self._ids = SpecialIds(pad=pad, bos=pad, eos=eos, unk=unk)  # Marian starts decoding from its pad token
        self._special_pieces = {names["eos"], names["unk"], names["pad"]}
        self._skip = {pad, eos}
        self._normalize = self._punct_normalizer(config.get("source_lang"))

    def _punct_normalizer(self, lang: str | None):
        """Moses punctuation normalisation, as Marian's tokenizer applies it to sources when sacremoses is there."""
        try:
            from sacremoses import MosesPunctNormalizer
        except ImportError:
            raise DataError(
                f"{self.source}: Marian's tokenizer normalises punctuation with sacremoses: "
                f"pip install 'aiayn[interop]'"
            ) from None
        try:
            return MosesPunctNormalizer(lang).normalize
        except FileNotFoundError:  # sacremoses has no rules for this language: Marian's tokenizer skips it too
            return lambda text: text

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Source ids: punctuation normalised, a leading language code as one token, source.spm pieces."""
        return [self._encode(self._normalize(t) if t else "", "source") for t in self._check_texts(texts)]

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        """Target ids (references for fine-tuning): target.spm pieces, no normalisation (as Marian's tokenizer)."""
        return [self._encode(t, "target") for t in self._check_texts(texts)]

    def _encode(self, text: str, side: str) -> list[int]:
        pieces = []
        if text.startswith(">>") and (end := text.find("<<")) != -1:  # a target-language code, e.g. ">>fra<<"
            pieces.append(text[: end + 2])
            text = text[end + 2 :]
        pieces += self._spm[side].encode(text, out_type=str)
        unk = self._ids.unk
        return [self.vocab.get(p, unk) for p in pieces]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of target ids: pad and end skipped, pieces joined by target.spm, "<unk>" kept as it reads."""
        out, run = "", []
        for i in self._kept(ids):
            piece = self._pieces.get(i, "")
            if piece in self._special_pieces:  # Marian's tokenizer never hands a special token to SentencePiece
                out += self._spm["target"].decode_pieces(run) + piece + " "
                run = []
            else:
                run.append(piece)
        out += self._spm["target"].decode_pieces(run)
        return out.replace(_UNDERLINE, " ").strip()

    def labels(self, ids: Sequence[int]) -> list[str]:
        return [self._pieces.get(int(i), f"<{int(i)}>") for i in ids]

    def id_to_token(self, token_id: int) -> str | None:
        return self._pieces.get(int(token_id))


class HFTokenizer(_Pretrained):
    """A Hugging Face tokenizer.json (GPT-2's byte-level BPE) as it is, with its own special tokens."""

    kind = "hf"
    FILES = HF_FILES

    def __init__(self, files: dict[str, bytes], source: str = "tokenizer") -> None:
        super().__init__(files, source)
        from tokenizers import Tokenizer as RustTokenizer

        try:
            self._tok = RustTokenizer.from_str(files["tokenizer.json"].decode("utf-8"))
        except Exception as e:  # the Rust library raises a bare Exception for bad JSON
            raise DataError(f"{source}/tokenizer.json: not a valid tokenizer.json ({e})") from None
        config = json.loads(files.get("tokenizer_config.json") or b"{}")
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        ids = {}
        for key in ("bos", "eos", "unk", "pad"):
            name = _token_name(config, f"{key}_token", None)
            ids[key] = None if name is None else self._tok.token_to_id(name)
            if name is not None and ids[key] is None:
                raise DataError(f"{source}/tokenizer.json: has no {key} token {name!r} (tokenizer_config.json)")
        if ids["eos"] is None:
            raise DataError(f"{source}/tokenizer_config.json: names no eos_token; a language model needs its end")
        self._skip = {i for i in ids.values() if i is not None}
        # GPT-2 has no padding: a language model's pad id only marks what a loss skips, and aiayn's text windows
        # have none, so any id other than the end serves; it is never skipped nor banned.
        pad = ids["pad"] if ids["pad"] not in (None, ids["eos"]) else (PAD_ID if ids["eos"] != PAD_ID else 1)
        # (the same stand-in as aiayn.interop.hf_config's, so that the tokenizer and the converted model agree)
        bos = ids["bos"] if ids["bos"] is not None else ids["eos"]
        self._ids = SpecialIds(pad=pad, bos=bos, eos=ids["eos"], unk=ids["unk"] if ids["unk"] is not None else bos)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [e.ids for e in self._tok.encode_batch(self._check_texts(texts), add_special_tokens=False)]

    encode_target_batch = encode_batch

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode(self._kept(ids), skip_special_tokens=False)

    def labels(self, ids: Sequence[int]) -> list[str]:
        """One readable string per id: its text alone (spaces as "▁"); a byte of a longer character reads "�"."""
        return [self._tok.decode([int(i)], skip_special_tokens=False).replace(" ", _UNDERLINE) for i in ids]

    def id_to_token(self, token_id: int) -> str | None:
        return self._tok.id_to_token(int(token_id))


KINDS = {"sentencepiece": SentencePieceTokenizer, "hf": HFTokenizer}
FILES = {kind: cls.FILES for kind, cls in KINDS.items()}


def load_pretrained(folder: str | Path, kind: str):
    """The tokenizer of `kind` ("sentencepiece" or "hf") stored in `folder`."""
    if kind not in KINDS:
        raise DataError(f"{folder}: tokenizer kind {kind!r} is not one of {', '.join(KINDS)}")
    return KINDS[kind].load(folder)
