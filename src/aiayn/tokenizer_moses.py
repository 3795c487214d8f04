"""Moses tokenization and lowercasing (sacremoses), the preprocessing of older Multi30k and fairseq setups, and the
score those setups report.

Published small-data results (fairseq's Multi30k recipes, say) train on lowercased, Moses-tokenized text and
score tokenized lowercased BLEU: corpus BLEU over the whitespace tokens of Moses-tokenized, lowercased hypotheses
and references, with no further tokenization and no smoothing, which is what fairseq's own scorer computes.
`tokenized_bleu` is that score (`aiayn evaluate --moses-lang`). `PreprocessedText` is the preprocessing as part
of a tokenizer (`data.moses`, `data.lowercase`): sources are tokenized by the source language's rules, targets by
the target's, outputs detokenized; training, validation, `aiayn.load` and every command then see the same text.

sacremoses is imported only here, and only when asked for: `pip install sacremoses` (in aiayn's `interop` extra).
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from typing import Any

from aiayn.config.run import moses_langs
from aiayn.errors import UserError

__all__ = ["PreprocessedText", "detokenize", "preprocessed", "tokenize", "tokenized_bleu"]


@functools.cache
def _moses(lang: str, detok: bool = False) -> Any:
    try:
        import sacremoses
    except ImportError:
        raise UserError("Moses tokenization needs sacremoses: pip install sacremoses") from None
    return sacremoses.MosesDetokenizer(lang=lang) if detok else sacremoses.MosesTokenizer(lang=lang)


def tokenize(text: str, lang: str, lowercase: bool = False) -> str:
    """`text` Moses-tokenized by `lang`'s rules (tokens joined by single spaces; no XML escaping), then lowercased
    when asked: "Ein Mann (im Hemd)." -> "ein mann ( im hemd ) ." with lowercase."""
    out = _moses(lang).tokenize(text, escape=False, return_str=True)
    return out.lower() if lowercase else out


def detokenize(text: str, lang: str) -> str:
    """Moses's detokenizer, by `lang`'s rules: spaces before punctuation and inside brackets go."""
    return _moses(lang, detok=True).detokenize(text.split())


def tokenized_bleu(hypotheses: list[str], references: list[str], lang: str) -> tuple[float, str]:
    """(tokenized lowercased BLEU, its signature): both sides Moses-tokenized by `lang`'s rules and lowercased,
    then corpus BLEU-4 over their whitespace tokens with no smoothing (sacreBLEU with tokenize none, which equals
    fairseq's scorer and multi-bleu.perl on such text)."""
    from sacrebleu.metrics import BLEU

    bleu = BLEU(tokenize="none", smooth_method="none", force=True)
    hyps = [tokenize(h, lang, lowercase=True) for h in hypotheses]
    refs = [[tokenize(r, lang, lowercase=True) for r in references]]
    score = bleu.corpus_score(hyps, refs).score
    return score, f"pre:moses-{lang}+lc|{bleu.get_signature()}"


class PreprocessedText:
    """A tokenizer that sees text Moses-tokenized (`langs` = (source, target); None: not) and/or lowercased:
    encode / encode_batch / tokens take sources, encode_target_batch targets, decode / decode_batch give
    detokenized target text. Everything else (vocab_size, special_ids, labels, save, ...) is the wrapped
    tokenizer's; its fingerprint also names the preprocessing, so caches of other preprocessing never mix."""

    def __init__(self, inner, langs: tuple[str, str] | None, lowercase: bool) -> None:
        self.inner, self.langs, self.lowercase = inner, langs, lowercase

    @property
    def moses_target(self) -> str:
        """The target language's code ("" without Moses): the rules `aiayn evaluate` scores tokenized BLEU by."""
        return self.langs[1] if self.langs else ""

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (copy, pickle): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    def __repr__(self) -> str:
        return f"PreprocessedText({self.inner!r}, moses={self.langs}, lowercase={self.lowercase})"

    def source(self, text: str) -> str:
        """A source text as the model was trained to read it."""
        text = tokenize(text, self.langs[0]) if self.langs else text
        return text.lower() if self.lowercase else text

    def target(self, text: str) -> str:
        """A target text as the model was trained to write it."""
        text = tokenize(text, self.langs[1]) if self.langs else text
        return text.lower() if self.lowercase else text

    def fingerprint(self) -> str:
        return f"{self.inner.fingerprint()}+moses:{'-'.join(self.langs or ())}+lc:{int(self.lowercase)}"

    def encode(self, text: str) -> list[int]:
        return self.inner.encode(self.source(text))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self.inner.encode_batch([self.source(t) for t in texts])

    def encode_target_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encode = getattr(self.inner, "encode_target_batch", self.inner.encode_batch)
        return encode([self.target(t) for t in texts])

    def tokens(self, text: str) -> list[str]:
        return self.inner.tokens(self.source(text))

    def decode(self, ids: Sequence[int]) -> str:
        text = self.inner.decode(ids)
        return detokenize(text, self.langs[1]) if self.langs else text

    def decode_batch(self, batch: Iterable[Sequence[int]]) -> list[str]:
        return [self.decode(ids) for ids in batch]


def preprocessed(tokenizer, moses: str, lowercase: bool):
    """`tokenizer` seeing text as `data.moses` ("en-de" or "") and `data.lowercase` say; itself when neither."""
    if not moses and not lowercase:
        return tokenizer
    return PreprocessedText(tokenizer, moses_langs(moses) if moses else None, lowercase)
