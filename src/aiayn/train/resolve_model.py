"""Completing a run's model config from its data, once the tokenizer is known."""

from __future__ import annotations

from aiayn.config import ModelConfig, RunConfig, TaskKind
from aiayn.config.model import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from aiayn.data.prepare import Prepared
from aiayn.errors import ConfigError
from aiayn.model import task_kind

DEFAULT_IDS = (PAD_ID, BOS_ID, EOS_ID, UNK_ID)


def resolve_model(cfg: RunConfig, data: Prepared, ids_from_tokenizer: bool = True) -> None:
    """Complete cfg.model from the data, in place: the vocabulary size and special ids of aiayn's own tokenizer
    (ids_from_tokenizer; an imported model's folder carries its own, fine-tuning keeps them), and a family that
    learns from the data's task kind. ConfigError, one line, otherwise."""
    if ids_from_tokenizer:
        ids = data.tokenizer.special_ids
        update = {"vocab_size": data.tokenizer.vocab_size}
        defaults = (cfg.model.pad_id, cfg.model.bos_id, cfg.model.eos_id, cfg.model.unk_id) == DEFAULT_IDS
        if data.tokenizer.kind == "sentencepiece" and defaults:  # Marian's layout: the ids are the tokenizer's
            update |= {"pad_id": ids.pad, "bos_id": ids.bos, "eos_id": ids.eos, "unk_id": ids.unk}
        cfg.model = ModelConfig.from_dict({**cfg.model.to_dict(), **update})
        if cfg.model.special_ids != data.tokenizer.special_ids:
            raise ConfigError(
                f"model.pad_id/bos_id/eos_id/unk_id = {cfg.model.pad_id}/{cfg.model.bos_id}/{cfg.model.eos_id}/"
                f"{cfg.model.unk_id}, but the tokenizer's are {ids.pad}/{ids.bos}/{ids.eos}/{ids.unk}: leave them out"
            )
    family_task = task_kind(cfg.model)
    if family_task is TaskKind.TEXT and data.task is TaskKind.PAIRS:
        raise ConfigError("model.arch='lm' needs data.train_text (plain text); parallel data trains 'seq2seq'")
    if family_task is TaskKind.PAIRS and data.task is TaskKind.TEXT:
        raise ConfigError(
            f"data.train_text is plain text, which trains a language model, but model.arch={cfg.model.arch!r} "
            "learns from pairs of texts: set model.arch: lm (--model.arch lm), or give parallel data"
        )
