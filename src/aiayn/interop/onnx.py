"""Greedy decoding of an `aiayn export --to onnx` folder with onnxruntime: no torch model, only the graphs, the
tokenizer and onnx.json (aiayn.interop.onnx_export writes them).

    from aiayn.interop import onnx
    onnx.greedy("model-onnx", ["A man rides a bike."], max_len=50)   # -> ["Ein Mann fährt Fahrrad."]

It decodes as aiayn's greedy search does (aiayn.decoding.search.greedy_search): sources end with EOS, the ids the
model never emits are never chosen, a row stops at EOS or at its length limit (max_len new tokens, or the source
length + 50; never more than the model's positions). A language model continues each text for max_len new tokens
(200 by default), as `aiayn generate --temperature 0` does.

Shapes: B batch, S source length, P past steps, H heads, Dh head dim, V vocab.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from aiayn.errors import ConfigError

EXTRA_LENGTH = 50  # as aiayn.decoding.search: new tokens allowed beyond the source length by default
LM_NEW_TOKENS = 200  # as Generator.generate's default
BATCH = 64  # sources decoded together


class OnnxModel:
    """The graphs of an exported folder in onnxruntime sessions, with the folder's tokenizer."""

    def __init__(self, folder: str | Path) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise ConfigError("decoding ONNX needs the onnxruntime package: pip install 'aiayn[interop]'") from None
        from aiayn import modelfile
        from aiayn.interop.onnx_export import META

        self.folder = Path(folder)
        try:
            self.meta: dict[str, Any] = json.loads((self.folder / META).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise ConfigError(f"{self.folder / META}: not an aiayn ONNX export ({e})") from None
        _, model_config = modelfile.read_config(self.folder)
        self.tokenizer = modelfile.read_tokenizer(self.folder, model_config, self.meta["tokenizer"])
        names = ("encoder", "decoder_step") if self.meta["arch"] == "seq2seq" else ("lm_step",)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's notes on graph rewrites are not the user's
        self.sessions = {
            name: onnxruntime.InferenceSession(str(self.folder / f"{name}.onnx"), options,
                                               providers=["CPUExecutionProvider"])  # fmt: skip
            for name in names
        }

    def _empty_past(self, batch: int) -> list[np.ndarray]:
        m = self.meta
        shape = (batch, m["n_heads"], 0, m["head_dim"])  # (B, H, 0, Dh): nothing decoded yet
        return [np.zeros(shape, dtype=np.float32) for _ in range(2 * m["n_layers"])]

    def translate_ids(self, sources: list[list[int]], max_len: int | None) -> list[list[int]]:
        """Greedy ids (without BOS, cut before EOS) for source ids that end with EOS."""
        m = self.meta
        S = max(len(s) for s in sources)
        src = np.full((len(sources), S), m["pad_id"], dtype=np.int64)  # (B, S) right-padded
        for row, s in enumerate(sources):
            src[row, : len(s)] = s
        lengths = np.array([len(s) for s in sources])
        limits = np.full(len(sources), max_len) if max_len is not None else lengths + EXTRA_LENGTH
        limits = np.minimum(limits, m["max_len"])  # (B,)
        encoded = self.sessions["encoder"].run(None, {"src": src})  # memory, then k, v per layer
        memory_kv = encoded[1:]
        past = self._empty_past(len(sources))
        token = np.full((len(sources), 1), m["bos_id"], dtype=np.int64)  # (B, 1)
        out: list[list[int]] = [[] for _ in sources]
        done = np.zeros(len(sources), dtype=bool)
        for step in range(1, int(limits.max()) + 1):
            feeds = {"tgt": token, "src": src}
            for i in range(m["n_layers"]):
                feeds |= {f"past_key_{i}": past[2 * i], f"past_value_{i}": past[2 * i + 1],
                          f"memory_key_{i}": memory_kv[2 * i], f"memory_value_{i}": memory_kv[2 * i + 1]}  # fmt: skip
            logits, *past = self.sessions["decoder_step"].run(None, feeds)  # (B, V), then the grown past
            logits[:, m["never_emit"]] = -np.inf
            token = logits.argmax(axis=-1)[:, None].astype(np.int64)  # (B, 1)
            for row in np.flatnonzero(~done):
                if token[row, 0] == m["eos_id"]:
                    done[row] = True
                else:
                    out[row].append(int(token[row, 0]))
                    done[row] |= step >= limits[row]
            if done.all():
                break
        return out

    def continue_ids(self, ids: list[int], max_new_tokens: int) -> list[int]:
        """Greedy continuation of one language-model context (its last max_len - 1 tokens), as aiayn's sample()
        at temperature 0 without sliding: at most the model's positions in all."""
        context = ids[-(self.meta["max_len"] - 1) :]
        new_tokens = min(max_new_tokens, self.meta["max_len"] - len(context))
        past: list[np.ndarray] = self._empty_past(1)
        for token in context:  # the prompt, one token at a time through the step graph
            logits, past = self._lm_step(token, past)
        new: list[int] = []
        while len(new) < new_tokens:
            new.append(int(logits[0].argmax()))
            if len(new) < new_tokens:
                logits, past = self._lm_step(new[-1], past)
        return new

    def _lm_step(self, token: int, past: list[np.ndarray]) -> tuple[np.ndarray, list[np.ndarray]]:
        feeds = {"ids": np.array([[token]], dtype=np.int64)}  # (1, 1)
        for i in range(self.meta["n_layers"]):
            feeds |= {f"past_key_{i}": past[2 * i], f"past_value_{i}": past[2 * i + 1]}
        logits, *present = self.sessions["lm_step"].run(None, feeds)  # (1, V), then the grown past
        return logits, present

    def ids(self, texts: Sequence[str], max_len: int | None = None) -> list[list[int]]:
        """Greedy ids (without BOS and EOS) per text; [] for a blank one."""
        from aiayn.decoding import encode_sources

        if self.meta["arch"] == "lm":
            new = LM_NEW_TOKENS if max_len is None else max_len
            prompts = [self.tokenizer.encode(t) for t in texts]
            return [self.continue_ids(p, new) if p else [] for p in prompts]
        sources = encode_sources(self.tokenizer, texts, self.meta["max_len"], self.meta["eos_id"])
        out: list[list[int]] = [[] for _ in sources]
        # Batches of sources of similar lengths (little padding, rows that finish together), in input order back.
        order = sorted((i for i, s in enumerate(sources) if s is not None), key=lambda i: len(sources[i]))
        for start in range(0, len(order), BATCH):
            rows = order[start : start + BATCH]
            for i, ids in zip(rows, self.translate_ids([sources[i] for i in rows], max_len), strict=True):
                out[i] = ids
        return out

    def texts(self, ids: list[list[int]]) -> list[str]:
        """Token ids -> text, as aiayn's translate (seq2seq) and generate (language model) write them."""
        from aiayn.decoding import detokenize

        if self.meta["arch"] == "lm":
            return [self.tokenizer.decode(row) for row in ids]
        return [detokenize(self.tokenizer, row) for row in ids]


def _texts(texts: str | Sequence[str]) -> list[str]:
    return [texts] if isinstance(texts, str) else list(texts)


def greedy_ids(onnx_dir: str | Path, texts: str | Sequence[str], max_len: int | None = None) -> list[list[int]]:
    """`greedy` as token ids (without BOS and EOS), one list per text ([] for a blank one)."""
    return OnnxModel(onnx_dir).ids(_texts(texts), max_len)


def greedy(onnx_dir: str | Path, texts: str | Sequence[str], max_len: int | None = None) -> list[str]:
    """Translate (or, for a language model, continue) each text greedily with the exported graphs; max_len: new
    tokens per text (default: source length + 50 for translation, 200 for a language model)."""
    model = OnnxModel(onnx_dir)
    return model.texts(model.ids(_texts(texts), max_len))
