"""The tokenized corpus cache, its filters and stats, batches by token count, and padding into tensors."""

import json
import os
import time
import tracemalloc

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.data import (
    CorpusStats,
    DataError,
    TokenCorpus,
    cache_key,
    collate,
    read_parallel,
    token_batches,
    token_stream,
)


def encode_batch(texts):
    """One id per character, never a special id."""
    return [[4 + (ord(c) % 200) for c in t] for t in texts]


def ids(text):
    return encode_batch([text])[0]


def build(tmp_path, examples, *, max_tokens=None, max_ratio=None, name="train", chunk=4096, folder="cache"):
    return TokenCorpus.build(
        examples, encode_batch, tmp_path / folder, max_tokens=max_tokens, max_ratio=max_ratio, name=name, chunk=chunk
    )


PAIRS = [(1, "hello", "hallo"), (2, "a", "b"), (3, "the cat sat", "die Katze sass"), (4, "x y", "x")]


# ----------------------------------------------------------------------------------------------- build / open


@pytest.mark.parametrize("chunk", [1, 3, 4096])
def test_build_open_round_trip_pairs(tmp_path, chunk):
    corpus = build(tmp_path, PAIRS, chunk=chunk)
    assert len(corpus) == 4 and corpus.paired
    for i, (_, src, tgt) in enumerate(PAIRS):
        assert corpus.src(i).tolist() == ids(src)
        assert corpus.tgt(i).tolist() == ids(tgt)
    assert corpus.src(-1).tolist() == ids("x y")
    assert corpus.src_lengths.dtype == np.int32 and corpus.src_lengths.tolist() == [5, 1, 11, 3]
    assert corpus.tgt_lengths.dtype == np.int32 and corpus.tgt_lengths.tolist() == [5, 1, 14, 1]
    assert corpus.line_numbers.tolist() == [1, 2, 3, 4]
    assert corpus.src(0).dtype == np.int32

    reopened = TokenCorpus.open(tmp_path / "cache")
    assert len(reopened) == 4
    for i in range(4):
        assert np.array_equal(reopened.src(i), corpus.src(i)) and np.array_equal(reopened.tgt(i), corpus.tgt(i))
    assert reopened.stats == corpus.stats
    assert isinstance(reopened.src_lengths, np.memmap)
    with pytest.raises(IndexError):
        corpus.src(4)


def test_build_writes_only_the_cache_folder_atomically(tmp_path):
    build(tmp_path, PAIRS)
    assert sorted(os.listdir(tmp_path)) == ["cache"]  # no temporary folder is left next to it
    names = set(os.listdir(tmp_path / "cache"))
    assert {"meta.json", "stats.json", "src.ids", "tgt.ids", "src.offsets", "tgt.offsets"} <= names
    stats = json.loads((tmp_path / "cache" / "stats.json").read_text())
    assert stats["kept"] == 4 and stats["read"] == 4


def test_build_replaces_an_existing_folder(tmp_path):
    build(tmp_path, PAIRS)
    corpus = build(tmp_path, [(7, "new", "neu")])
    assert len(corpus) == 1 and corpus.src(0).tolist() == ids("new") and corpus.line_numbers.tolist() == [7]
    assert len(TokenCorpus.open(tmp_path / "cache")) == 1
    assert sorted(os.listdir(tmp_path)) == ["cache"]


def test_reader_error_during_build_leaves_nothing_behind(tmp_path):
    src = tmp_path / "a.en"
    tgt = tmp_path / "a.de"
    src.write_text("a\nb\nc\n")
    tgt.write_text("a\nb\n")
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(DataError, match=f"line count mismatch: {src} has 3 lines, {tgt} has 2"):
        TokenCorpus.build(
            read_parallel(src, tgt), encode_batch, out / "cache", max_tokens=None, max_ratio=None, name=str(src)
        )
    assert os.listdir(out) == []


def test_monolingual_corpus_and_token_stream(tmp_path):
    corpus = build(tmp_path, [(1, "abc", None), (2, "", None), (3, "de", None)], name="lm")
    assert not corpus.paired and corpus.tgt_lengths is None
    assert corpus.src_lengths.tolist() == [3, 2]
    assert corpus.tgt(1).tolist() == ids("de")  # the one side
    stream = token_stream(corpus)
    assert stream.tolist() == ids("abc") + ids("de")
    assert isinstance(stream, np.memmap) and not stream.flags.writeable
    assert np.shares_memory(stream, corpus.src(1))  # a view of the same map, not a copy
    assert corpus.stats.summary() == "lm: kept 2 of 3 lines; skipped 1 empty (first: line 2)"
    with pytest.raises(ValueError, match="monolingual"):
        token_stream(build(tmp_path, PAIRS, folder="pairs"))


def test_mixing_pairs_and_single_texts_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="line 2: examples mix pairs and single texts"):
        build(tmp_path, [(1, "a", "b"), (2, "c", None)])


def test_open_errors(tmp_path):
    with pytest.raises(DataError, match="is not a readable token cache"):
        TokenCorpus.open(tmp_path / "missing")
    build(tmp_path, PAIRS)
    ids_file = tmp_path / "cache" / "src.ids"
    ids_file.write_bytes(ids_file.read_bytes()[:-4])
    with pytest.raises(DataError, match=r"cache .* is damaged \(src.ids has 76 bytes, expected 80\); delete it"):
        TokenCorpus.open(tmp_path / "cache")
    meta = tmp_path / "cache" / "meta.json"
    meta.write_text(json.dumps({**json.loads(meta.read_text()), "format": 999}))
    with pytest.raises(DataError, match="format 999"):
        TokenCorpus.open(tmp_path / "cache")


# ----------------------------------------------------------------------------------------------- filters and stats


def test_empty_pairs_are_skipped_and_counted_with_the_first_line(tmp_path):
    examples = [(1, "a", "b"), (2, "", "x"), (3, "c", "d"), (4, "y", ""), (5, "", ""), (6, "e", "f")]
    corpus = build(tmp_path, examples, chunk=2)
    stats = corpus.stats
    assert (stats.read, stats.kept, stats.skipped_empty, stats.first_empty) == (6, 3, 3, 2)
    assert corpus.line_numbers.tolist() == [1, 3, 6]
    assert stats.summary() == "train: kept 3 of 6 pairs; skipped 3 empty (first: line 2)"


def test_empty_after_tokenizing_counts_as_empty(tmp_path):
    def drop_q(texts):
        return [[4 + ord(c) % 200 for c in t if c != "q"] for t in texts]

    corpus = TokenCorpus.build(
        [(1, "a", "b"), (2, "qq", "x"), (3, "", "z")], drop_q, tmp_path / "c", max_tokens=None, max_ratio=None, name="t"
    )
    assert (corpus.stats.kept, corpus.stats.skipped_empty, corpus.stats.first_empty) == (1, 2, 2)


def test_max_tokens_counts_the_special_tokens(tmp_path):
    # max_tokens 6: a source of up to 5 ids (+ EOS) and a target of up to 4 ids (+ BOS, EOS) fit.
    examples = [
        (1, "aaaaa", "bbbb"),  # 6 and 6: kept
        (2, "aaaaaa", "b"),  # source 6 + 1 = 7: too long
        (3, "a", "bbbbb"),  # target 5 + 2 = 7: too long
        (4, "aa", "bb"),  # kept
        (5, "", "bbbbbbbbbb"),  # empty first: counted as empty, not as too long
    ]
    corpus = build(tmp_path, examples, max_tokens=6)
    stats = corpus.stats
    assert corpus.line_numbers.tolist() == [1, 4]
    assert (stats.skipped_empty, stats.skipped_too_long, stats.first_too_long, stats.skipped_ratio) == (1, 2, 2, 0)
    assert stats.summary() == (
        "train: kept 2 of 5 pairs; skipped 1 empty (first: line 5), 2 longer than 6 tokens (first: line 2)"
    )


def test_length_ratio_filter(tmp_path):
    examples = [
        (1, "abc", "a"),  # 3 / 1 = 3.0: kept (not > 3)
        (2, "abcd", "a"),  # 4.0: skipped
        (3, "a", "abcdefgh"),  # 8.0: skipped (either direction)
        (4, "abcdefghijklmnop", "a"),  # too long first: counted there, not as ratio
        (5, "ab", "abcde"),  # 2.5: kept
    ]
    corpus = build(tmp_path, examples, max_tokens=10, max_ratio=3.0)
    stats = corpus.stats
    assert corpus.line_numbers.tolist() == [1, 5]
    assert (stats.skipped_ratio, stats.first_ratio, stats.skipped_too_long, stats.first_too_long) == (2, 2, 1, 4)
    assert stats.summary() == (
        "train: kept 2 of 5 pairs; skipped 0 empty, 1 longer than 10 tokens (first: line 4), "
        "2 with length ratio > 3.0 (first: line 2)"
    )
    assert len(build(tmp_path, examples, folder="off")) == 5  # both filters off


def test_first_line_is_the_first_across_chunks(tmp_path):
    examples = [(i, "a" * (20 if i in (5, 9) else 1), "b") for i in range(1, 12)]
    stats = build(tmp_path, examples, max_tokens=10, chunk=4).stats
    assert (stats.skipped_too_long, stats.first_too_long, stats.kept) == (2, 5, 9)


def test_summary_example_format():
    stats = CorpusStats(
        name="train", max_tokens=256, max_ratio=3.0, read=29_000, kept=28_990, skipped_empty=3, first_empty=37
    )
    stats.skipped_too_long, stats.first_too_long = 7, 120
    assert stats.summary() == (
        "train: kept 28,990 of 29,000 pairs; skipped 3 empty (first: line 37), "
        "7 longer than 256 tokens (first: line 120), 0 with length ratio > 3.0"
    )


def test_nothing_kept_is_a_data_error(tmp_path):
    with pytest.raises(DataError) as info:
        build(tmp_path, [(1, "", "a"), (2, "aaaaaaaa", "b")], max_tokens=4, name="data/train.tsv")
    assert str(info.value) == (
        "no training examples in data/train.tsv (read 2 lines: kept 0 of 2 pairs; skipped 1 empty (first: line 1), "
        "1 longer than 4 tokens (first: line 2))"
    )
    with pytest.raises(DataError) as info:
        build(tmp_path, [], name="empty.en")
    assert str(info.value) == "no training examples in empty.en (it has no lines)"
    assert os.listdir(tmp_path) == []


def test_building_200k_lines_keeps_memory_flat(tmp_path):
    n = 200_000
    text = "sentence number {:07d} with some text"  # 38 characters: 38 ids of 4 bytes per line, 30 MB in all

    def examples():
        for i in range(n):
            yield i + 1, text.format(i), None

    start = time.perf_counter()
    tracemalloc.start()
    try:
        corpus = build(tmp_path, examples(), name="big")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 30
    stream = token_stream(corpus)
    assert len(corpus) == n and stream.nbytes == n * 38 * 4
    assert peak < 10_000_000, f"peak {peak:,} bytes while building a corpus of {stream.nbytes:,} bytes of ids"
    assert corpus.src(123_456).tolist() == ids(text.format(123_456))


# ----------------------------------------------------------------------------------------------- cache key


def test_cache_key_follows_the_files_and_the_settings(tmp_path):
    a, b = tmp_path / "a.en", tmp_path / "a.de"
    a.write_text("x\n")
    b.write_text("y\n")
    key = cache_key([a, b], "bpe:123 max_tokens=256")
    assert len(key) == 16 and int(key, 16) >= 0
    assert cache_key([str(a), b], "bpe:123 max_tokens=256") == key  # str or Path, same file
    assert cache_key([b, a], "bpe:123 max_tokens=256") != key
    assert cache_key([a, b], "bpe:123 max_tokens=128") != key
    a.write_text("x\nz\n")  # another size
    key2 = cache_key([a, b], "bpe:123 max_tokens=256")
    assert key2 != key
    st_a = a.stat()
    os.utime(a, ns=(st_a.st_atime_ns, st_a.st_mtime_ns + 1_000_000_000))  # same size, touched
    assert cache_key([a, b], "bpe:123 max_tokens=256") != key2
    with pytest.raises(DataError, match="no such file"):
        cache_key([tmp_path / "nope"], "")


# ----------------------------------------------------------------------------------------------- batches


def padded_size(src_lengths, tgt_lengths, batch):
    if tgt_lengths is None:
        return len(batch) * (int(src_lengths[batch].max()) + 1)
    return len(batch) * max(int(src_lengths[batch].max()) + 1, int(tgt_lengths[batch].max()) + 2)


def check_batches(batches, src_lengths, tgt_lengths, max_tokens):
    everything = np.concatenate(batches)
    assert np.array_equal(np.sort(everything), np.arange(len(src_lengths)))  # every index exactly once
    for batch in batches:
        assert batch.dtype == np.int64 and len(batch) >= 1
        if padded_size(src_lengths, tgt_lengths, batch) > max_tokens:
            assert len(batch) == 1  # only a single example longer than max_tokens may exceed it


def test_token_batches_cover_every_index_within_the_budget():
    rng = np.random.default_rng(0)
    src = rng.integers(1, 80, 5000).astype(np.int32)
    tgt = rng.integers(1, 80, 5000).astype(np.int32)
    src[17], tgt[99] = 500, 700  # longer than max_tokens on their own
    batches = token_batches(src, tgt, 400, seed=1, epoch=0)
    check_batches(batches, src, tgt, 400)
    alone = [b for b in batches if padded_size(src, tgt, b) > 400]
    assert sorted(int(b[0]) for b in alone) == [17, 99]
    # Sorting by length keeps padding low: the batches are mostly full.
    used = sum(padded_size(src, tgt, b) for b in batches)
    assert used / (len(batches) * 400) > 0.85


def test_token_batches_are_deterministic_per_seed_and_epoch():
    rng = np.random.default_rng(1)
    src = rng.integers(1, 50, 3000)
    tgt = rng.integers(1, 50, 3000)

    def run(seed, epoch):
        return [b.tolist() for b in token_batches(src, tgt, 1000, seed=seed, epoch=epoch)]

    assert run(3, 5) == run(3, 5)
    assert run(3, 6) != run(3, 5)
    assert run(4, 5) != run(3, 5)
    assert sorted(map(sorted, run(3, 6))) != sorted(map(sorted, run(3, 5)))  # other groups, not only another order
    # Independent of the arrays' dtype and of any global random state.
    np.random.seed(123)
    torch.manual_seed(123)
    assert [b.tolist() for b in token_batches(src.astype(np.int32), tgt.astype(np.int16), 1000, 3, 5)] == run(3, 5)


def test_token_batches_put_similar_lengths_together():
    src = np.array([1, 9, 1, 9, 1, 9, 1, 9])
    tgt = np.array([1, 9, 1, 9, 1, 9, 1, 9])
    batches = token_batches(src, tgt, 44, seed=0, epoch=0)  # 4 short (width 3) or 4 long (width 11) fit exactly
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 2, 4, 6], [1, 3, 5, 7]]


def test_token_batches_language_model_uses_source_plus_one():
    src = np.array([3, 3, 3, 7])
    batches = token_batches(src, None, 12, seed=0, epoch=0)
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 1, 2], [3]]
    check_batches(batches, src, None, 12)
    assert token_batches(np.zeros(0, dtype=np.int32), None, 12, 0, 0) == []


@settings(max_examples=40, deadline=None)
@given(
    lengths=st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=300),
    max_tokens=st.integers(1, 500),
    paired=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_token_batches_properties(lengths, max_tokens, paired, seed):
    src = np.array([s for s, _ in lengths], dtype=np.int32)
    tgt = np.array([t for _, t in lengths], dtype=np.int32) if paired else None
    check_batches(token_batches(src, tgt, max_tokens, seed, 0), src, tgt, max_tokens)


def test_token_batches_one_million_is_fast():
    rng = np.random.default_rng(2)
    src = rng.integers(1, 100, 1_000_000).astype(np.int32)
    tgt = rng.integers(1, 100, 1_000_000).astype(np.int32)
    start = time.perf_counter()
    batches = token_batches(src, tgt, 8192, seed=0, epoch=0)
    elapsed = time.perf_counter() - start
    assert sum(len(b) for b in batches) == 1_000_000
    assert elapsed < 3.0  # about 0.2 s on one core; generous for a shared machine


# ----------------------------------------------------------------------------------------------- collate


def test_collate_exact_tensors(tmp_path):
    corpus = build(tmp_path, [(1, "ab", "xyz"), (2, "c", "w"), (3, "defg", "uv")])
    a, b, c, d, e, f, g = ids("abcdefg")
    x, y, z, w, u, v = ids("xyzwuv")
    src, tgt = collate(corpus, np.array([2, 0, 1]))
    assert src.dtype == torch.int64 and tgt.dtype == torch.int64
    assert src.tolist() == [
        [d, e, f, g, EOS_ID],
        [a, b, EOS_ID, PAD_ID, PAD_ID],
        [c, EOS_ID, PAD_ID, PAD_ID, PAD_ID],
    ]
    assert tgt.tolist() == [
        [BOS_ID, u, v, EOS_ID, PAD_ID],
        [BOS_ID, x, y, z, EOS_ID],
        [BOS_ID, w, EOS_ID, PAD_ID, PAD_ID],
    ]
    src1, tgt1 = collate(corpus, [1], device="cpu")
    assert src1.tolist() == [[c, EOS_ID]] and tgt1.tolist() == [[BOS_ID, w, EOS_ID]]
    with pytest.raises(IndexError):
        collate(corpus, [3])


def test_collate_monolingual_gives_the_lm_layout(tmp_path):
    corpus = build(tmp_path, [(1, "ab", None), (2, "c", None)])
    a, b, c = ids("abc")
    src, tgt = collate(corpus, [0, 1])
    assert src.tolist() == [[a, b, EOS_ID], [c, EOS_ID, PAD_ID]]
    assert tgt.tolist() == [[BOS_ID, a, b, EOS_ID], [BOS_ID, c, EOS_ID, PAD_ID]]


def test_batches_collate_within_their_budget(tmp_path):
    rng = np.random.default_rng(5)
    examples = [(i + 1, "s" * int(rng.integers(1, 30)), "t" * int(rng.integers(1, 30))) for i in range(300)]
    corpus = build(tmp_path, examples)
    for batch in token_batches(corpus.src_lengths, corpus.tgt_lengths, 120, seed=0, epoch=0):
        src, tgt = collate(corpus, batch)
        assert src.numel() <= 120 and tgt.numel() <= 120
        for row, i in enumerate(batch):
            n = int(corpus.src_lengths[i])
            assert src[row, :n].tolist() == corpus.src(i).tolist() and src[row, n] == EOS_ID
