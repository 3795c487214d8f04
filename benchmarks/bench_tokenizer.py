"""Tokenizer training on hostile input: one unbroken line of random lowercase letters (no space, no newline).

Without bounds BPE's time grows with the square of the longest word and its memory with the characters of the
distinct words; with them (tokenizer.max_word_chars, tokenizer.max_train_chars, aiayn.tokenizer_train's
LONG_RUN_CHARS) a 50 MB line must train in under 60 s with a peak RSS under 2 GB on 2 cores.

The file is generated in a temporary folder from a seed; `aiayn tokenizer train` runs in a child process, timed
(wall clock) and measured (peak RSS of the children, resource.getrusage(RUSAGE_CHILDREN)). One line is printed.

    python benchmarks/bench_tokenizer.py                      # 50 MB, vocab 8000
    python benchmarks/bench_tokenizer.py --mb 10 --vocab-size 4000 --seed 1
    python benchmarks/bench_tokenizer.py --via train          # `aiayn train`, one step of a tiny LM: tokenizer,
                                                              # token cache (encoding the whole line) and model
"""

from __future__ import annotations

import argparse
import random
import resource
import string
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BLOCK = 1 << 20  # characters generated at a time


def write_line(path: Path, n_chars: int, seed: int) -> None:
    """`n_chars` random lowercase letters, one line without a newline, from `seed`."""
    rng = random.Random(seed)
    letters = string.ascii_lowercase
    with open(path, "w", encoding="ascii") as f:
        left = n_chars
        while left:
            k = min(BLOCK, left)
            f.write("".join(rng.choices(letters, k=k)))
            left -= k


def command(via: str, data: Path, out: Path, vocab_size: int) -> list[str]:
    if via == "tokenizer":
        return [sys.executable, "-m", "aiayn", "tokenizer", "train", "--input", str(data),
                "--vocab-size", str(vocab_size), "--out", str(out / "tokenizer.json")]  # fmt: skip
    return [sys.executable, "-m", "aiayn", "train", "--data.train_text", str(data), "--model.arch", "lm",
            "--tokenizer.vocab_size", str(vocab_size), "--model.d_model", "32", "--model.n_heads", "2",
            "--model.n_decoder_layers", "1", "--model.d_ff", "64", "--model.max_len", "32", "--train.max_steps", "1",
            "--train.batch_size", "2", "--train.block_size", "16", "--train.out_dir", str(out / "run")]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=50.0, help="size of the line in MB (10^6 characters)")
    parser.add_argument("--vocab-size", type=int, default=8000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--via", choices=("tokenizer", "train"), default="tokenizer")
    args = parser.parse_args()
    n_chars = int(args.mb * 1_000_000)
    with tempfile.TemporaryDirectory(prefix="bench-tokenizer-") as tmp:
        data = Path(tmp) / "line.txt"
        write_line(data, n_chars, args.seed)
        cmd = command(args.via, data, Path(tmp), args.vocab_size)
        start = time.perf_counter()
        result = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # KiB on Linux
    status = "ok" if result.returncode == 0 else f"FAILED rc={result.returncode}: {result.stderr.strip()[-300:]}"
    print(
        f"bench_tokenizer: {args.mb:g} MB unbroken line (seed {args.seed}), vocab {args.vocab_size}, "
        f"via {args.via}: {wall:.1f} s wall, peak RSS {peak_mb:,.0f} MiB, {status}"
    )
    return 0 if result.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
