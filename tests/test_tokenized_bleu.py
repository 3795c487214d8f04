"""Tokenized lowercased BLEU as fairseq scores older Multi30k setups (aiayn.tokenizer_moses, `aiayn evaluate
--moses-lang`): Moses tokenization by sacremoses, then corpus BLEU-4 without smoothing over whitespace tokens,
checked against a BLEU written out here from its definition (Papineni et al., 2002)."""

import json
import math
from collections import Counter

import pytest
from test_inference import TEXT, run_cli

import aiayn
from aiayn.evaluate import translation_scores
from aiayn.tokenizer_moses import tokenize, tokenized_bleu

pytest.importorskip("sacremoses")


def reference_bleu(hyps: list[str], refs: list[str]) -> float:
    """Corpus BLEU-4 over whitespace tokens: clipped n-gram precisions summed over the corpus, geometric mean,
    brevity penalty exp(1 - r / c) when the hypotheses are shorter; no smoothing."""
    matched, total, hyp_len, ref_len = [0] * 4, [0] * 4, 0, 0
    for h, r in zip(hyps, refs, strict=True):
        h, r = h.split(), r.split()
        hyp_len, ref_len = hyp_len + len(h), ref_len + len(r)
        for n in range(1, 5):
            hc = Counter(tuple(h[i : i + n]) for i in range(len(h) - n + 1))
            rc = Counter(tuple(r[i : i + n]) for i in range(len(r) - n + 1))
            matched[n - 1] += sum(min(c, rc[g]) for g, c in hc.items())
            total[n - 1] += max(len(h) - n + 1, 0)
    log_p = sum(math.log(m / t) for m, t in zip(matched, total, strict=True)) / 4
    bp = 1.0 if hyp_len > ref_len else math.exp(1 - ref_len / hyp_len)
    return 100 * bp * math.exp(log_p)


HYPS = ["Ein Mann (im blauen Hemd) schläft auf einer Bank.", "Zwei Hunde rennen über die Wiese, während es regnet.",
        "Eine Frau liest ein Buch im Park."]  # fmt: skip
REFS = ["Ein Mann im blauen Hemd schläft auf der Bank.", "Zwei Hunde laufen über eine Wiese, während es regnet.",
        "Eine Frau liest im Park ein Buch."]  # fmt: skip


def test_moses_tokenization_splits_punctuation_and_lowercases():
    assert tokenize("Ein Mann (im Hemd).", "de", lowercase=True) == "ein mann ( im hemd ) ."
    assert tokenize("Zwei Hunde, 3,5 km.", "de") == "Zwei Hunde , 3,5 km ."


def test_tokenized_bleu_is_corpus_bleu_over_moses_tokens_lowercased():
    score, signature = tokenized_bleu(HYPS, REFS, "de")
    tokenized = [tokenize(t, "de", lowercase=True) for t in HYPS], [tokenize(t, "de", lowercase=True) for t in REFS]
    assert score == pytest.approx(reference_bleu(*tokenized), rel=1e-9)
    assert 0 < score < 100
    assert signature.startswith("pre:moses-de+lc|nrefs:1|case:mixed|eff:no|tok:none|smooth:none|version:")
    assert tokenized_bleu([h.upper() for h in HYPS], REFS, "de")[0] == pytest.approx(score)  # case does not count
    scores = translation_scores(HYPS, REFS, moses_lang="de")
    assert scores["bleu_tok_lc"] == score and scores["bleu_tok_lc_signature"] == signature
    assert "bleu_tok_lc" not in translation_scores(HYPS, REFS)


def test_cli_evaluate_reports_it_beside_sacrebleu(model_folders, tmp_path):
    seq2seq = model_folders / "s2s"
    src, ref = tmp_path / "src", tmp_path / "ref"
    src.write_text("\n".join(TEXT[:6]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(TEXT[6:12]) + "\n", encoding="utf-8")
    args = ["evaluate", "--model", seq2seq, "--src", src, "--ref", ref, "--beam", 2]
    code, out, err = run_cli(*args, "--moses-lang", "en", "--json")
    assert code == 0, err
    result = json.loads(out)
    hyps = aiayn.load(seq2seq).translate(TEXT[:6], beam=2)
    assert (result["bleu_tok_lc"], result["bleu_tok_lc_signature"]) == tokenized_bleu(hyps, TEXT[6:12], "en")
    code, out, err = run_cli(*args, "--moses-lang", "en")
    assert code == 0, err
    assert "BLEU tokenized lowercased" in out and "pre:moses-en+lc|" in out
