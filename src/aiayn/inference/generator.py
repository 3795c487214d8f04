"""A loaded language model (task kind text): generate, attention, score, perplexity.

    model = aiayn.load("runs/shakespeare-char")
    model.generate("ROMEO:", max_new_tokens=200, temperature=0.8, seed=1)

Sampling is aiayn.decoding.sample with the KV cache; scoring goes through aiayn.scoring and
aiayn.data.loaders.text_windows, the same code as the trainer's validation.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from aiayn.config import DecodeConfig, TaskKind
from aiayn.data.loaders import text_windows
from aiayn.decoding import StopCheck, sample
from aiayn.errors import RequestError
from aiayn.inference.base import Attention, D, Pretrained, decode_config, recorded_weights
from aiayn.inference.translator import _perplexity
from aiayn.model.recorder import record_attention
from aiayn.scoring import score_sums

WINDOWS_PER_BATCH = 32  # rows of max_len tokens scored at once


class Generator(Pretrained):
    """A causal language model with its tokenizer (aiayn.model.protocols.CausalLM)."""

    task = TaskKind.TEXT

    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = D.temperature,
        top_k: int = D.top_k,
        top_p: float = D.top_p,
        seed: int | None = D.seed,
        *,
        decode: DecodeConfig | None = None,
        should_stop: StopCheck | None = None,
    ) -> str:
        """Continue `prompt`; returns the continuation only. Temperature 0 is greedy. decode: a whole
        DecodeConfig instead of the separate options; should_stop: checked once per step."""
        decode = decode_config(decode, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        return self.generate_batch([prompt], max_new_tokens, decode=decode, should_stop=should_stop)[0]

    def generate_batch(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 200,
        temperature: float = D.temperature,
        top_k: int = D.top_k,
        top_p: float = D.top_p,
        seed: int | None = D.seed,
        *,
        decode: DecodeConfig | None = None,
        should_stop: StopCheck | None = None,
    ) -> list[str]:
        """`generate` for several prompts of the same token length at once (num_samples copies of one prompt)."""
        decode = decode_config(decode, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed)
        if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise RequestError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        ids = self.tokenizer.encode_batch(list(prompts))
        if len({len(x) for x in ids}) > 1:
            raise RequestError("generate_batch needs prompts of one token length; call generate for each")
        if not ids[0]:
            raise RequestError("the prompt is empty: give at least one character to continue")
        generator = torch.Generator(self.device)
        if decode.seed is not None:
            generator.manual_seed(decode.seed)
        else:
            generator.seed()
        prompt = torch.tensor(ids, device=self.device)  # (B, P)
        out = sample(self.model, prompt, max_new_tokens, decode.temperature, decode.top_k, decode.top_p, generator,
                     slide=True, should_stop=should_stop)  # fmt: skip
        return [self.tokenizer.decode(row) for row in out]

    def lm_inputs(self, text: str) -> list[int]:
        """The token ids of `text`, its last max_len tokens; RequestError for an empty text."""
        ids = self.tokenizer.encode(text)[-self.model.config.max_len :]
        if not ids:
            raise RequestError("text: empty; give at least one character")
        return ids

    @torch.no_grad()
    def attention(self, text: str, beam: int = 1, alpha: float = D.alpha, max_len: int | None = None) -> Attention:
        """Record every attention weight of the model reading `text` (beam, alpha, max_len: unused, as for a
        translation model's signature)."""
        ids = self.lm_inputs(text)
        with record_attention(self.model) as recorder:
            logits = self.model(torch.tensor([ids], device=self.device))  # (1, T, V)
        predicted = logits[0].argmax(-1).tolist()
        labels = self.tokenizer.labels
        return Attention([], labels(ids), labels(predicted), "", recorded_weights(recorder))

    @torch.no_grad()
    def score(self, texts: str | Sequence[str], sources: str | Sequence[str] | None = None) -> list[float]:
        """Log-probability (natural log) of each text's tokens after its first, each window of max_len tokens
        scored from its start."""
        if sources is not None:
            raise RequestError("a language model scores texts alone: leave out sources")
        texts = [texts] if isinstance(texts, str) else list(texts)
        return [-self._nll(self.tokenizer.encode(t), self.model.config.max_len, whole=True)[0] for t in texts]

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> dict[str, float]:
        """Per-token negative log-likelihood and perplexity. `texts` are lines of one text, read as the trainer
        reads its validation text (each line + newline, one stream, windows of train.block_size)."""
        if sources is not None:
            raise RequestError("a language model's perplexity needs no sources")
        stream: list[int] = []
        for ids in self.tokenizer.encode_batch([t + "\n" for t in texts]):
            stream += ids
        block = min(int(self.config.get("train", {}).get("block_size") or self.model.config.max_len),
                    self.model.config.max_len)  # fmt: skip
        # A text shorter than one window (a few lines for GPT-2's 1,024 positions) is scored whole.
        return _perplexity(*self._nll(stream, block, whole=len(stream) <= block))

    def _nll(self, stream: list[int], block: int, whole: bool = False) -> tuple[float, int]:
        """(NLL, tokens) of a token stream in windows of block + 1 tokens (aiayn.data.loaders.text_windows)."""
        windows = text_windows(np.asarray(stream, dtype=np.int64), block, WINDOWS_PER_BATCH, self.device, whole)
        sums = score_sums(self.model, windows, pad_id=-1)  # every token of a text counts, whatever its id
        return sums.nll, sums.tokens
