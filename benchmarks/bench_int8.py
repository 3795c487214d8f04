"""int8 CPU decoding: BLEU, agreement and speed of `aiayn.load(DIR, quantize="int8")` against fp32 aiayn and
CTranslate2 (int8 and float32), on a trained translation model and a real validation set.

The model is exported once with `aiayn export --to ctranslate2` (CTranslate2 quantizes it to int8 when it loads,
compute_type="int8"). Each (engine, setting) runs in a fresh process with the same thread count, CTranslate2's
without torch (after torch has done real work in a process, CTranslate2 runs slower there). Settings: greedy and
beam 4 over the whole set, batched (aiayn's default 4,096 source tokens x beam per batch, CTranslate2 the same
token budget), and greedy one sentence at a time over the first 100 (there each engine with 1 and with --threads
threads, the faster kept). Scores: sacreBLEU of each output against
the references; "same as fp32": the share of sentences whose greedy output equals fp32 aiayn's.

    python benchmarks/bench_int8.py --model runs/multi30k-tiny \
        --src ../shared/data/multi30k/val.en --ref ../shared/data/multi30k/val.de --json benchmarks/out/int8.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ENGINES = ("aiayn_fp32", "aiayn_int8", "ct2_int8", "ct2_float32")
SETTINGS = {"greedy": (1, None), "beam4": (4, None), "greedy_b1": (1, 100)}  # (beam, sentences; None = all)
ALPHA = 0.6


def run_aiayn(job: dict) -> dict:
    import torch

    import aiayn

    torch.set_num_threads(job["threads"])
    model = aiayn.load(job["model"], device="cpu", quantize="int8" if job["engine"] == "aiayn_int8" else None)
    sources = job["sources"]
    model.translate(sources[:8], beam=job["beam"])  # warm-up
    start = time.perf_counter()
    if job["one_at_a_time"]:
        out = [model.translate([s], beam=job["beam"], alpha=ALPHA)[0] for s in sources]
    else:
        out = model.translate(sources, beam=job["beam"], alpha=ALPHA)
    return {"seconds": time.perf_counter() - start, "texts": out, "quantized": model.quantized}


def run_ct2(job: dict) -> dict:
    import ctranslate2

    translator = ctranslate2.Translator(job["ct2"], device="cpu", compute_type=job["engine"].removeprefix("ct2_"),
                                        intra_threads=job["threads"], inter_threads=1)  # fmt: skip
    banned = [[t] for t in json.loads((Path(job["ct2"]) / "config.json").read_text())["aiayn_never_emit"]]
    pieces = job["pieces"]

    def translate(batch, size):
        return translator.translate_batch(batch, beam_size=job["beam"], length_penalty=ALPHA, max_batch_size=size,
                                          batch_type="tokens", suppress_sequences=banned,
                                          max_decoding_length=256)  # fmt: skip

    translate(pieces[:8], 4096)  # warm-up
    start = time.perf_counter()
    if job["one_at_a_time"]:
        out = [translate([p], 4096)[0] for p in pieces]
    else:
        out = translate(pieces, 4096 // job["beam"] * job["beam"])
    return {"seconds": time.perf_counter() - start, "pieces": [r.hypotheses[0] for r in out]}


def worker(job: dict) -> dict:
    if job["engine"].startswith("ct2"):
        assert "torch" not in sys.modules
        return run_ct2(job)
    return run_aiayn(job)


def measure(job: dict) -> dict:
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False, encoding="utf-8") as f:
        json.dump(job, f, ensure_ascii=False)
    env = {**os.environ, "OMP_NUM_THREADS": str(job["threads"]), "MKL_NUM_THREADS": str(job["threads"])}
    proc = subprocess.run([sys.executable, __file__, "--worker", f.name], capture_output=True, text=True, env=env,
                          timeout=3600)  # fmt: skip
    os.unlink(f.name)
    if proc.returncode != 0:
        raise RuntimeError(f"{job['engine']} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _texts_of_pieces(tokenizer, tokens: list[str], rows: list[list[str]]) -> list[str]:
    from aiayn.decoding import detokenize

    index = {t: i for i, t in enumerate(tokens)}
    return [detokenize(tokenizer, [index[p] for p in row]) for row in rows]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="a trained translation model folder (or run folder)")
    parser.add_argument("--src", help="source sentences, one per line")
    parser.add_argument("--ref", help="references, line-aligned with --src")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--engines", default=",".join(ENGINES))
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(Path(args.worker).read_text(encoding="utf-8"))), ensure_ascii=False))
        return

    import torch

    from aiayn.evaluate import translation_scores
    from aiayn.interop import export_model
    from aiayn.interop.ct2 import ctranslate2_tokens
    from aiayn.modelfile import load

    model, tokenizer, _, folder = load(args.model)
    sources = Path(args.src).read_text(encoding="utf-8").splitlines()
    refs = Path(args.ref).read_text(encoding="utf-8").splitlines()
    tmp = Path(tempfile.mkdtemp())
    start = time.perf_counter()
    export_model(folder, "ctranslate2", tmp / "ct2")
    export_seconds = time.perf_counter() - start
    tokens = ctranslate2_tokens(tokenizer, model.config.vocab_size)
    pieces = [[tokens[i] for i in ids] for ids in tokenizer.encode_batch(sources)]
    results: dict = {"model": str(folder), "sentences": len(sources), "threads": args.threads,
                     "torch": torch.__version__, "ct2_export_seconds": round(export_seconds, 2),
                     "cells": {}}  # fmt: skip
    for name, (beam, n) in SETTINGS.items():
        n = n or len(sources)
        for engine in args.engines.split(","):
            job = {"engine": engine, "model": str(folder), "ct2": str(tmp / "ct2"), "beam": beam,
                   "one_at_a_time": name == "greedy_b1", "sources": sources[:n], "pieces": pieces[:n]}  # fmt: skip
            # One sentence at a time, each engine at its better thread count (CTranslate2 runs ~20x slower with
            # 2 threads than with 1 at batch 1 on a 2-core CPU); batched, at --threads.
            counts = sorted({1, args.threads}) if name == "greedy_b1" else [args.threads]
            runs = [(measure({**job, "threads": t}), t) for t in counts]
            r, threads = min(runs, key=lambda run: run[0]["seconds"])
            texts = r["texts"] if "texts" in r else _texts_of_pieces(tokenizer, tokens, r["pieces"])
            cell = {"seconds": round(r["seconds"], 2), "sentences_per_s": round(n / r["seconds"], 1),
                    "bleu": round(translation_scores(texts, refs[:n])["bleu"], 2), "threads": threads,
                    "texts": texts}  # fmt: skip
            if r.get("quantized"):
                cell["quantized"] = r["quantized"]
            results["cells"].setdefault(name, {})[engine] = cell
            print(f"{name:9s} {engine:12s} {cell['seconds']:7.2f} s  {cell['sentences_per_s']:7.1f} sent/s  "
                  f"BLEU {cell['bleu']:.2f}  ({threads} threads)", flush=True)  # fmt: skip
        _compare(results["cells"][name])
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, ensure_ascii=False, indent=1), encoding="utf-8")


def _compare(cells: dict) -> None:
    """Per engine: speed against fp32 aiayn, and the share of outputs equal to fp32 aiayn's."""
    base = cells.get("aiayn_fp32")
    if base is None:
        return
    for engine, cell in cells.items():
        same = sum(a == b for a, b in zip(cell["texts"], base["texts"], strict=True)) / len(base["texts"])
        cell["speed_vs_aiayn_fp32"] = round(base["seconds"] / cell["seconds"], 2)
        cell["same_as_aiayn_fp32"] = round(same, 4)
        print(f"          {engine:12s} {cell['speed_vs_aiayn_fp32']:.2f}x aiayn fp32, same output on {same:.1%}")


if __name__ == "__main__":
    main()
