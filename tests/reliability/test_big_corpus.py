"""Reliability battery B13 (slow tier): a 300 MB generated corpus through the data path of `aiayn train`.

benchmarks/bench_corpus.py generates the corpus (seeded pseudo-English, streamed to a temporary folder) and runs,
in a child process, what `aiayn train` runs on `data.train_text`: the tokenizer's read-through and training, the
token cache build, then one full pass of token_batches + collate and one of text_windows over the cache. Only what
needs no clock is asserted: the peak RSS growth over the child's baseline stays under 150 MB, the cache holds every
generated line (a language model keeps blank lines: their "\\n" is text), every batch is within its budget and
every example and every token is seen exactly once. The throughput half of B13 is the benchmark's
(`python benchmarks/bench_corpus.py`, 300 MB vs 30 MB).

RSS counts the pages of the memory-mapped token cache that the epoch has read (file-backed: page cache that the
kernel can drop, ~250 MB of the 300 MB corpus's cache): with them B13 fails, so that test is xfail(strict=True) with
the reason, and the same bound on the anonymous memory alone (what the process allocates) is asserted beside it.

    pytest -m slow tests/reliability/test_big_corpus.py
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks" / "bench_corpus.py"
MB = 300
RSS_GROWTH_LIMIT_MB = 150


@pytest.fixture(scope="module")
def big_run():
    proc = subprocess.run(
        [sys.executable, str(BENCH), "--mb", str(MB), "--baseline-mb", "0", "--json"],
        capture_output=True, text=True, timeout=1200, cwd=ROOT, env={**os.environ, "OMP_NUM_THREADS": "1"},
    )  # fmt: skip
    assert proc.stdout.strip(), f"bench_corpus.py printed nothing (rc {proc.returncode}):\n{proc.stderr[-3000:]}"
    return json.loads(proc.stdout)["runs"][str(MB)]


@pytest.mark.slow
@pytest.mark.xfail(
    strict=True,
    reason="B13 gap: one epoch reads every page of the memory-mapped token cache, and those file-backed pages count "
    "in RSS (~250 MB at 300 MB); fix proposed: drop them from the process (madvise MADV_DONTNEED) after each "
    "batch (the kernel's fault-around maps 64 KiB a miss, so a few batches map the whole cache again)",
)
def test_b13_peak_rss_growth_stays_under_150_mb_at_300_mb(big_run):
    stages = {name: stage["peak_rss_mib"] for name, stage in big_run["stages"].items()}
    assert big_run["rss_growth_mb"] < RSS_GROWTH_LIMIT_MB, (
        f"peak RSS grew by {big_run['rss_growth_mb']} MB over the baseline {big_run['baseline_rss_mib']} MiB "
        f"(anonymous memory: {big_run['anon_growth_mb']} MB); peak MiB per stage: {stages}"
    )


@pytest.mark.slow
def test_b13_anonymous_memory_growth_stays_under_150_mb_at_300_mb(big_run):
    """The peak of RssAnon over the child's baseline: the RSS without the token cache's mapped pages."""
    stages = {name: stage["peak_anon_mib"] for name, stage in big_run["stages"].items()}
    assert big_run["anon_growth_mb"] < RSS_GROWTH_LIMIT_MB, (
        f"anonymous memory grew by {big_run['anon_growth_mb']} MB over the baseline {big_run['baseline_anon_mib']} "
        f"MiB; peak MiB per stage: {stages}"
    )


@pytest.mark.slow
def test_b13_the_cache_holds_every_generated_line(big_run):
    generated, corpus = big_run["generated"], big_run["corpus"]
    assert generated["bytes"] >= MB * 1_000_000
    assert corpus["read"] == generated["lines"]
    assert corpus["kept"] == corpus["examples"] == generated["lines"]  # LM text: nothing is filtered
    assert corpus["skipped_empty"] == corpus["skipped_too_long"] == corpus["skipped_ratio"] == 0
    assert corpus["ids"] == corpus["sum_lengths"] > corpus["examples"]


@pytest.mark.slow
def test_b13_one_epoch_sees_every_example_and_token_once_within_the_budget(big_run):
    epoch, corpus = big_run["epoch"], big_run["corpus"]
    assert epoch["batches"] > 0
    assert epoch["batches_over_budget"] == 0
    assert epoch["examples_seen_once"] == corpus["examples"]
    assert epoch["examples_seen_otherwise"] == 0
    assert epoch["tokens_seen"] == corpus["ids"]


@pytest.mark.slow
def test_b13_the_windows_pass_predicts_every_token_after_the_first_once(big_run):
    windows, corpus = big_run["windows"], big_run["corpus"]
    assert windows["stream_tokens"] == corpus["ids"]
    assert windows["tokens_predicted"] == corpus["ids"] - 1
