"""Training a SentencePiece tokenizer for `tokenizer.kind: sentencepiece`: the same files, layout and special ids
as a Marian model's (aiayn.tokenizer_pretrained.SentencePieceTokenizer), so that a model trained with it and one
imported from opus-mt are read the same way.

One unigram SentencePiece model is trained on the source and target texts together and stored as both
`source.spm` and `target.spm`; `vocab.json` maps its pieces to ids in Marian's order: `</s>` 0, `<unk>` 1, the
pieces, `<pad>` last (pad is also the decoder's start token, as in Marian). `vocab_size` counts all of them.
"""

from __future__ import annotations

import io
import json
from collections.abc import Iterable

from aiayn.errors import DataError
from aiayn.tokenizer_pretrained import SentencePieceTokenizer

_SPECIALS = 2  # </s> and <pad>, beside SentencePiece's own <unk>


def _lines(texts: Iterable[str], max_chars: int):
    """The non-blank texts, up to max_chars characters in all (0: all of them)."""
    total = 0
    for text in texts:
        if text.strip():
            yield text
            total += len(text)
            if 0 < max_chars <= total:
                return


def train_sentencepiece(texts: Iterable[str], vocab_size: int, max_train_chars: int = 0) -> SentencePieceTokenizer:
    """A SentencePiece tokenizer of at most `vocab_size` ids trained on `texts` (blank ones skipped); fewer when
    the text has fewer distinct pieces. max_train_chars > 0: the first that many characters."""
    try:
        import sentencepiece
    except ImportError:
        raise DataError("tokenizer.kind 'sentencepiece' needs the sentencepiece package: pip install "
                        "'aiayn[interop]'") from None  # fmt: skip
    if vocab_size < _SPECIALS + 2:
        raise DataError(f"tokenizer.vocab_size {vocab_size}: a SentencePiece tokenizer needs at least 4 ids")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(
            sentence_iterator=_lines(texts, max_train_chars), model_writer=model, vocab_size=vocab_size - _SPECIALS,
            model_type="unigram", character_coverage=1.0, hard_vocab_limit=False, unk_id=0, bos_id=-1, eos_id=-1,
            pad_id=-1, minloglevel=2,
        )  # fmt: skip
    except RuntimeError as e:
        raise DataError(f"SentencePiece training failed: {' '.join(str(e).split())}") from None
    spm = model.getvalue()
    processor = sentencepiece.SentencePieceProcessor()
    processor.LoadFromSerializedProto(spm)
    vocab = {"</s>": 0, "<unk>": 1}
    for i in range(processor.GetPieceSize()):
        if not (processor.IsUnknown(i) or processor.IsControl(i)):
            vocab.setdefault(processor.IdToPiece(i), len(vocab))
    vocab["<pad>"] = len(vocab)
    config = {"tokenizer_class": "MarianTokenizer", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
              "source_lang": None, "trained_by": "aiayn"}  # fmt: skip
    files = {"source.spm": spm, "target.spm": spm, "vocab.json": json.dumps(vocab, ensure_ascii=False).encode(),
             "tokenizer_config.json": json.dumps(config, indent=1).encode()}  # fmt: skip
    return SentencePieceTokenizer(files, source="the trained SentencePiece tokenizer")
