"""Use a trained model from Python: `aiayn.load(DIR)` returns a `Pretrained` that translates, generates and scores.

    import aiayn
    model = aiayn.load("runs/multi30k-tiny")          # a run folder (its best checkpoint) or a checkpoint folder
    model.translate(["A man rides a bike."], beam=4)  # -> ["Ein Mann fährt Fahrrad."]

Loading reads `config.yaml`, `tokenizer.json` and `model.safetensors` (never a pickle), after checking the folder's
sha256 manifest. Decoding sorts the inputs by length, batches them by token count and returns results in input
order.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, ModelConfig
from aiayn.decoding import beam_search, check_options, greedy_search, sample
from aiayn.model import build_model, compile_decoding, inference_layout
from aiayn.model.attention import record_attention
from aiayn.tokenizer import Tokenizer
from aiayn.train import checkpoint as ckpt


@dataclass(frozen=True)
class Translation:
    """One n-best entry: the text, its score (log-probability / length penalty) and whether it ended with EOS
    (False: it was cut at the length limit)."""

    text: str
    score: float
    finished: bool


@dataclass(frozen=True)
class Attention:
    """The attention weights of one input, recorded from the model's own forward pass (`record_attention`).

    source: labels of the encoder's input tokens (seq2seq; [] for a language model). target: labels of the
    decoder's input positions (seq2seq: <bos> and the output tokens; LM: the text's tokens). output: the token
    each decoder position produced (seq2seq: the output tokens, then <eos> when the output ended; LM: the most
    probable next token). text: the translation ("" for a language model). weights: module name -> (H, rows,
    cols) float32 array, e.g. "encoder.layers.0.self_attn" (S x S), "decoder.layers.0.self_attn" (T x T),
    "decoder.layers.0.cross_attn" (T x S).
    """

    source: list[str]
    target: list[str]
    output: list[str]
    text: str
    weights: dict[str, np.ndarray]


def pick_device(device: str | torch.device | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def load(path: str | Path, device: str | torch.device | None = "auto", compile: bool = False) -> Pretrained:
    """A model folder -> Pretrained. CheckpointError (one line naming the folder and the problem) when the folder
    is missing or incomplete, its files do not match their manifest, the tokenizer does not belong to the weights,
    or the weights do not match the config.

    compile=True compiles the decoding step (`aiayn.model.compile_decoding`): faster decoding after a one-time
    compilation at the first batch.
    """
    folder = ckpt.resolve_model_dir(path)
    ckpt.verify(folder)
    try:
        config = yaml.safe_load((folder / "config.yaml").read_text(encoding="utf-8"))
        model_config = ModelConfig.from_dict(config["model"])
    except (OSError, yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise ckpt.CheckpointError(f"{folder / 'config.yaml'}: not a usable model config ({e})") from None
    try:
        tokenizer = Tokenizer.load(folder / "tokenizer.json")
    except (OSError, ValueError) as e:
        raise ckpt.CheckpointError(f"{folder / 'tokenizer.json'}: cannot load the tokenizer ({e})") from None
    if tokenizer.vocab_size != model_config.vocab_size:
        raise ckpt.CheckpointError(
            f"{folder}: tokenizer.json has {tokenizer.vocab_size:,} tokens but the weights were made for "
            f"model.vocab_size {model_config.vocab_size:,}: the tokenizer does not belong to this model"
        )
    model = build_model(model_config)
    ckpt.load_weights(model, folder)
    model = model.to(pick_device(device)).eval()
    if next(model.parameters()).device.type == "cpu":
        inference_layout(model)  # faster CPU decoding; same values
    if compile:
        compile_decoding(model)
    return Pretrained(model, tokenizer, config, folder)


class Pretrained:
    """A trained model with its tokenizer: `.translate`, `.generate`, `.score`, `.perplexity`.

    Attributes: `model` (Transformer or LanguageModel, in eval mode), `tokenizer`, `config` (the run's resolved
    config as a dict: model, data, tokenizer, optim, train), `folder` (the checkpoint folder it came from).
    """

    def __init__(self, model: torch.nn.Module, tokenizer: Tokenizer, config: dict[str, Any], folder: Path) -> None:
        self.model, self.tokenizer, self.config, self.folder = model, tokenizer, config, folder

    @property
    def is_lm(self) -> bool:
        return self.model.config.arch == "lm"

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        c = self.model.config
        return f"Pretrained({c.arch}, d_model={c.d_model}, vocab={c.vocab_size}, folder={str(self.folder)!r})"

    # ------------------------------------------------------------------------------------------ translation
    def translate(
        self,
        texts: str | Sequence[str],
        beam: int = 4,
        alpha: float = 0.6,
        max_len: int | None = None,
        batch_tokens: int = 4096,
        progress: Callable[[int], None] | None = None,
    ) -> list[str]:
        """Translate each text (the paper's beam 4, alpha 0.6 by default; beam=1 is greedy). Returns one string
        per input, in input order; an empty or blank input gives "". max_len: new tokens per sentence (default
        source length + 50). progress(n) is called after each batch with the number of sentences it held."""
        return [
            n_best[0].text for n_best in self.translate_n_best(texts, beam, alpha, max_len, 1, batch_tokens, progress)
        ]

    def translate_n_best(
        self,
        texts: str | Sequence[str],
        beam: int = 4,
        alpha: float = 0.6,
        max_len: int | None = None,
        n_best: int = 1,
        batch_tokens: int = 4096,
        progress: Callable[[int], None] | None = None,
    ) -> list[list[Translation]]:
        """`translate` with the n_best best hypotheses of each input, best first, with scores."""
        self._need("seq2seq", "translate")
        texts = [texts] if isinstance(texts, str) else list(texts)
        check_options(beam_size=beam, alpha=alpha, n_best=n_best, max_len=max_len)
        if not isinstance(batch_tokens, int) or batch_tokens < 1:
            raise ValueError(f"batch_tokens={batch_tokens!r} must be an integer >= 1")
        sources = self._sources(texts)
        out: list[list[Translation]] = [[Translation("", 0.0, True)] for _ in texts]
        for chunk, src in self._batches(sources, batch_tokens, beam):
            if beam == 1:
                hyps = [[h] for h in greedy_search(self.model, src, max_len)]
            else:
                hyps = beam_search(self.model, src, beam_size=beam, alpha=alpha, max_len=max_len, n_best=n_best)
            for i, row in zip(chunk, hyps, strict=True):
                out[i] = [Translation(self._text(h.tokens), h.score, h.finished) for h in row]
            if progress is not None:
                progress(len(chunk))
        return out

    @torch.no_grad()
    def attention(self, text: str, beam: int = 1, alpha: float = 0.6, max_len: int | None = None) -> Attention:
        """Translate `text` (greedy by default) and record every attention weight of the model reading the source
        and its translation; for a language model, of reading `text`. The weights are the ones the model's
        forward pass computes (the readable attention path), not a re-computation."""
        if self.is_lm:
            ids = self.lm_inputs(text)
            with record_attention(self.model) as recorder:
                logits = self.model(torch.tensor([ids], device=self.device))  # (1, T, V)
            predicted = logits[0].argmax(-1).tolist()
            return Attention([], self.tokenizer.labels(ids), self.tokenizer.labels(predicted), "", _weights(recorder))
        source, decoder_in, output, translation = self.walk_inputs(text, beam, alpha, max_len)
        with record_attention(self.model) as recorder:
            self.model(torch.tensor([source], device=self.device), torch.tensor([decoder_in], device=self.device))
        return Attention(
            self.tokenizer.labels(source), self.tokenizer.labels(decoder_in), output, translation, _weights(recorder)
        )

    def lm_inputs(self, text: str) -> list[int]:
        """A language model's token ids of `text`, its last max_len tokens; ValueError for an empty text."""
        self._need("lm", "read a text")
        ids = self.tokenizer.encode(text)[-self.model.config.max_len :]
        if not ids:
            raise ValueError("text: empty; give at least one character")
        return ids

    @torch.no_grad()
    def walk_inputs(
        self, text: str, beam: int = 1, alpha: float = 0.6, max_len: int | None = None
    ) -> tuple[list[int], list[int], list[str], str]:
        """Translate `text` and return what a teacher-forced pass over the result needs: (source ids with EOS,
        decoder input ids starting with BOS, the label of the token each decoder position produced, the
        translation). Each decoder position produces the next token: <bos> y1 .. yn produce y1 .. yn <eos>; an
        output cut at the length limit has no <eos>, so its last position (which produced nothing kept) is left
        out."""
        self._need("seq2seq", "translate")
        source = self._sources([text])[0]
        if source is None:
            raise ValueError("text: empty; give a sentence to translate")
        src = torch.tensor([source], device=self.device)  # (1, S)
        check_options(beam_size=beam, alpha=alpha, max_len=max_len)
        if beam == 1:
            hyp = greedy_search(self.model, src, max_len)[0]
        else:
            hyp = beam_search(self.model, src, beam_size=beam, alpha=alpha, max_len=max_len)[0][0]
        tokens = hyp.tokens
        decoder_in = [BOS_ID] + (tokens if hyp.finished else tokens[:-1])
        output = self.tokenizer.labels(tokens) + (["<eos>"] if hyp.finished else [])
        return source, decoder_in, output, self._text(tokens)

    def _sources(self, texts: list[str]) -> list[list[int] | None]:
        """Token ids + EOS per text (as in training), None for blank texts; long ones are cut to the model's
        positions with a warning."""
        limit = self.model.config.max_len
        encoded = self.tokenizer.encode_batch(texts)
        sources: list[list[int] | None] = []
        cut = 0
        for text, ids in zip(texts, encoded, strict=True):
            if not text.strip() or not ids:
                sources.append(None)
                continue
            if len(ids) + 1 > limit:
                ids, cut = ids[: limit - 1], cut + 1
            sources.append(ids + [EOS_ID])
        if cut:
            warnings.warn(f"{cut} input(s) longer than the model's {limit} positions were cut", stacklevel=3)
        return sources

    def _batches(self, sources: list[list[int] | None], batch_tokens: int, beam: int):
        """Yield (indices, padded src (B, S)) with sources sorted by length and about batch_tokens source tokens
        (times the beam) per batch."""
        order = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: len(sources[i]))
        start = 0
        while start < len(order):
            end = start + 1
            # Sorted ascending: the batch's longest source is the last one taken.
            while end < len(order) and (end + 1 - start) * len(sources[order[end]]) * beam <= batch_tokens:
                end += 1
            chunk = order[start:end]
            width = len(sources[chunk[-1]])
            src = torch.full((len(chunk), width), PAD_ID, dtype=torch.long)  # (B, S) right-padded
            for row, i in enumerate(chunk):
                src[row, : len(sources[i])] = torch.tensor(sources[i])
            yield chunk, src.to(self.device)
            start = end

    def _text(self, tokens: list[int]) -> str:
        # One output line per input line: a generated line break would shift every later line of a file.
        return " ".join(self.tokenizer.decode(tokens).splitlines())

    # ----------------------------------------------------------------------------------------- generation
    def generate(
        self,
        prompt: str,
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> str:
        """Continue `prompt` with a language model; returns the continuation only. Temperature 0 is greedy."""
        return self.generate_batch([prompt], max_new_tokens, temperature, top_k, top_p, seed)[0]

    def generate_batch(
        self,
        prompts: Sequence[str],
        max_new_tokens: int = 200,
        temperature: float = 1.0,
        top_k: int = 0,
        top_p: float = 1.0,
        seed: int | None = None,
    ) -> list[str]:
        """`generate` for several prompts of the same token length at once (num_samples copies of one prompt)."""
        self._need("lm", "generate")
        check_options(temperature=temperature, top_k=top_k, top_p=top_p)
        if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={max_new_tokens!r} must be an integer >= 0")
        ids = self.tokenizer.encode_batch(list(prompts))
        if len({len(x) for x in ids}) > 1:
            raise ValueError("generate_batch needs prompts of one token length; call generate for each")
        if not ids[0]:
            raise ValueError("the prompt is empty: give at least one character to continue")
        generator = torch.Generator(self.device)
        if seed is not None:
            generator.manual_seed(seed)
        else:
            generator.seed()
        prompt = torch.tensor(ids, device=self.device)  # (B, P)
        out = sample(self.model, prompt, max_new_tokens, temperature, top_k, top_p, generator, slide=True)
        return [self.tokenizer.decode(row) for row in out]

    # ------------------------------------------------------------------------------------------- scoring
    @torch.no_grad()
    def score(self, texts: str | Sequence[str], sources: str | Sequence[str] | None = None) -> list[float]:
        """Log-probability (natural log) of each text under the model. Seq2seq: of each target text given its
        source, EOS included (`sources` required). LM: of each text's tokens after its first, each window of
        max_len tokens scored from its start."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if self.is_lm:
            if sources is not None:
                raise ValueError("a language model scores texts alone: leave out sources")
            return [-nll for nll, _ in (self._lm_nll(self.tokenizer.encode(t)) for t in texts)]
        if sources is None:
            raise ValueError("a translation model scores a target given its source: pass sources=[...]")
        sources = [sources] if isinstance(sources, str) else list(sources)
        return [-nll for nll, _ in self._pair_nll(sources, texts)]

    @torch.no_grad()
    def perplexity(self, texts: Sequence[str], sources: Sequence[str] | None = None) -> dict[str, float]:
        """Per-token negative log-likelihood and perplexity. LM: `texts` are lines of one text, read as the
        trainer reads its validation text (each line + newline, one stream, windows of train.block_size).
        Seq2seq: target-side perplexity of texts given sources, EOS included."""
        if self.is_lm:
            if sources is not None:
                raise ValueError("a language model's perplexity needs no sources")
            stream: list[int] = []
            for ids in self.tokenizer.encode_batch([t + "\n" for t in texts]):
                stream += ids
            block = int(self.config.get("train", {}).get("block_size") or self.model.config.max_len)
            nll, tokens = self._stream_nll(np.asarray(stream, dtype=np.int64), min(block, self.model.config.max_len))
        else:
            if sources is None:
                raise ValueError("target-side perplexity of a translation model needs the sources")
            pairs = self._pair_nll(list(sources), list(texts))
            nll, tokens = sum(p[0] for p in pairs), sum(p[1] for p in pairs)
        if tokens == 0:
            raise ValueError("no tokens to score: the text is empty")
        mean = nll / tokens
        return {"nll": mean, "ppl": math.exp(min(mean, 700.0)), "tokens": tokens}

    def _pair_nll(self, sources: list[str], targets: list[str], batch_tokens: int = 8192) -> list[tuple[float, int]]:
        self._need("seq2seq", "score targets")
        if len(sources) != len(targets):
            raise ValueError(f"{len(sources)} sources for {len(targets)} targets: expected one each")
        limit = self.model.config.max_len
        src_ids = [x[: limit - 1] + [EOS_ID] for x in self.tokenizer.encode_batch(sources)]
        tgt_ids = [x[: limit - 1] + [EOS_ID] for x in self.tokenizer.encode_batch(targets)]
        out: list[tuple[float, int]] = [(0.0, 0)] * len(sources)
        order = sorted(range(len(sources)), key=lambda i: (len(src_ids[i]), len(tgt_ids[i])))
        step = max(1, batch_tokens // max(len(src_ids[i]) + len(tgt_ids[i]) for i in order)) if order else 1
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            S = max(len(src_ids[i]) for i in chunk)
            T = max(len(tgt_ids[i]) for i in chunk)
            src = torch.full((len(chunk), S), PAD_ID, dtype=torch.long)  # (B, S)
            tgt = torch.full((len(chunk), T + 1), PAD_ID, dtype=torch.long)  # (B, 1 + T): BOS, tokens, EOS
            tgt[:, 0] = BOS_ID
            for row, i in enumerate(chunk):
                src[row, : len(src_ids[i])] = torch.tensor(src_ids[i])
                tgt[row, 1 : 1 + len(tgt_ids[i])] = torch.tensor(tgt_ids[i])
            src, tgt = src.to(self.device), tgt.to(self.device)
            logp = self.model(src, tgt[:, :-1]).float().log_softmax(-1)  # (B, T, V)
            gold = tgt[:, 1:]  # (B, T)
            token_logp = logp.gather(-1, gold[..., None])[..., 0].masked_fill(gold == PAD_ID, 0.0)  # (B, T)
            for row, i in enumerate(chunk):
                out[i] = (-float(token_logp[row].sum()), len(tgt_ids[i]))
        return out

    def _lm_nll(self, ids: list[int]) -> tuple[float, int]:
        return self._stream_nll(np.asarray(ids, dtype=np.int64), self.model.config.max_len, whole=True)

    def _stream_nll(self, stream: np.ndarray, block: int, whole: bool = False) -> tuple[float, int]:
        """Sum of -log P over a token stream cut into windows of block + 1 tokens (each predicts its last block
        tokens). whole=True also scores a last partial window, as `score` needs every token of a short text."""
        self._need("lm", "score a text")
        if len(stream) < 2:
            return 0.0, 0
        n_full = (len(stream) - 1) // block
        starts = list(range(0, n_full * block, block))
        nll, tokens = 0.0, 0
        for first in range(0, len(starts), 32):
            rows = np.asarray(starts[first : first + 32])
            windows = stream[rows[:, None] + np.arange(block + 1)[None, :]]  # (B, block + 1)
            nll, tokens = self._add_window_nll(torch.from_numpy(windows), nll, tokens)
        rest = len(stream) - 1 - n_full * block
        if whole and rest > 0:
            tail = stream[n_full * block :][None, :]  # (1, rest + 1)
            nll, tokens = self._add_window_nll(torch.from_numpy(np.ascontiguousarray(tail)), nll, tokens)
        return nll, tokens

    def _add_window_nll(self, windows: torch.Tensor, nll: float, tokens: int) -> tuple[float, int]:
        windows = windows.to(self.device)
        logp = self.model(windows[:, :-1]).float().log_softmax(-1)  # (B, T, V)
        gold = windows[:, 1:]  # (B, T)
        return nll - float(logp.gather(-1, gold[..., None]).sum()), tokens + gold.numel()

    def _need(self, arch: str, what: str) -> None:
        if self.model.config.arch != arch:
            kind = "a language model" if arch == "lm" else "a translation (seq2seq) model"
            raise ValueError(f"{self.folder}: cannot {what}: this is not {kind} (model.arch={self.model.config.arch})")


def _weights(recorder) -> dict[str, np.ndarray]:
    """The recorder's single (1, H, rows, cols) entry per module -> (H, rows, cols) float32 arrays."""
    return {name: entries[-1][0].float().cpu().numpy() for name, entries in recorder.weights.items()}
