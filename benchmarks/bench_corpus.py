"""Reliability battery B13: a 300 MB generated corpus through the data path of `aiayn train`: memory and throughput.

Criterion: vocab build + one epoch streaming a 300 MB corpus keeps the peak RSS growth under 150 MB, and its
throughput (MB/s) is within 2x of a 30 MB corpus's.

Two seeded corpora of English-like text (pseudo-words from a fixed vocabulary with a Zipf-like distribution, lines
of 5-40 words, about one line in 500 blank) are generated in a temporary folder, streamed to disk block by block.
Each then goes through the pipeline in a child process of its own, the way `aiayn train` drives it
(aiayn.data.prepare.get_tokenizer and build_corpus, as `prepare` calls them):
    tokenizer  the read-through of the training file, then BPE training (tokenizer.max_train_chars, sampled evenly)
    cache      TokenCorpus.build: read, tokenize in chunks, append to the memory-mapped token cache
    epoch      one full pass of token_batches (train.max_tokens padded tokens a batch) + collate over the cache
    windows    (text only) one pass of text_windows over the token stream, as validation / perplexity read it
The child measures its own memory from /proc/self/status: the RSS after its imports (the baseline), the peak RSS
of each stage (VmHWM, reset between stages through /proc/self/clear_refs) and, sampled every 20 ms, the peak
anonymous and file-backed parts (the file-backed part is the token cache's memory-mapped pages: page cache the
kernel can drop, but counted in RSS). It also checks what needs no clock: the cache holds every generated line
minus the filtered ones, every batch is within the budget, every example is seen once and every token once.

    python benchmarks/bench_corpus.py                          # 300 MB vs 30 MB, language-model text
    python benchmarks/bench_corpus.py --mb 100 --baseline-mb 10 --seed 1
    python benchmarks/bench_corpus.py --kind pairs             # translation pairs (train_src / train_tgt)
    python benchmarks/bench_corpus.py --mb 300 --baseline-mb 0 --json   # one run, the JSON only (the slow test)
    python benchmarks/bench_corpus.py --release-every 1        # experiment: drop the cache's mapped pages from RSS
                                                               # after each batch (what `aiayn train` does not do)

Prints one JSON object: per run the generated lines, the stages (wall s, MB/s, peak RSS MiB), peak RSS, growth over
the baseline, the checks; then the two criteria. Exit status 1 when a check or a criterion fails.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

MB = 1_000_000  # the corpus sizes are in 10^6 bytes
WORDS = 4000  # distinct pseudo-words
BLANK_EVERY = 500  # about one line (one side of a pair) in this many is blank
LINES_PER_BLOCK = 20_000
RSS_GROWTH_LIMIT_MB = 150
THROUGHPUT_RATIO_LIMIT = 2.0


# -- generation ------------------------------------------------------------------------------------------------------


def vocabulary(rng) -> list[str]:
    """WORDS distinct pseudo-words of 1-4 syllables, shortest among the most frequent ranks (as in English)."""
    onsets = ["", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w", "st", "th", "pr", "ch"]
    vowels = ["a", "e", "i", "o", "u", "ea", "ou", "ai"]
    codas = ["", "", "n", "r", "s", "t", "l", "nd", "ng"]
    words: list[str] = []
    seen = set()
    while len(words) < WORDS:
        n = 1 + min(int(rng.integers(0, 1 + len(words) // 600)), 3)
        word = "".join(rng.choice(onsets) + rng.choice(vowels) + rng.choice(codas) for _ in range(n))
        if word not in seen:
            seen.add(word)
            words.append(word)
    return words


def generate(paths: list[Path], mb: float, seed: int) -> dict:
    """Write about `mb` MB of lines to paths[0] (and a line-aligned translation to paths[1] if given), a block at
    a time; returns the counts: lines, blank lines (text) or pairs with a blank side (pairs), bytes."""
    import numpy as np

    rng = np.random.default_rng(seed)
    words = np.array(vocabulary(rng), dtype=object)
    weights = 1.0 / (np.arange(1, WORDS + 1) + 2.7)  # Zipf-Mandelbrot, exponent 1
    weights /= weights.sum()
    other = words[rng.permutation(WORDS)]  # the "target language": another spelling of each word, reversed order
    target, lines, blank, size = len(paths) == 2, 0, 0, 0
    files = [open(p, "w", encoding="utf-8", newline="\n") for p in paths]  # noqa: SIM115
    try:
        while size < mb * MB:
            n_words = rng.integers(5, 41, size=LINES_PER_BLOCK)
            ids = rng.choice(WORDS, size=int(n_words.sum()), p=weights)
            cuts = np.cumsum(n_words)[:-1]
            blank_side = rng.integers(0, BLANK_EVERY * (2 if target else 1), size=LINES_PER_BLOCK)
            src_rows, tgt_rows = [], []
            for i, row in enumerate(np.split(ids, cuts)):
                src_rows.append("" if blank_side[i] == 0 else " ".join(words[row]))
                if target:
                    tgt_rows.append("" if blank_side[i] == 1 else " ".join(other[row[::-1]]))
            blank += int(np.count_nonzero(blank_side < (2 if target else 1)))
            for f, rows in zip(files, (src_rows, tgt_rows), strict=False):
                text = "\n".join(rows) + "\n"
                f.write(text)
                size += len(text) if f is files[0] else 0
            lines += LINES_PER_BLOCK
    finally:
        for f in files:
            f.close()
    return {"lines": lines, "blank": blank, "bytes": sum(p.stat().st_size for p in paths)}


# -- the child: one pipeline run, measured ---------------------------------------------------------------------------


def proc_status() -> dict[str, float]:
    """VmRSS, VmHWM, RssAnon, RssFile of this process, MiB."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
                out[key] = int(value.split()[0]) / 1024
    return out


class Sampler(threading.Thread):
    """Peak RssAnon and RssFile, sampled every 20 ms (VmHWM gives the exact peak of their sum)."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0.0, "RssFile": 0.0}
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.take()

    def take(self) -> None:
        now = proc_status()
        for key in self.peak:
            self.peak[key] = max(self.peak[key], now[key])

    def reset(self) -> dict[str, float]:
        self.take()
        peak, self.peak = self.peak, {"RssAnon": 0.0, "RssFile": 0.0}
        return peak


def reset_peak() -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0); False where that is not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def release_pages(corpus) -> None:
    """madvise(MADV_DONTNEED) on the cache's memory maps: their pages leave this process's RSS (they stay in the
    page cache, so reading them again is a minor fault). Not what `aiayn train` does: the fix --release-every tries."""
    import mmap

    for array in (corpus._src_ids, corpus._src_offsets, corpus._tgt_ids, corpus._tgt_offsets):
        if getattr(array, "_mmap", None) is not None:
            array._mmap.madvise(mmap.MADV_DONTNEED)


def epoch_pass(corpus, max_tokens: int, seed: int, release_every: int = 0) -> dict:
    """One pass of token_batches + collate over the whole cache, checking budget and coverage."""
    import numpy as np

    from aiayn.data.corpus import collate, token_batches

    seen = np.zeros(len(corpus), dtype=np.uint8)
    over, batches, tokens, padded = 0, 0, 0, 0
    for idx in token_batches(corpus.src_lengths, corpus.tgt_lengths, max_tokens, seed, 0):
        src, tgt = collate(corpus, idx)
        size = len(idx) * (max(src.shape[1], tgt.shape[1]) if corpus.paired else src.shape[1])
        over += size > max_tokens and len(idx) > 1  # a single example over the budget is a batch of its own
        seen[idx] += 1
        tokens += int((src > 2).sum()) + (int((tgt > 2).sum()) if corpus.paired else 0)  # ids without specials
        padded += src.numel() + (tgt.numel() if corpus.paired else 0)  # the padded tensors' elements
        batches += 1
        if release_every and batches % release_every == 0:
            release_pages(corpus)
    return {
        "batches": batches, "batches_over_budget": int(over), "examples_seen_once": int(np.count_nonzero(seen == 1)),
        "examples_seen_otherwise": int(np.count_nonzero(seen != 1)), "tokens_seen": tokens,
        "padding_fraction": round(1 - tokens / max(padded, 1), 4),
    }  # fmt: skip


def windows_pass(corpus, block: int, rows: int, release_every: int = 0) -> dict:
    """One pass of text_windows over the token stream: every token after the first predicted once."""
    from aiayn.data.corpus import token_stream
    from aiayn.data.loaders import text_windows

    stream = token_stream(corpus)
    predicted = windows = 0
    for (x,), y in text_windows(stream, block, rows, "cpu", whole=True):
        predicted += y.numel()
        windows += x.shape[0]
        if release_every and windows // rows % release_every == 0:
            release_pages(corpus)
    return {"windows": windows, "tokens_predicted": predicted, "stream_tokens": len(stream)}


def child(args: argparse.Namespace) -> dict:
    """Run the pipeline on args.files in args.work; return the measurements and the checks."""
    import numpy as np
    import torch

    from aiayn.config import DataConfig, TokenizerConfig
    from aiayn.data.prepare import build_corpus, get_tokenizer

    torch.set_num_threads(1)
    files = [str(p) for p in args.files]
    data = DataConfig(train_text=files[0]) if len(files) == 1 else DataConfig(train_src=files[0], train_tgt=files[1])
    cfg = TokenizerConfig(vocab_size=args.vocab_size)
    log = lambda message: None  # noqa: E731
    sampler = Sampler()
    sampler.start()
    base = proc_status()
    sampler.reset()
    can_reset = reset_peak()
    stages, results = {}, {}

    def stage(name: str, fn):
        start = time.perf_counter()
        results[name] = fn()
        wall = time.perf_counter() - start
        peak = sampler.reset()
        status = proc_status()
        stages[name] = {"wall_s": round(wall, 2), "peak_rss_mib": round(status["VmHWM"], 1),
                        "peak_anon_mib": round(peak["RssAnon"], 1), "peak_file_mib": round(peak["RssFile"], 1),
                        "end_rss_mib": round(status["VmRSS"], 1)}  # fmt: skip
        reset_peak()

    work = Path(args.work)
    stage("tokenizer", lambda: get_tokenizer(cfg, data, args.seed, work / "tokenizer.json", log))
    stage("cache", lambda: build_corpus(data, "train", results["tokenizer"], args.seed, work / "cache", log))
    corpus = results["cache"]
    stage("epoch", lambda: epoch_pass(corpus, args.max_tokens, args.seed, args.release_every))
    if not corpus.paired:
        stage("windows", lambda: windows_pass(corpus, args.block_size, args.rows, args.release_every))
    sampler.stop.set()
    ids = len(corpus._src_ids) + (len(corpus._tgt_ids) if corpus.paired else 0)
    lengths = int(np.sum(corpus.src_lengths, dtype=np.int64))
    lengths += int(np.sum(corpus.tgt_lengths, dtype=np.int64)) if corpus.paired else 0
    return {
        "baseline_rss_mib": round(base["VmRSS"], 1), "baseline_anon_mib": round(base["RssAnon"], 1),
        "peak_reset_supported": can_reset, "stages": stages, "vocab_size": results["tokenizer"].vocab_size,
        "corpus": {"examples": len(corpus), "ids": ids, "sum_lengths": lengths,
                   **{k: getattr(corpus.stats, k) for k in ("read", "kept", "skipped_empty", "skipped_too_long",
                                                            "skipped_ratio")}},
        "epoch": results["epoch"], "windows": results.get("windows"),
    }  # fmt: skip


# -- the parent ------------------------------------------------------------------------------------------------------


def run_one(args: argparse.Namespace, mb: float, tmp: Path) -> dict:
    """Generate a corpus of `mb` MB, run the pipeline on it in a child process, summarise, delete the files."""
    folder = Path(tempfile.mkdtemp(prefix=f"{mb:g}mb-", dir=tmp))
    paths = [folder / "train.txt"] if args.kind == "text" else [folder / "train.src", folder / "train.tgt"]
    start = time.perf_counter()
    generated = generate(paths, mb, args.seed)
    generated["generate_s"] = round(time.perf_counter() - start, 1)
    cmd = [sys.executable, os.path.abspath(__file__), "--child", "--work", str(folder / "run"),
           "--vocab-size", str(args.vocab_size), "--max-tokens", str(args.max_tokens), "--seed", str(args.seed),
           "--block-size", str(args.block_size), "--rows", str(args.rows),
           "--release-every", str(args.release_every), "--files", *map(str, paths)]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "RAYON_NUM_THREADS": os.environ.get("RAYON_NUM_THREADS", "2")}
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    for path in paths:
        path.unlink()
    if proc.returncode != 0:
        raise SystemExit(f"the child for {mb:g} MB failed (rc {proc.returncode}):\n{proc.stderr[-3000:]}")
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    run = {"mb": round(generated["bytes"] / MB, 1), "generated": generated, **run}
    pipeline = sum(s["wall_s"] for s in run["stages"].values())
    for s in run["stages"].values():
        s["mb_per_s"] = round(run["mb"] / max(s["wall_s"], 1e-9), 2)
    peak = max(s["peak_rss_mib"] for s in run["stages"].values())
    peak_anon = max(s["peak_anon_mib"] for s in run["stages"].values())
    run.update(pipeline_s=round(pipeline, 1), mb_per_s=round(run["mb"] / pipeline, 2), peak_rss_mib=peak,
               rss_growth_mb=round((peak - run["baseline_rss_mib"]) * 1.048576, 1),
               anon_growth_mb=round((peak_anon - run["baseline_anon_mib"]) * 1.048576, 1),
               checks=checks(run, generated, args.kind))  # fmt: skip
    return run


def checks(run: dict, generated: dict, kind: str) -> dict[str, bool]:
    """The untimed checks of one run."""
    c, e = run["corpus"], run["epoch"]
    filtered = generated["blank"] if kind == "pairs" else 0  # LM text keeps a blank line: its "\n" is text
    out = {
        "read_every_line": c["read"] == generated["lines"],
        "kept_lines_minus_filtered": c["kept"] == c["examples"] == generated["lines"] - filtered,
        "filtered_only_blank": c["skipped_empty"] == filtered and c["skipped_too_long"] == c["skipped_ratio"] == 0,
        "ids_match_lengths": c["ids"] == c["sum_lengths"],
        "batches_within_budget": e["batches_over_budget"] == 0,
        "every_example_once": e["examples_seen_once"] == c["examples"] and e["examples_seen_otherwise"] == 0,
        "every_token_once": e["tokens_seen"] == c["ids"],
    }
    if run.get("windows"):
        w = run["windows"]
        out["windows_cover_the_stream"] = w["stream_tokens"] == c["ids"] and w["tokens_predicted"] == c["ids"] - 1
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--mb", type=float, default=300.0, help="size of the big corpus, MB (10^6 bytes; pairs: of the source file)"
    )
    parser.add_argument("--baseline-mb", type=float, default=30.0, help="size of the baseline corpus; 0: none")
    parser.add_argument("--kind", choices=("text", "pairs"), default="text", help="train_text or train_src/tgt")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=8000, help="tokenizer.vocab_size (aiayn's default)")
    parser.add_argument("--max-tokens", type=int, default=4096, help="train.max_tokens: the batch budget")
    parser.add_argument("--block-size", type=int, default=256, help="train.block_size for the windows pass")
    parser.add_argument("--rows", type=int, default=32, help="windows per batch in the windows pass")
    parser.add_argument(
        "--release-every",
        type=int,
        default=0,
        metavar="N",
        help="experiment: drop the cache's mapped pages from RSS every N batches of the epoch",
    )
    parser.add_argument("--json", action="store_true", help="print only the JSON result")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--work", help=argparse.SUPPRESS)
    parser.add_argument("--files", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args)))
        return 0
    with tempfile.TemporaryDirectory(prefix="bench-corpus-") as tmp:
        runs = {f"{mb:g}": run_one(args, mb, Path(tmp)) for mb in (args.baseline_mb, args.mb) if mb > 0}
    big = runs[f"{args.mb:g}"]
    criteria = {
        "rss_growth_mb": big["rss_growth_mb"],
        "rss_growth_ok": big["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB,
        "anon_growth_mb": big["anon_growth_mb"],  # the same, without the memory-mapped cache's pages
        "anon_growth_ok": big["anon_growth_mb"] < RSS_GROWTH_LIMIT_MB,
    }
    if args.baseline_mb > 0:
        ratio = runs[f"{args.baseline_mb:g}"]["mb_per_s"] / big["mb_per_s"]
        criteria.update(throughput_ratio=round(ratio, 2), throughput_ok=ratio <= THROUGHPUT_RATIO_LIMIT)
    ok = all(v for k, v in criteria.items() if k.endswith("_ok") and k != "anon_growth_ok") and all(
        all(r["checks"].values()) for r in runs.values()
    )
    result = {"kind": args.kind, "seed": args.seed, "runs": runs, "criteria": criteria, "ok": ok}
    if not args.json:
        for name, r in runs.items():
            stages = ", ".join(f"{k} {s['wall_s']} s" for k, s in r["stages"].items())
            print(f"{name} MB: {stages}; {r['mb_per_s']} MB/s; peak RSS {r['peak_rss_mib']} MiB, "
                  f"growth {r['rss_growth_mb']} MB (anon {r['anon_growth_mb']} MB)", file=sys.stderr)  # fmt: skip
    print(json.dumps(result, indent=1))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
