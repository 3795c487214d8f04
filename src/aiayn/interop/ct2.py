"""`aiayn export --to ctranslate2`: an aiayn Transformer as a CTranslate2 model folder, written from its weights
with CTranslate2's own specs (`ctranslate2.specs`), no Hugging Face model in between.

An encoder-decoder becomes a `TransformerSpec` for `ctranslate2.Translator`, a language model a
`TransformerDecoderModelSpec` for `ctranslate2.Generator`. aiayn's fused projections are CTranslate2's layout
already ([q; k; v] for self-attention, q and [k; v] for cross-attention); the positional table (sinusoidal,
interleaved as in the paper, or learned) is written out as it is, so nothing is permuted. The vocabulary is the
tokenizer's own token strings, and config.json says what goes around the pieces: the end token added to every
source (`add_source_eos`, as aiayn's decoding does) and the decoder's start token. Give CTranslate2 the
token strings of `ctranslate2_tokens` (one per id), and pass `suppress_sequences` for the ids aiayn never
emits (written to config.json as `aiayn_never_emit`).

What this export cannot express is refused with one line naming the field: the recurrent family, rotary
positions, and an output bias on a language model.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from aiayn.errors import ConfigError
from aiayn.model.layers import sinusoidal_table

_ACTIVATIONS = {"relu": "RELU", "gelu": "GELU", "gelu_tanh": "GELUTanh", "swish": "SWISH", "swiglu": "SWISH"}


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().to(torch.float32).cpu().numpy()


def _refuse(ok: bool, field: str, value: object, why: str) -> None:
    if not ok:
        raise ConfigError(f"model.{field}={value!r} cannot be exported to ctranslate2: {why}")


def _check(config) -> None:
    _refuse(config.arch in ("seq2seq", "lm"), "arch", config.arch,
            "CTranslate2's Transformer specs have no recurrent model")  # fmt: skip
    _refuse(config.positional != "rope", "positional", config.positional,
            "aiayn's rotary layout is not mapped onto CTranslate2's here; use sinusoidal or learned")  # fmt: skip
    _refuse(config.arch == "seq2seq" or not config.output_bias, "output_bias", config.output_bias,
            "a CTranslate2 language model's projection is written without a bias here")  # fmt: skip


def _linear(spec, weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    spec.weight = _np(weight)
    if bias is not None:
        spec.bias = _np(bias)


def _norm(spec, norm: torch.nn.Module) -> None:
    spec.gamma = _np(norm.weight)
    if getattr(norm, "bias", None) is not None:
        spec.beta = _np(norm.bias)


def _attention(spec, attn, norm) -> None:
    if attn.cross:
        _linear(spec.linear[0], attn.q_proj.weight, attn.q_proj.bias)
        _linear(spec.linear[1], attn.kv_proj.weight, attn.kv_proj.bias)
        _linear(spec.linear[2], attn.out_proj.weight, attn.out_proj.bias)
    else:
        _linear(spec.linear[0], attn.qkv_proj.weight, attn.qkv_proj.bias)
        _linear(spec.linear[1], attn.out_proj.weight, attn.out_proj.bias)
    _norm(spec.layer_norm, norm)


def _ffn(spec, ffn, norm) -> None:
    if ffn.gated:  # SwiGLU: w1 is [gate; up] (2F, D); CTranslate2 applies the activation to linear_0 only
        gate, up = ffn.w1.weight.chunk(2, dim=0)  # each (F, D)
        gate_bias, up_bias = ffn.w1.bias.chunk(2) if ffn.w1.bias is not None else (None, None)
        _linear(spec.linear_0, gate, gate_bias)
        _linear(spec.linear_0_noact, up, up_bias)
    else:
        _linear(spec.linear_0, ffn.w1.weight, ffn.w1.bias)
    _linear(spec.linear_1, ffn.w2.weight, ffn.w2.bias)
    _norm(spec.layer_norm, norm)


def _embeddings(stack_spec, embeddings_spec, embed, config, max_len: int) -> None:
    embeddings_spec.weight = _np(embed.token.weight)
    stack_spec.scale_embeddings = config.scale_embeddings
    if config.positional == "learned":
        stack_spec.position_encodings.encodings = _np(embed.position.weight)
    else:
        stack_spec.position_encodings.encodings = _np(sinusoidal_table(max_len, config.d_model))


def _options(config) -> dict:
    from ctranslate2.specs import common_spec

    return dict(
        num_heads=config.n_heads,
        pre_norm=config.norm == "pre",
        activation=getattr(common_spec.Activation, _ACTIVATIONS[config.activation]),
        ffn_glu=config.activation == "swiglu",
        rms_norm=config.norm_type == "rmsnorm",
    )


def _layers(layer_specs, layers, cross: bool) -> None:
    for spec, layer in zip(layer_specs, layers, strict=True):
        _attention(spec.self_attention, layer.self_attn, layer.self_attn_block.norm)
        if cross:
            _attention(spec.attention, layer.cross_attn, layer.cross_attn_block.norm)
        _ffn(spec.ffn, layer.ffn, layer.ffn_block.norm)


def _seq2seq_spec(model):
    from ctranslate2.specs import transformer_spec

    c = model.config
    spec = transformer_spec.TransformerSpec.from_config((c.n_encoder_layers, c.n_decoder_layers), **_options(c))
    _embeddings(spec.encoder, spec.encoder.embeddings[0], model.src_embed, c, c.max_len)
    _layers(spec.encoder.layer, model.encoder.layers, cross=False)
    _embeddings(spec.decoder, spec.decoder.embeddings, model.tgt_embed, c, c.max_len)
    _layers(spec.decoder.layer, model.decoder.layers, cross=True)
    if c.norm == "pre":
        _norm(spec.encoder.layer_norm, model.encoder.norm)
        _norm(spec.decoder.layer_norm, model.decoder.norm)
    _linear(spec.decoder.projection, model.output.weight, model.output.bias)
    return spec


def _lm_spec(model):
    from ctranslate2.specs import transformer_spec

    c = model.config
    spec = transformer_spec.TransformerDecoderModelSpec.from_config(c.n_decoder_layers, **_options(c))
    _embeddings(spec.decoder, spec.decoder.embeddings, model.embed, c, c.max_len)
    _layers(spec.decoder.layer, model.decoder.layers, cross=False)
    if c.norm == "pre":
        _norm(spec.decoder.layer_norm, model.decoder.norm)
    _linear(spec.decoder.projection, model.output.weight, None)
    return spec


def ctranslate2_tokens(tokenizer, vocab_size: int) -> list[str]:
    """One distinct string per id, as CTranslate2's vocabulary and inputs spell them: the tokenizer's own
    (`id_to_token`), with `<id N>` for ids it has none for."""
    tokens, seen = [], set()
    for i in range(vocab_size):
        token = tokenizer.id_to_token(i)
        token = f"<id {i}>" if token is None or token in seen else token
        seen.add(token)
        tokens.append(token)
    return tokens


def export_ctranslate2(model, tokenizer, out: Path) -> Path:
    """Write `model` (an aiayn Transformer or LanguageModel in eval mode) as a CTranslate2 model folder."""
    try:
        import ctranslate2  # noqa: F401
    except ImportError:
        raise ConfigError("--to ctranslate2 needs the ctranslate2 package: pip install 'aiayn[interop]'") from None
    c = model.config
    _check(c)
    tokens = ctranslate2_tokens(tokenizer, c.vocab_size)
    ids = c.special_ids
    spec = _seq2seq_spec(model) if c.arch == "seq2seq" else _lm_spec(model)
    spec.config.layer_norm_epsilon = c.norm_eps
    spec.config.unk_token = tokens[ids.unk]
    spec.config.eos_token = tokens[ids.eos]
    spec.config.bos_token = tokens[ids.bos]
    if c.arch == "seq2seq":
        spec.config.decoder_start_token = tokens[ids.bos]
        spec.config.add_source_eos = True
        spec.config.add_source_bos = False
        spec.register_source_vocabulary(tokens)
        spec.register_target_vocabulary(tokens)
    else:
        spec.register_vocabulary(tokens)
    spec.validate()
    spec.optimize(quantization=None)
    out.mkdir(parents=True, exist_ok=True)
    spec.save(str(out))
    config = json.loads((out / "config.json").read_text(encoding="utf-8"))
    config["aiayn_never_emit"] = [tokens[i] for i in ids.never_emit if i != ids.eos]
    (out / "config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False), encoding="utf-8")
    return out
