"""Validation: the loss and perplexity over the whole validation set and, for translation, BLEU and chrF of
greedy translations, through the same scoring (aiayn.scoring) and decoding (aiayn.decoding) as inference.
Runs on rank 0, without dropout, under the run's autocast.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from aiayn.config import DecodeConfig, TaskKind, TrainConfig
from aiayn.data.corpus import TokenCorpus
from aiayn.data.loaders import pair_score_batches, text_windows
from aiayn.decoding import detokenize, translate_texts
from aiayn.evaluate import translation_scores
from aiayn.scoring import Sums, score_sums


def loss_pad_id(task: TaskKind, model) -> int:
    """The target id the loss skips: padding for pairs; none for text, whose windows are all real tokens."""
    return model.config.pad_id if task is TaskKind.PAIRS else -1


class Evaluator:
    """valid: the validation corpus (pairs) or token stream (text); valid_pairs: (source, reference) texts for
    BLEU (pairs; empty: loss only). autocast: a factory of the run's autocast context."""

    def __init__(
        self,
        model: torch.nn.Module,
        task: TaskKind,
        valid: TokenCorpus | np.ndarray | None,
        valid_pairs: list[tuple[str, str]],
        tokenizer,
        train: TrainConfig,
        smoothing: float,
        device: torch.device,
        autocast: Callable[[], Any],
    ) -> None:
        self.model, self.task, self.valid, self.valid_pairs = model, task, valid, valid_pairs
        self.tokenizer, self.train, self.smoothing, self.device, self.autocast = (
            tokenizer, train, smoothing, device, autocast
        )  # fmt: skip

    @property
    def has_valid(self) -> bool:
        return self.valid is not None

    def _batches(self):
        if self.task is TaskKind.TEXT:
            block = self.train.block_size
            # Batches of train.max_tokens (at least batch_size rows): fewer, larger forward passes than training's
            # batches, for the same sums (shakespeare-char.yaml, under cProfile: 1.16 s with 12 rows, 0.8 s with 64).
            rows = max(self.train.batch_size, self.train.max_tokens // block)
            return text_windows(self.valid, block, rows, self.device)
        specials = self.model.config.special_ids
        return (batch for _, batch in pair_score_batches(self.valid, self.train.max_tokens, self.device, specials))

    @torch.no_grad()
    def validation_loss(self) -> Sums:
        """Label-smoothed loss, NLL and tokens summed over the whole validation set."""
        self.model.eval()
        with self.autocast():
            return score_sums(self.model, self._batches(), loss_pad_id(self.task, self.model), self.smoothing)

    @torch.no_grad()
    def translate(self, sources: list[str]) -> list[str]:
        """Greedy translations of `sources` in batches of train.max_tokens, under the run's autocast."""
        self.model.eval()
        decode = DecodeConfig(beam_size=1, batch_tokens=max(self.train.max_tokens, 1))
        with self.autocast():
            hyps = translate_texts(self.model, self.tokenizer, sources, decode, self.device)
        return [detokenize(self.tokenizer, h[0].tokens) if h is not None else "" for h in hyps]

    def evaluate(self, step: int, seconds: float) -> dict[str, Any]:
        """The metrics.jsonl entry of one evaluation: loss, nll, ppl, tokens (+ bleu, chrf, ... for pairs)."""
        sums = self.validation_loss()
        entry: dict[str, Any] = {
            "step": step,
            "split": "valid",
            "seconds": round(seconds, 3),
            "loss": sums.mean_loss,
            "nll": sums.mean_nll,
            "ppl": math.exp(min(sums.mean_nll, 50)),
            "tokens": sums.tokens,
        }
        if self.valid_pairs:
            sources = [s for s, _ in self.valid_pairs]
            refs, moses = [r for _, r in self.valid_pairs], getattr(self.tokenizer, "moses_target", "")
            entry.update(translation_scores(self.translate(sources), refs, moses))  # + bleu_tok_lc with data.moses
        return entry
