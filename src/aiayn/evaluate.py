"""Translation metrics with sacreBLEU, reported the way papers report them (scores with their signatures)."""

from __future__ import annotations

from typing import Any

from aiayn.errors import UserError


def looks_chinese(texts: list[str], sample: int = 100) -> bool:
    """True when the references contain CJK ideographs: then sacreBLEU's `zh` tokenizer is the right one."""
    return any("\u4e00" <= ch <= "\u9fff" or "\u3400" <= ch <= "\u4dbf" for text in texts[:sample] for ch in text)


def translation_scores(hypotheses: list[str], references: list[str], moses_lang: str = "") -> dict[str, Any]:
    """BLEU (sacreBLEU: 13a tokenizer, or zh for Chinese), chrF, and BLEU on lowercased text (older Multi30k
    papers score lowercased, tokenized text), each score with its sacreBLEU signature; plus exact matches.
    With `moses_lang` (the target language), also `bleu_tok_lc`: tokenized lowercased BLEU as fairseq's scorer
    computes it on Moses-tokenized text (aiayn.tokenizer_moses.tokenized_bleu), with its signature."""
    from sacrebleu.metrics import BLEU, CHRF

    if len(hypotheses) != len(references):
        raise UserError(f"{len(hypotheses)} hypotheses for {len(references)} references: expected one each")
    tokenize = "zh" if looks_chinese(references) else "13a"
    bleu, bleu_lc, chrf = BLEU(tokenize=tokenize), BLEU(tokenize=tokenize, lowercase=True), CHRF()
    refs = [references]
    scores = {
        "bleu": bleu.corpus_score(hypotheses, refs).score,
        "bleu_lc": bleu_lc.corpus_score(hypotheses, refs).score,
        "chrf": chrf.corpus_score(hypotheses, refs).score,
        "exact": sum(h == r for h, r in zip(hypotheses, references, strict=True)) / max(len(references), 1),
        "bleu_signature": str(bleu.get_signature()),
        "bleu_lc_signature": str(bleu_lc.get_signature()),
        "chrf_signature": str(chrf.get_signature()),
    }
    if moses_lang:
        from aiayn.tokenizer_moses import tokenized_bleu

        scores["bleu_tok_lc"], scores["bleu_tok_lc_signature"] = tokenized_bleu(hypotheses, references, moses_lang)
    return scores
