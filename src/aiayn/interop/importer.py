"""`aiayn import`: a Hugging Face Marian or GPT-2 model, with its tokenizer, as an ordinary aiayn model folder.

The source is a folder written by `save_pretrained` (the kind is read from its config.json), or a hub name,
downloaded with `huggingface_hub` into its cache when the machine is online. The weights go through
aiayn.interop.hf (`from_marian`, `from_gpt2`: the same logits); the tokenizer files are kept as they are
(aiayn.tokenizer_pretrained), and the special ids are the model's own, carried and never remapped:

- Marian: pad is also the decoder's start token, `</s>` ends, there is no BOS; the ids Marian's generation
  config bans (`bad_words_ids`, usually the pad token) are `never_emit_ids`.
- GPT-2: `<|endoftext|>` starts and ends; there is no pad token, so nothing is banned (`never_emit_ids: []`).

Anything aiayn cannot express is one line (ConfigError) naming the field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aiayn.errors import ConfigError, UserError
from aiayn.interop.exporter import aiayn_tokenizer_json
from aiayn.modelfile import save_folder
from aiayn.tokenizer import Tokenizer
from aiayn.tokenizer_pretrained import HFTokenizer, SentencePieceTokenizer

SUPPORTED = {"marian": "MarianMTModel", "gpt2": "GPT2LMHeadModel"}
_MARIAN_TOKENIZER = ("source.spm", "target.spm", "vocab.json")


def import_model(src: str | Path, out: str | Path) -> Path:
    """Convert the Hugging Face model in `src` (a save_pretrained folder or a hub name) into the aiayn model
    folder `out`; returns `out`."""
    folder = _local(src)
    hf_config = _read_json(folder / "config.json")
    kind = hf_config.get("model_type")
    architectures = hf_config.get("architectures") or []
    if kind not in SUPPORTED or any(a != SUPPORTED[kind] for a in architectures):
        named = ", ".join(architectures) or f"model_type {kind!r}"
        raise ConfigError(
            f"{folder / 'config.json'}: {named} is not supported; aiayn imports {', '.join(SUPPORTED.values())}"
        )
    make = _marian if kind == "marian" else _gpt2
    model, tokenizer, origin = make(folder)
    config = {
        "model": model.config.to_dict(),
        "tokenizer": {"kind": tokenizer.kind},
        "imported": {"from": str(src), "architecture": SUPPORTED[kind]},
        **origin,
    }
    if isinstance(tokenizer, Tokenizer):  # aiayn's own, in a folder aiayn exported (aiayn.interop.exporter)
        return save_folder(out, model=model, config=config, tokenizer_json=tokenizer.to_json().encode("utf-8"))
    return save_folder(out, model=model, config=config, tokenizer_files=tokenizer.files(),
                       tokenizer_kind=tokenizer.kind)  # fmt: skip


def _aiayn_tokenizer(folder: Path) -> Tokenizer | None:
    """aiayn's own tokenizer when the folder is one aiayn exported (its tokenizer.json), else None."""
    path = folder / "tokenizer.json"
    data = aiayn_tokenizer_json(path.read_bytes()) if path.is_file() else None
    return None if data is None else Tokenizer.from_json(data.decode("utf-8"), source=str(path))


def _local(src: str | Path) -> Path:
    """A local folder as it is; otherwise a hub name, downloaded (or found in the hub cache)."""
    path = Path(src)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"{path}: no config.json; expected a folder written by save_pretrained")
        return path
    if path.exists() or str(src).count("/") > 1 or str(src).startswith((".", "~")):
        raise UserError(
            f"{src}: not a folder written by save_pretrained, nor a hub name such as Helsinki-NLP/opus-mt-en-de"
        )
    try:
        from huggingface_hub import snapshot_download
    except ImportError:
        raise UserError(f"{src}: downloading a hub model needs huggingface_hub: pip install 'aiayn[interop]'") from None
    try:
        return Path(snapshot_download(str(src)))
    except Exception as e:  # offline, unknown repository, gated model: huggingface_hub raises many kinds
        reason = " ".join(str(e).split())[:300]
        raise UserError(f"{src}: cannot download it from the Hugging Face hub ({type(e).__name__}: {reason})") from None


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise UserError(f"{path}: cannot read it as JSON ({e})") from None
    if not isinstance(data, dict):
        raise UserError(f"{path}: expected a JSON object")
    return data


def _files(folder: Path, names: tuple[str, ...], what: str) -> dict[str, bytes]:
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise UserError(f"{folder}: {what} needs {', '.join(missing)}, which the folder lacks")
    return {n: (folder / n).read_bytes() for n in names}


def _float32(cls, folder: Path):
    import torch
    from transformers.utils import logging

    logging.disable_progress_bar()  # one line per command, not a bar per weight file
    return cls.from_pretrained(folder, dtype=torch.float32).eval()


def _marian(folder: Path):
    from transformers import MarianMTModel

    from aiayn.interop.hf import from_marian

    tokenizer = _aiayn_tokenizer(folder) if not (folder / "source.spm").exists() else None
    if tokenizer is None:
        files = _files(folder, _MARIAN_TOKENIZER, "Marian's tokenizer")
        files["tokenizer_config.json"] = _tokenizer_config(folder, {"eos_token": "</s>", "unk_token": "<unk>",
                                                                    "pad_token": "<pad>"})  # fmt: skip
        tokenizer = SentencePieceTokenizer(files, source=str(folder))
    hf = _float32(MarianMTModel, folder)
    model = from_marian(hf)
    model = _with_ids(model, tokenizer, never_emit_ids=_banned(hf))
    return model, tokenizer, {}


def _gpt2(folder: Path):
    from transformers import GPT2LMHeadModel

    from aiayn.interop.hf import from_gpt2

    config = _read_json(folder / "config.json")
    end = "<|endoftext|>"
    tokenizer = _aiayn_tokenizer(folder)
    if tokenizer is None:
        files = {"tokenizer.json": _gpt2_tokenizer_json(folder)}
        specials = {"bos_token": end, "eos_token": end, "unk_token": end}
        files["tokenizer_config.json"] = _tokenizer_config(folder, specials)
        tokenizer = HFTokenizer(files, source=str(folder))
    hf = _float32(GPT2LMHeadModel, folder)
    model = from_gpt2(hf)
    ids = tokenizer.special_ids
    for field, value in (("bos_token_id", ids.bos), ("eos_token_id", ids.eos)):
        if config.get(field) is not None and config[field] != value:
            raise ConfigError(f"{folder / 'config.json'}: {field}={config[field]} but the tokenizer's is {value}")
    origin = {"train": {"block_size": model.config.max_len}}
    return _with_ids(model, tokenizer, never_emit_ids=_banned(hf)), tokenizer, origin


def _banned(hf) -> list[int]:
    """The single-token entries of the generation config's bad_words_ids: the ids the model never emits."""
    return sorted({w[0] for w in (getattr(hf.generation_config, "bad_words_ids", None) or []) if len(w) == 1})


def _gpt2_tokenizer_json(folder: Path) -> bytes:
    """GPT-2's tokenizer.json, or one built by transformers from vocab.json + merges.txt."""
    if (folder / "tokenizer.json").is_file():
        return (folder / "tokenizer.json").read_bytes()
    _files(folder, ("vocab.json", "merges.txt"), "GPT-2's tokenizer (without tokenizer.json)")
    from transformers import GPT2TokenizerFast

    fast = GPT2TokenizerFast.from_pretrained(str(folder))  # reads vocab.json + merges.txt
    return fast.backend_tokenizer.to_str().encode("utf-8")


def _tokenizer_config(folder: Path, defaults: dict[str, str]) -> bytes:
    """tokenizer_config.json with the special tokens named (from special_tokens_map.json, else `defaults`)."""
    config = _read_json(folder / "tokenizer_config.json") if (folder / "tokenizer_config.json").is_file() else {}
    specials = _read_json(folder / "special_tokens_map.json") if (folder / "special_tokens_map.json").is_file() else {}
    for key, value in defaults.items():
        config.setdefault(key, specials.get(key, value))
    keep = {k: v for k, v in config.items() if isinstance(v, str | int | float | bool | dict | list) or v is None}
    return json.dumps(keep, indent=1, ensure_ascii=False).encode("utf-8")


def _with_ids(model, tokenizer, never_emit_ids: list[int]):
    """The converted model with the tokenizer's special ids (which must agree with the model's config) and the
    ids it never emits; the weights are untouched."""
    from aiayn.config import ModelConfig

    c, ids = model.config, tokenizer.special_ids
    if tokenizer.vocab_size > c.vocab_size:
        raise ConfigError(f"the tokenizer has {tokenizer.vocab_size:,} ids but the model only {c.vocab_size:,}")
    theirs = {"pad_id": c.pad_id, "bos_id": c.bos_id, "eos_id": c.eos_id}
    ours = {"pad_id": ids.pad, "bos_id": ids.bos, "eos_id": ids.eos}
    if model.config.arch == "lm":
        theirs.pop("pad_id")  # GPT-2 names no pad: the tokenizer's stand-in is taken
    for key, value in theirs.items():
        if ours[key] != value:
            raise ConfigError(f"config.json: the model's {key} is {value} but its tokenizer's is {ours[key]}")
    derived = ModelConfig.from_dict({**c.to_dict(), **ours, "unk_id": ids.unk, "never_emit_ids": None})
    # The default (pad and start token) stays the default: a model aiayn exported comes back as it was.
    never = None if list(derived.special_ids.never_emit) == never_emit_ids else never_emit_ids
    model.config = ModelConfig.from_dict({**derived.to_dict(), "never_emit_ids": never})
    return model
