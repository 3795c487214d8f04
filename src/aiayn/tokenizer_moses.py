"""Moses tokenization and lowercasing (sacremoses), the preprocessing of older Multi30k and fairseq setups, and the
score those setups report.

Published small-data results (fairseq's Multi30k recipes, say) train on lowercased, Moses-tokenized text and
score tokenized lowercased BLEU: corpus BLEU over the whitespace tokens of Moses-tokenized, lowercased hypotheses
and references, with no further tokenization and no smoothing, which is what fairseq's own scorer computes.
`tokenized_bleu` is that score (`aiayn evaluate --moses-lang`).

sacremoses is imported only here, and only when asked for: `pip install sacremoses` (in aiayn's `interop` extra).
"""

from __future__ import annotations

import functools
from typing import Any

from aiayn.errors import UserError

__all__ = ["tokenize", "tokenized_bleu"]


@functools.cache
def _moses(lang: str) -> Any:
    try:
        import sacremoses
    except ImportError:
        raise UserError("Moses tokenization needs sacremoses: pip install sacremoses") from None
    return sacremoses.MosesTokenizer(lang=lang)


def tokenize(text: str, lang: str, lowercase: bool = False) -> str:
    """`text` Moses-tokenized by `lang`'s rules (tokens joined by single spaces; no XML escaping), then lowercased
    when asked: "Ein Mann (im Hemd)." -> "ein mann ( im hemd ) ." with lowercase."""
    out = _moses(lang).tokenize(text, escape=False, return_str=True)
    return out.lower() if lowercase else out


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
