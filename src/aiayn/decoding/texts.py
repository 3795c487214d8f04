"""Texts in, texts out: tokenize sources, batch them by token count, search, detokenize. The one
implementation behind the trainer's validation BLEU, `Translator.translate` and the CLI.

Shapes: B batch, S source length.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence

import torch

from aiayn.config import DecodeConfig
from aiayn.data.batching import TokenRows, collate, token_batches
from aiayn.decoding.search import Hypothesis, StopCheck, search


def encode_sources(tokenizer, texts: Sequence[str], max_len: int, eos_id: int) -> list[list[int] | None]:
    """Token ids + EOS per text (as in training), None for blank texts; a text longer than the model's max_len
    positions is cut, with one warning for all of them."""
    sources: list[list[int] | None] = []
    cut = 0
    for text, ids in zip(texts, tokenizer.encode_batch(list(texts)), strict=True):
        if not text.strip() or not ids:
            sources.append(None)
            continue
        if len(ids) + 1 > max_len:
            ids, cut = ids[: max_len - 1], cut + 1
        sources.append(ids + [eos_id])
    if cut:
        warnings.warn(f"{cut} input(s) longer than the model's {max_len} positions were cut", stacklevel=3)
    return sources


def source_batches(
    sources: Sequence[list[int] | None], batch_tokens: int, beam_size: int, device: torch.device, specials
):
    """Yield (indices into sources, padded src (B, S)) for the non-blank sources: batches of similar lengths
    with about batch_tokens source tokens x beam each (aiayn.data.batching.token_batches)."""
    kept = [i for i, s in enumerate(sources) if s is not None]
    if not kept:
        return
    rows = TokenRows([sources[i][:-1] for i in kept])  # collate appends the EOS again
    for batch in token_batches(rows.src_lengths, None, max(batch_tokens // beam_size, 1), 0, 0):
        src, _ = collate(rows, batch, device, specials)  # (B, S)
        yield [kept[i] for i in batch.tolist()], src


def translate_texts(
    model,
    tokenizer,
    texts: Sequence[str],
    decode: DecodeConfig,
    device: torch.device,
    progress: Callable[[int], None] | None = None,
    should_stop: StopCheck | None = None,
) -> list[list[Hypothesis] | None]:
    """The n-best hypotheses of each text under `decode`, in input order; None for a blank text."""
    ids = model.config.special_ids
    sources = encode_sources(tokenizer, texts, model.config.max_len, ids.eos)
    out: list[list[Hypothesis] | None] = [None] * len(texts)
    for chunk, src in source_batches(sources, decode.batch_tokens, decode.beam_size, device, ids):
        for i, hyps in zip(chunk, search(model, src, decode, should_stop), strict=True):
            out[i] = hyps
        if progress is not None:
            progress(len(chunk))
    return out


def detokenize(tokenizer, tokens: list[int]) -> str:
    """Text of output ids on one line: a generated line break would shift every later line of a file."""
    return " ".join(tokenizer.decode(tokens).splitlines())


__all__ = ["detokenize", "encode_sources", "source_batches", "translate_texts"]
