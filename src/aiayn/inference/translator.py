"""A loaded translation model (task kind pairs): translate, n-best, attention, score, perplexity.

    import aiayn
    model = aiayn.load("runs/multi30k-tiny")          # a run folder (its best checkpoint) or a model folder
    model.translate(["A man rides a bike."], beam=4)  # -> ["Ein Mann fährt Fahrrad."]

Decoding sorts the inputs into length buckets, batches them by token count (aiayn.decoding.translate_texts) and
returns results in input order. Scoring goes through aiayn.scoring, the same code as the trainer's validation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch

from aiayn.config import DecodeConfig, TaskKind
from aiayn.data.batching import TokenRows
from aiayn.data.loaders import pair_score_batches
from aiayn.decoding import StopCheck, detokenize, encode_sources, search, translate_texts
from aiayn.errors import RequestError
from aiayn.inference.base import Attention, D, Pretrained, Translation, decode_config, recorded_weights
from aiayn.model.recorder import record_attention
from aiayn.scoring import score_rows


class Translator(Pretrained):
    """A sequence-to-sequence model with its tokenizer (aiayn.model.protocols.Seq2SeqModel)."""

    task = TaskKind.PAIRS

    def translate(
        self,
        texts: str | Sequence[str],
        beam: int = D.beam_size,
        alpha: float = D.alpha,
        max_len: int | None = D.max_len,
        batch_tokens: int = D.batch_tokens,
        progress: Callable[[int], None] | None = None,
        *,
        decode: DecodeConfig | None = None,
        should_stop: StopCheck | None = None,
    ) -> list[str]:
        """Translate each text (the paper's beam 4, alpha 0.6 by default; beam=1 is greedy). Returns one string
        per input, in input order; an empty or blank input gives "". max_len: new tokens per sentence (default
        source length + 50). progress(n) is called after each batch with the number of sentences it held.
        decode: a whole DecodeConfig instead of the separate options; should_stop: checked once per step."""
        decode = decode_config(decode, beam=beam, alpha=alpha, max_len=max_len, batch_tokens=batch_tokens)
        return [n_best[0].text for n_best in self.translate_n_best(texts, progress=progress, decode=decode,
                                                                  should_stop=should_stop)]  # fmt: skip

    def translate_n_best(
        self,
        texts: str | Sequence[str],
        beam: int = D.beam_size,
        alpha: float = D.alpha,
        max_len: int | None = D.max_len,
        n_best: int = D.n_best,
        batch_tokens: int = D.batch_tokens,
        progress: Callable[[int], None] | None = None,
        *,
        decode: DecodeConfig | None = None,
        should_stop: StopCheck | None = None,
    ) -> list[list[Translation]]:
        """`translate` with the n_best best hypotheses of each input, best first, with scores."""
        decode = decode_config(decode, beam=beam, alpha=alpha, max_len=max_len, n_best=n_best,
                               batch_tokens=batch_tokens)  # fmt: skip
        texts = [texts] if isinstance(texts, str) else list(texts)
        hyps = translate_texts(self.model, self.tokenizer, texts, decode, self.device, progress, should_stop)
        return [
            [Translation(detokenize(self.tokenizer, h.tokens), h.score, h.finished) for h in row]
            if row is not None else [Translation("", 0.0, True)]
            for row in hyps
        ]  # fmt: skip

    @torch.no_grad()
    def walk_inputs(
        self, text: str, beam: int = 1, alpha: float = D.alpha, max_len: int | None = None
    ) -> tuple[list[int], list[int], list[str], str]:
        """Translate `text` and return what a teacher-forced pass over the result needs: (source ids with EOS,
        decoder input ids starting with BOS, the label of the token each decoder position produced, the
        translation). Each decoder position produces the next token: <bos> y1 .. yn produce y1 .. yn <eos>; an
        output cut at the length limit has no <eos>, so its last position (which produced nothing kept) is left
        out."""
        decode = DecodeConfig.of(beam=beam, alpha=alpha, max_len=max_len)
        ids = self.model.config.special_ids
        source = encode_sources(self.tokenizer, [text], self.model.config.max_len, ids.eos)[0]
        if source is None:
            raise RequestError("text: empty; give a sentence to translate")
        hyp = search(self.model, torch.tensor([source], device=self.device), decode)[0][0]
        tokens = hyp.tokens
        decoder_in = [ids.bos] + (tokens if hyp.finished else tokens[:-1])
        output = self.tokenizer.labels(tokens) + (["<eos>"] if hyp.finished else [])
        return source, decoder_in, output, detokenize(self.tokenizer, tokens)

    @torch.no_grad()
    def attention(self, text: str, beam: int = 1, alpha: float = D.alpha, max_len: int | None = None) -> Attention:
        """Translate `text` (greedy by default) and record every attention weight of the model reading the source
        and its translation. The weights are the ones the model's forward pass computes (the readable attention
        path), not a re-computation."""
        source, decoder_in, output, translation = self.walk_inputs(text, beam, alpha, max_len)
        with record_attention(self.model) as recorder:
            self.model(torch.tensor([source], device=self.device), torch.tensor([decoder_in], device=self.device))
        labels = self.tokenizer.labels
        return Attention(labels(source), labels(decoder_in), output, translation, recorded_weights(recorder))

    @torch.no_grad()
    def score(self, texts: str | Sequence[str], sources: str | Sequence[str] | None = None) -> list[float]:
        """Log-probability (natural log) of each target text given its source, EOS included."""
        if sources is None:
            raise RequestError("a translation model scores a target given its source: pass sources=[...]")
        texts = [texts] if isinstance(texts, str) else list(texts)
        sources = [sources] if isinstance(sources, str) else list(sources)
        return [-nll for nll, _ in self._pair_nll(sources, texts)]

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> dict[str, float]:
        """Target-side per-token negative log-likelihood and perplexity of texts given sources, EOS included."""
        if sources is None:
            raise RequestError("target-side perplexity of a translation model needs the sources")
        pairs = self._pair_nll(list(sources), list(texts))
        return _perplexity(sum(p[0] for p in pairs), sum(p[1] for p in pairs))

    def _pair_nll(self, sources: list[str], targets: list[str], batch_tokens: int = 8192) -> list[tuple[float, int]]:
        """(NLL, target tokens) per pair, through aiayn.scoring in batches of about batch_tokens padded tokens."""
        if len(sources) != len(targets):
            raise RequestError(f"{len(sources)} sources for {len(targets)} targets: expected one each")
        limit, ids = self.model.config.max_len, self.model.config.special_ids
        encode = self.tokenizer.encode_batch
        rows = TokenRows([x[: limit - 1] for x in encode(sources)], [x[: limit - 1] for x in encode(targets)])
        out: list[tuple[float, int]] = [(0.0, 0)] * len(sources)
        if not sources:
            return out
        for indices, (inputs, target) in pair_score_batches(rows, batch_tokens, self.device, ids):
            _, nll, tokens = score_rows(self.model, inputs, target, ids.pad)
            for i, n, t in zip(indices.tolist(), nll.tolist(), tokens.tolist(), strict=True):
                out[i] = (n, t)
        return out


def _perplexity(nll: float, tokens: int) -> dict[str, float]:
    if tokens == 0:
        raise RequestError("no tokens to score: the text is empty")
    mean = nll / tokens
    return {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": tokens}


__all__ = ["Translator"]
