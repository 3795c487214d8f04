"""Conversion times and output equality of `aiayn import` / `aiayn export`, on models of real sizes.

1. A MarianMTModel of opus-mt's size (d_model 512, 6 + 6 layers, 8 heads, FFN 2048, a 58,101-entry vocabulary:
   the shape of Helsinki-NLP/opus-mt-en-de) and a GPT2LMHeadModel of GPT-2 small's (124M parameters), both with
   random weights (no network), written by `save_pretrained` with the tests' small tokenizers: the time of
   `aiayn import` for each.
2. A trained aiayn model (--model): the time of `aiayn export --to hf / ctranslate2 / onnx`, and for the ONNX
   export, greedy decoding of the validation set with `aiayn.interop.onnx.greedy` against aiayn's own greedy
   (share of equal outputs, and both speeds, 2 threads).

    python benchmarks/bench_interop.py --model runs/multi30k-tiny --src ../shared/data/multi30k/val.en \
        --json benchmarks/out/interop.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def _timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, round(time.perf_counter() - start, 2)


def opus_sized_marian(folder: Path) -> Path:
    """A Marian folder with opus-mt-en-de's shapes, random weights, and the tests' SentencePiece tokenizer."""
    import hf_models
    import torch
    from transformers import MarianConfig, MarianMTModel

    small = hf_models.marian_folder(folder, d_model=32)  # tokenizer files, as the tests write them
    vocab = json.loads((small / "vocab.json").read_text(encoding="utf-8"))
    pad = 58100
    vocab.pop("<pad>")
    vocab.update({f"<extra_{i}>": i for i in range(len(vocab), pad)})
    vocab["<pad>"] = pad
    (small / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    config = MarianConfig(vocab_size=pad + 1, decoder_vocab_size=pad + 1, d_model=512, encoder_layers=6,
                          decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8, encoder_ffn_dim=2048,
                          decoder_ffn_dim=2048, max_position_embeddings=512, pad_token_id=pad,
                          decoder_start_token_id=pad, eos_token_id=0, forced_eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    hf = MarianMTModel(config).eval()
    hf.generation_config.bad_words_ids = [[pad]]
    hf.save_pretrained(small)
    return small


def gpt2_small(folder: Path) -> Path:
    import hf_models
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel

    small = hf_models.gpt2_folder(folder)
    torch.manual_seed(0)
    end = json.loads((small / "config.json").read_text())["eos_token_id"]
    config = GPT2Config(vocab_size=50257, bos_token_id=end, eos_token_id=end)  # GPT-2 small: 124M parameters
    GPT2LMHeadModel(config).eval().save_pretrained(small)
    return small


def onnx_equality(model_dir: str, onnx_dir: Path, sources: list[str]) -> dict:
    import torch

    import aiayn
    from aiayn.interop import onnx

    torch.set_num_threads(2)
    model = aiayn.load(model_dir, device="cpu")
    ours, aiayn_s = _timed(lambda: model.translate(sources, beam=1))
    theirs, onnx_s = _timed(lambda: onnx.greedy(onnx_dir, sources))
    same = sum(a == b for a, b in zip(ours, theirs, strict=True)) / len(sources)
    return {"sentences": len(sources), "same_as_aiayn": round(same, 4), "aiayn_seconds": aiayn_s,
            "onnx_seconds": onnx_s}  # fmt: skip


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="a trained aiayn translation model folder (or run folder)")
    parser.add_argument("--src", required=True, help="validation sources, one per line")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)

    import torch

    from aiayn.interop import export_model, import_model

    sources = Path(args.src).read_text(encoding="utf-8").splitlines()
    tmp = Path(tempfile.mkdtemp())
    results: dict = {"torch": torch.__version__, "import_seconds": {}, "export_seconds": {}}
    marian = opus_sized_marian(tmp / "marian")
    _, results["import_seconds"]["marian (opus-mt-en-de shapes, 74M)"] = _timed(import_model, marian, tmp / "m")
    gpt2 = gpt2_small(tmp / "gpt2")
    _, results["import_seconds"]["gpt2 small (124M)"] = _timed(import_model, gpt2, tmp / "g")
    for to in ("hf", "ctranslate2", "onnx"):
        _, results["export_seconds"][f"{to}: {Path(args.model).name}"] = _timed(export_model, args.model, to,
                                                                                 tmp / f"x-{to}")  # fmt: skip
        _, results["export_seconds"][f"{to}: imported marian"] = _timed(export_model, tmp / "m", to, tmp / f"m-{to}")
    results["onnx_greedy"] = onnx_equality(args.model, tmp / "x-onnx", sources)
    print(json.dumps(results, indent=1, ensure_ascii=False))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1, ensure_ascii=False), encoding="utf-8")


if __name__ == "__main__":
    main()
