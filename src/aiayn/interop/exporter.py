"""`aiayn export`: an aiayn model folder for another tool. `--to ctranslate2` is aiayn.interop.ct2, `--to onnx`
aiayn.interop.onnx_export; this module writes `--to hf`, a Hugging Face folder that transformers loads as it is.

An encoder-decoder becomes a `MarianMTModel` (post-LN, sinusoidal positions), a language model a `GPT2LMHeadModel`
(pre-LN, learned positions), through aiayn.interop.hf (the same logits); anything else is refused with one line
naming the field. The tokenizer goes with it, loadable by `AutoTokenizer.from_pretrained`:

- aiayn's own BPE: its tokenizer.json, with a post-processor that appends `<eos>` to a translation model's source
  (as aiayn's decoding does) and a tokenizer_config.json naming the special tokens;
- a tokenizer a model was imported with: its own files (Marian's SentencePiece files, GPT-2's tokenizer.json).

The ids that aiayn never emits become the generation config's `bad_words_ids`.
"""

from __future__ import annotations

import json
from pathlib import Path

from aiayn.errors import ConfigError
from aiayn.tokenizer import Tokenizer
from aiayn.tokenizer_moses import PreprocessedText

TARGETS = ("hf", "ctranslate2", "onnx")
_AIAYN_SPECIALS = {"pad_token": "<pad>", "bos_token": "<bos>", "eos_token": "<eos>", "unk_token": "<unk>"}


def export_model(model_dir: str | Path, to: str, out: str | Path) -> Path:
    """Write the model folder `model_dir` for `to` ("hf", "ctranslate2" or "onnx") into the folder `out`; returns
    `out`."""
    from aiayn import modelfile

    if to not in TARGETS:
        raise ConfigError(f"--to {to!r}: expected one of {', '.join(TARGETS)}")
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise ConfigError(f"{out}: exists and is not empty; choose a new folder for the export")
    model, tokenizer, _, folder = modelfile.load(model_dir)
    if isinstance(tokenizer, PreprocessedText):  # the formats' tokenizers have no Moses step: say so, not drop it
        raise ConfigError(
            f"{folder}: trained on {'Moses-tokenized ' if tokenizer.langs else ''}"
            f"{'lowercased ' if tokenizer.lowercase else ''}text (data.moses / data.lowercase), which the {to} "
            f"tokenizer would not do: not exported"
        )
    if to == "onnx":
        from aiayn.interop.onnx_export import export_onnx

        kind = modelfile.tokenizer_kind(modelfile.verify(folder))
        return export_onnx(model, folder, kind, modelfile.TOKENIZER_FILES[kind], out)
    if to == "ctranslate2":
        from aiayn.interop.ct2 import export_ctranslate2

        return export_ctranslate2(model, tokenizer, out)
    return _to_hf(model, tokenizer, out)


def _to_hf(model, tokenizer, out: Path) -> Path:
    from transformers.utils import logging

    from aiayn.interop.hf import to_gpt2, to_marian

    config = model.config
    if config.arch not in ("seq2seq", "lm"):
        raise ConfigError(
            f"model.arch={config.arch!r} cannot be exported to hf: Marian and GPT-2 are Transformers "
            f"(arch 'seq2seq' or 'lm')"
        )
    hf = (to_marian if config.arch == "seq2seq" else to_gpt2)(model).eval()
    never = list(config.special_ids.never_emit)
    hf.generation_config.bad_words_ids = [[i] for i in never] or None
    if config.arch == "seq2seq":
        hf.generation_config.decoder_start_token_id = config.bos_id
    logging.disable_progress_bar()
    hf.save_pretrained(out)
    for name, data in _tokenizer_files(tokenizer, source_eos=config.arch == "seq2seq").items():
        (out / name).write_bytes(data)
    return out


def _tokenizer_files(tokenizer, source_eos: bool) -> dict[str, bytes]:
    if not isinstance(tokenizer, Tokenizer):
        return tokenizer.files()  # an imported model's own tokenizer, as it came
    data = json.loads(tokenizer.to_json())
    if source_eos:  # aiayn's decoding ends every source with <eos>; a Hugging Face tokenizer must do the same
        eos = tokenizer.special_ids.eos
        data["post_processor"] = {
            "type": "TemplateProcessing",
            "single": [{"Sequence": {"id": "A", "type_id": 0}}, {"SpecialToken": {"id": "<eos>", "type_id": 0}}],
            "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 0}},
                     {"SpecialToken": {"id": "<eos>", "type_id": 0}}],  # fmt: skip
            "special_tokens": {"<eos>": {"id": "<eos>", "ids": [eos], "tokens": ["<eos>"]}},
        }
    config = {"tokenizer_class": "PreTrainedTokenizerFast", **_AIAYN_SPECIALS, "model_max_length": 1_000_000}
    return {
        "tokenizer.json": json.dumps(data, ensure_ascii=False, indent=1).encode("utf-8"),
        "tokenizer_config.json": json.dumps(config, indent=1).encode("utf-8"),
        "special_tokens_map.json": json.dumps(_AIAYN_SPECIALS, indent=1).encode("utf-8"),
    }


def aiayn_tokenizer_json(data: bytes) -> bytes | None:
    """The tokenizer.json of aiayn's own tokenizer inside an exported folder (its post-processor removed), or None
    when the file is some other tokenizer: what `aiayn import` of an exported model keeps."""
    try:
        parsed = json.loads(data)
        parsed["post_processor"] = None
        text = json.dumps(parsed, ensure_ascii=False)
        return Tokenizer.from_json(text).to_json().encode("utf-8")
    except (ValueError, TypeError, AttributeError):
        return None
