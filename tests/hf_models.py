"""Small Hugging Face models with random weights and tokenizers trained here, saved with save_pretrained: the
sources `aiayn import` reads in tests (no download). Marian gets two SentencePiece models (English source,
Chinese-and-English target) over one vocab.json; GPT-2 a byte-level BPE with <|endoftext|>."""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch

EN = [
    "a man is riding a bicycle down the street .",
    "two dogs play in the snow near a fence .",
    "the woman in a red dress is singing on a stage .",
    "children are running through a park on a sunny day .",
    "an old man reads a newspaper on a bench .",
    "a group of people stand outside a small shop .",
    "the cat sleeps on the warm window sill .",
    "a young girl throws a ball to her brother .",
] * 4
ZH = ["一个男人在街上骑自行车。", "两只狗在雪地里玩。", "穿红裙子的女人在台上唱歌。", "孩子们在公园里跑。"] * 4
TEXTS = [
    "a man is riding a bicycle .",
    "two dogs play in the snow near the old fence , and a young girl throws a ball to her brother .",
    "一个男人在街上骑自行车。",
    "the cat ’s window — “quoted” text…",
    "Ünïcödé ☃ and ✓ never seen",
]


def randomize(module: torch.nn.Module, seed: int, std: float = 0.15) -> None:
    """Normal(0, std) for every parameter except Marian's frozen positional tables, LayerNorm scales Normal(1, 0.2):
    a random model whose outputs depend on its input (scales near 0 would leave only the output bias)."""
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, param in module.named_parameters():
            if "embed_positions" in name:
                continue
            norm = "layer_norm" in name or ".ln_" in name or "norm." in name  # Marian, GPT-2, aiayn
            param.normal_(1.0, 0.2) if norm and name.endswith("weight") else param.normal_(0.0, std)


def _spm(texts: list[str], vocab_size: int) -> bytes:
    import sentencepiece

    out = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=out, vocab_size=vocab_size, character_coverage=1.0,
        model_type="unigram", hard_vocab_limit=False, minloglevel=2, num_threads=1,
    )  # fmt: skip
    return out.getvalue()


def marian_folder(folder: Path, seed: int = 0, d_model: int = 32, layers: int = 2, bias: bool = True) -> Path:
    """A MarianMTModel + MarianTokenizer folder: random weights, pad = decoder start = the last id, bad_words_ids
    bans it (as opus-mt models do)."""
    import sentencepiece
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    source, target = _spm(EN, 60), _spm(EN[:8] + ZH, 80)
    pieces: list[str] = []
    for model in (source, target):
        sp = sentencepiece.SentencePieceProcessor()
        sp.LoadFromSerializedProto(model)
        pieces += [sp.IdToPiece(i) for i in range(sp.GetPieceSize()) if not sp.IsControl(i) and not sp.IsUnknown(i)]
    vocab = {"</s>": 0, "<unk>": 1}
    for piece in pieces:
        vocab.setdefault(piece, len(vocab))
    vocab["<pad>"] = pad = len(vocab)
    (folder / "source.spm").write_bytes(source)
    (folder / "target.spm").write_bytes(target)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    tok = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
                          source_lang="en")
    tok.save_pretrained(folder)
    config = MarianConfig(
        vocab_size=pad + 1, decoder_vocab_size=pad + 1, d_model=d_model, encoder_layers=layers,
        decoder_layers=layers, encoder_attention_heads=4, decoder_attention_heads=4, encoder_ffn_dim=2 * d_model,
        decoder_ffn_dim=2 * d_model, max_position_embeddings=128, pad_token_id=pad, decoder_start_token_id=pad,
        eos_token_id=0, forced_eos_token_id=0,
    )  # fmt: skip
    hf = MarianMTModel(config).eval()
    hf.generation_config.bad_words_ids = [[pad]]  # as opus-mt models' generation configs do
    randomize(hf, seed)
    with torch.no_grad():
        hf.final_logits_bias.normal_(0.0, 0.1)
        hf.final_logits_bias[0, 0] += 1.5  # the end token: some outputs end, some run to the length limit
    hf.save_pretrained(folder)
    return folder


def gpt2_folder(folder: Path, seed: int = 0, tokenizer_json: bool = True) -> Path:
    """A GPT2LMHeadModel + byte-level BPE folder (tokenizer.json, or vocab.json + merges.txt)."""
    from tokenizers import ByteLevelBPETokenizer
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast

    folder.mkdir(parents=True, exist_ok=True)
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(EN + ZH, vocab_size=400, min_frequency=1, special_tokens=["<|endoftext|>"])
    bpe.save(str(folder / "raw.json"))
    tok = GPT2TokenizerFast(tokenizer_file=str(folder / "raw.json"), bos_token="<|endoftext|>",
                            eos_token="<|endoftext|>", unk_token="<|endoftext|>")  # fmt: skip
    (folder / "raw.json").unlink()
    tok.save_pretrained(folder)
    if not tokenizer_json:
        bpe.save_model(str(folder))  # vocab.json + merges.txt
        (folder / "tokenizer.json").unlink()
    end = tok.convert_tokens_to_ids("<|endoftext|>")
    config = GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=4,
                        bos_token_id=end, eos_token_id=end)  # fmt: skip
    hf = GPT2LMHeadModel(config).eval()
    randomize(hf, seed)
    hf.save_pretrained(folder)
    return folder


def hf_outputs(hf, batch, beam: int, pad: int, eos: int, new_tokens: int) -> list[list[int]]:
    """Hugging Face generate's ids per text (greedy, or beam search ranked by raw log-probability as aiayn's
    alpha 0), without the start token, the end token and padding."""
    extra = {"length_penalty": 0.0, "early_stopping": False} if beam > 1 else {}
    out = hf.generate(**batch, num_beams=beam, do_sample=False, max_new_tokens=new_tokens,
                      forced_eos_token_id=None, **extra)  # fmt: skip
    rows = []
    for row in out[:, 1:].tolist():
        row = [i for i in row if i != pad]
        rows.append(row[: row.index(eos)] if eos in row else row)
    return rows


def aiayn_folder(folder: Path, tokenizer, arch: str, seed: int = 0, **overrides) -> Path:
    """An aiayn model folder of a small random model (untied, LayerNorm scales near 1: outputs that vary with
    the input) with aiayn's own `tokenizer`: what the export tests convert."""
    from aiayn.config import ModelConfig
    from aiayn.model import build
    from aiayn.train import checkpoint as ckpt

    config = ModelConfig(arch=arch, vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4,
                         n_encoder_layers=0 if arch == "lm" else 2, n_decoder_layers=2, d_ff=64, max_len=128,
                         dropout=0.0, tie_embeddings=False, **overrides)  # fmt: skip
    model = build(config).eval()
    randomize(model, seed)
    ckpt.save_checkpoint(folder, model=model, config={"model": config.to_dict()},
                         tokenizer_json=tokenizer.to_json().encode())  # fmt: skip
    return folder
