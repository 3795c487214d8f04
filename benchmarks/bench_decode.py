"""Decoding speed: aiayn against Hugging Face `generate` and CTranslate2, with the same weights and inputs.

Cells: greedy batch 1, beam 4 batch 1, greedy batch 64, beam 4 batch 64. Every input has 14 tokens (13 random ids
and EOS) and every engine is forced to produce exactly 32 new tokens per sentence (EOS is forbidden before the
32nd token and the limit is 32), so all engines do the same work; the figure is new tokens per second (batch x 32
/ seconds; with a beam, the tokens of the best hypothesis).

The weights: one aiayn Transformer per config (random, seeded; or a trained model folder with --model), written
as an aiayn model folder, exported with `aiayn.interop.hf.to_marian` to a Marian folder (what HF `generate`
runs), and that Marian folder converted by CTranslate2's Transformers converter. CTranslate2's Marian loader
assumes Marian's decoder start (a zero embedding, and one pad row to drop from the vocabulary); aiayn's decoder
starts from BOS, so the conversion uses the BART loader's decoder setup instead (`_Ct2Loader` below): the same
function as the exported model, checked by comparing greedy outputs of every engine before timing.

Each (engine, config, cell) runs in a fresh process with 2 threads (`--threads 1,2` measures every engine with
1 and with 2). CTranslate2's processes never import torch: after torch has done real work in a process,
CTranslate2's batch-1 decoding there runs 2-7x slower.

    pip install ctranslate2                       # not a dependency of aiayn; only this benchmark needs it
    python benchmarks/bench_decode.py --json benchmarks/out/decode.json
    python benchmarks/bench_decode.py --configs small --threads 1,2 --json benchmarks/out/decode-small.json
    python benchmarks/bench_decode.py --configs small --threads 1,2 --compile   # aiayn's steps compiled (warm-up)
    python benchmarks/bench_decode.py --configs small --engines aiayn --cells greedy_b1 --profile
    AIAYN_BENCH_LAYOUT=training python benchmarks/bench_decode.py ...   # aiayn without `inference_layout`
    AIAYN_GEMM=mkl python benchmarks/bench_decode.py ...   # aiayn on MKL even where oneDNN measured faster
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

THREADS = 2  # the setting; --threads 1,2 measures each engine with each count
SOURCE_LEN = 14  # tokens per input, EOS included
NEW_TOKENS = 32
VOCAB = 8000
SEED = 0
CONFIGS = {
    "small": {"d_model": 256, "n_heads": 4, "n_encoder_layers": 3, "n_decoder_layers": 3, "d_ff": 1024},
    "base": {"d_model": 512, "n_heads": 8, "n_encoder_layers": 6, "n_decoder_layers": 6, "d_ff": 2048},
}
CELLS = {"greedy_b1": (1, 1), "beam4_b1": (4, 1), "greedy_b64": (1, 64), "beam4_b64": (4, 64)}
ENGINES = ("aiayn", "hf", "ct2_float32", "ct2_int8")
MIN_SECONDS = 3.0  # each cell repeats its batch until this much time has been measured


def inputs(batch: int, vocab: int) -> list[list[int]]:
    """`batch` sources of SOURCE_LEN ids: random non-special ids, then EOS (id 2). The same in every engine."""
    import random

    rng = random.Random(SEED + batch)
    return [[rng.randrange(4, vocab) for _ in range(SOURCE_LEN - 1)] + [2] for _ in range(batch)]


# ----------------------------------------------------------------------------------------------- preparation
def prepare(config: str, folder: Path, model_dir: str | None) -> dict:
    """Write the aiayn folder, the Marian export and the CTranslate2 conversion of one config; return paths."""
    import torch

    from aiayn import ModelConfig
    from aiayn.interop.hf import to_marian
    from aiayn.model import Transformer
    from aiayn.train import checkpoint as ckpt

    torch.manual_seed(SEED)
    if model_dir:
        from aiayn.inference import load

        model = load(model_dir, device="cpu").model
    else:
        model = Transformer(ModelConfig(vocab_size=VOCAB, dropout=0.0, max_len=256, **CONFIGS[config])).eval()
    aiayn_dir, marian_dir, ct2_dir = folder / "aiayn", folder / "marian", folder / "ct2"
    ckpt.save_checkpoint(aiayn_dir, model=model, config={"model": model.config.to_dict()}, tokenizer_json=b"{}")
    hf = to_marian(model).eval()
    hf.save_pretrained(marian_dir)
    vocab = [f"<t{i}>" for i in range(model.config.vocab_size)]
    vocab[:4] = ["<pad>", "<s>", "</s>", "<unk>"]
    (marian_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    subprocess.run(
        [sys.executable, __file__, "--convert", str(marian_dir), str(ct2_dir)], check=True, env=_env(), timeout=600
    )
    return {"aiayn": str(aiayn_dir), "marian": str(marian_dir), "ct2": str(ct2_dir), "vocab": model.config.vocab_size}


def convert(marian_dir: str, out_dir: str) -> None:
    """CTranslate2's Transformers converter on the Marian export, with aiayn's BOS start (see the docstring)."""
    import ctranslate2
    import transformers
    from ctranslate2.converters import transformers as ct2t

    vocab = json.loads((Path(marian_dir) / "vocab.json").read_text(encoding="utf-8"))

    class _Ct2Loader(ct2t.BartLoader):
        @property
        def architecture_name(self):
            return "MarianMTModel"

        def get_model_spec(self, model):
            model.config.normalize_before = False
            model.config.normalize_embedding = False
            return super().get_model_spec(model)

        def get_vocabulary(self, model, tokenizer):
            return vocab

        def set_config(self, config, model, tokenizer):
            config.bos_token, config.eos_token, config.unk_token = "<s>", "</s>", "<unk>"
            config.decoder_start_token = "<s>"

    ct2t._MODEL_LOADERS["MarianConfig"] = _Ct2Loader()
    model = transformers.MarianMTModel.from_pretrained(marian_dir)
    converter = ct2t.TransformersConverter(marian_dir)
    converter.load_model = lambda *a, **k: model
    converter.load_tokenizer = lambda *a, **k: None
    converter.convert(out_dir, force=True)
    assert ctranslate2.contains_model(out_dir)


# ------------------------------------------------------------------------------------------------- workers
def run_aiayn(paths: dict, beam: int, batch: int, profile: bool = False, compile: bool = False) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import yaml

    from aiayn import ModelConfig
    from aiayn.decoding import beam_search, greedy_search
    from aiayn.inference.onednn import pack_linears
    from aiayn.machine import gemm_choice
    from aiayn.model import build_model, compile_decoding, inference_layout
    from aiayn.train import checkpoint as ckpt

    # The folder's weights and config (its tokenizer is a stand-in: the inputs are ids).
    config = yaml.safe_load((Path(paths["aiayn"]) / "config.yaml").read_text(encoding="utf-8"))
    model = build_model(ModelConfig.from_dict(config["model"])).eval()
    ckpt.load_weights(model, paths["aiayn"])
    if os.environ.get("AIAYN_BENCH_LAYOUT", "inference") == "inference":
        inference_layout(model)  # what aiayn.load does on the CPU
        if gemm_choice().path == "onednn":  # and where oneDNN measured faster (AIAYN_GEMM=mkl|onednn forces)
            pack_linears(model)
    if compile:
        compile_decoding(model)  # what aiayn.load(..., compile=True) does; compiled in the untimed warm-up
    src = torch.tensor(inputs(batch, paths["vocab"]))

    def once():
        if beam == 1:
            return [h.tokens for h in greedy_search(model, src, max_len=NEW_TOKENS, min_len=NEW_TOKENS)]
        out = beam_search(model, src, beam_size=beam, alpha=0.6, max_len=NEW_TOKENS, min_len=NEW_TOKENS)
        return [h[0].tokens for h in out]

    if profile:
        once()
        with torch.profiler.profile() as prof:
            once()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25), file=sys.stderr)
    return _time(once)


def run_hf(paths: dict, beam: int, batch: int) -> dict:
    import torch

    torch.set_num_threads(THREADS)
    import transformers

    model = transformers.MarianMTModel.from_pretrained(paths["marian"]).eval()
    ids = torch.tensor(inputs(batch, paths["vocab"]))

    def once():
        with torch.no_grad():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), num_beams=beam, do_sample=False,
                max_new_tokens=NEW_TOKENS, min_new_tokens=NEW_TOKENS, length_penalty=0.6, early_stopping=True,
                decoder_start_token_id=1, eos_token_id=2, pad_token_id=0, bad_words_ids=None,
            )  # fmt: skip
        return [row[1:].tolist() for row in out]  # drop the decoder start token

    return _time(once)


def run_ct2(paths: dict, beam: int, batch: int, compute_type: str) -> dict:
    assert "torch" not in sys.modules
    import ctranslate2

    translator = ctranslate2.Translator(
        paths["ct2"], device="cpu", compute_type=compute_type, intra_threads=THREADS, inter_threads=1
    )
    vocab = [f"<t{i}>" for i in range(paths["vocab"])]
    vocab[:4] = ["<pad>", "<s>", "</s>", "<unk>"]
    index = {t: i for i, t in enumerate(vocab)}
    tokens = [[vocab[i] for i in row] for row in inputs(batch, paths["vocab"])]

    def once():
        out = translator.translate_batch(
            tokens, beam_size=beam, length_penalty=0.6, max_decoding_length=NEW_TOKENS,
            min_decoding_length=NEW_TOKENS, max_batch_size=batch,
        )  # fmt: skip
        return [[index[t] for t in r.hypotheses[0]] for r in out]

    assert "torch" not in sys.modules
    return _time(once)


def _time(once) -> dict:
    outputs = once()  # warm-up (and the outputs, for the cross-engine check); compiles, with --compile
    runs, start = 0, time.perf_counter()
    while True:
        once()
        runs += 1
        elapsed = time.perf_counter() - start
        if elapsed >= MIN_SECONDS:
            break
    tokens = sum(len(o) for o in outputs)
    return {"tokens_per_s": tokens * runs / elapsed, "runs": runs, "seconds": elapsed, "outputs": outputs}


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": str(THREADS), "MKL_NUM_THREADS": str(THREADS)}


def measure(engine: str, paths: dict, cell: str, profile: bool, compile: bool = False) -> dict:
    """One cell in a fresh process with THREADS threads; returns its JSON result."""
    args = [sys.executable, __file__, "--worker", engine, "--paths", json.dumps(paths), "--cells", cell]
    args += ["--threads", str(THREADS)]
    if profile:
        args.append("--profile")
    if compile:
        args.append("--compile")
    proc = subprocess.run(args, capture_output=True, text=True, env=_env(), timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{engine} {cell} failed:\n{proc.stderr[-3000:]}")
    if profile:
        print(proc.stderr, file=sys.stderr)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", default="small,base")
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--cells", default=",".join(CELLS))
    parser.add_argument("--model", default=None, help="a trained aiayn model folder instead of random weights")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--threads", default="2", help="threads per engine; a list (1,2) measures each")
    parser.add_argument("--profile", action="store_true", help="torch.profiler table of one aiayn run (stderr)")
    parser.add_argument(
        "--compile", action="store_true", help="aiayn: compiled decoding steps (aiayn.model.compile_decoding)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--paths", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--convert", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    global THREADS

    if args.convert:
        convert(*args.convert)
        return
    if args.worker:
        THREADS = int(args.threads)
        paths = json.loads(args.paths)
        beam, batch = CELLS[args.cells]
        if args.worker == "aiayn":
            result = run_aiayn(paths, beam, batch, args.profile, args.compile)
        elif args.worker == "hf":
            result = run_hf(paths, beam, batch)
        else:
            result = run_ct2(paths, beam, batch, args.worker.removeprefix("ct2_"))
        print(json.dumps(result))
        return

    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for config in args.configs.split(","):
            paths = prepare(config, Path(tmp) / config, args.model)
            for threads, cell in itertools.product(args.threads.split(","), args.cells.split(",")):
                THREADS = int(threads)
                row = {"config": config, "cell": cell, "threads": THREADS}
                outputs = {}
                for engine in args.engines.split(","):
                    r = measure(engine, paths, cell, args.profile and engine == "aiayn", args.compile)
                    row[engine] = round(r["tokens_per_s"], 1)
                    outputs[engine] = r["outputs"]
                    print(
                        f"{config:5s} {cell:10s} {THREADS} thr {engine:12s} {r['tokens_per_s']:10,.1f} tokens/s",
                        flush=True,
                    )
                # Same weights, same inputs: greedy outputs must agree (int8 is quantised: reported, not required).
                ref = outputs.get("aiayn")
                row["same_output"] = {e: (o == ref) for e, o in outputs.items() if ref is not None and e != "aiayn"}
                results.append(row)
    print(json.dumps(results, indent=1))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
