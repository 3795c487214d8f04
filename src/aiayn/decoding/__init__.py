"""Decoding with the KV cache: greedy, beam search and sampling, for any model that implements the protocols
of aiayn.model.protocols (they use nothing else). `search(model, src, DecodeConfig)` is greedy for beam size 1
and beam search otherwise; `translate_texts` goes from texts to hypotheses; every function takes an optional
cancellation check `should_stop`, called once per step.
"""

from __future__ import annotations

from aiayn.config import EXTRA_LENGTH, DecodeConfig
from aiayn.decoding.sampling import filter_logits, sample
from aiayn.decoding.search import (
    NEG,
    TOP_K_BLOCK,
    BeamState,
    Cancelled,
    Hypothesis,
    StopCheck,
    beam_search,
    block_topk,
    greedy,
    greedy_search,
    length_limits,
    length_penalty,
    search,
)
from aiayn.decoding.texts import detokenize, encode_sources, source_batches, translate_texts

top_k = block_topk  # the name before block_topk (it shadowed sample's top_k parameter); kept for users' scripts

__all__ = [
    "EXTRA_LENGTH", "NEG", "TOP_K_BLOCK", "BeamState", "Cancelled", "DecodeConfig", "Hypothesis", "StopCheck",
    "beam_search", "block_topk", "check_options", "detokenize", "encode_sources", "filter_logits", "greedy",
    "greedy_search", "length_limits", "length_penalty", "sample", "search", "source_batches", "top_k",
    "translate_texts",
]  # fmt: skip


def check_options(**options) -> None:
    """Raise RequestError naming the first invalid decoding option and its allowed range (DecodeConfig checks
    them; kept for users' scripts)."""
    DecodeConfig.of(**options)
