"""Issue 18, point 1: bounds where the tokenizer reads text, and no stale tokenizer in a run folder.

A word (a run without whitespace) longer than tokenizer.max_word_chars reaches BPE in chunks; at most
tokenizer.max_train_chars characters, sampled evenly and deterministically, are trained on; the data is read
through before a tokenizer is written; a run's tokenizer records what it was trained on, and a rerun with other
data or settings trains a new one (or, with checkpoints, stops with one line). No timings here: see
benchmarks/bench_tokenizer.py.
"""

from __future__ import annotations

import json
import os
import random
import string
import subprocess
import sys
from pathlib import Path

import pytest

from aiayn import tokenizer_train
from aiayn.config import DataConfig, TokenizerConfig
from aiayn.data import reader
from aiayn.data.prepare import SOURCE_RECORD, get_tokenizer, prepare
from aiayn.errors import ConfigError, DataError
from aiayn.tokenizer import normalize, train_tokenizer, train_tokenizer_from_files
from aiayn.tokenizer_train import text_totals, training_texts

ROOT = Path(__file__).resolve().parents[2]
LINES = [f"line {i}: the quick brown fox jumps over the lazy dog {i % 7}" for i in range(2000)]


def _letters(n: int, seed: int = 0) -> str:
    return "".join(random.Random(seed).choices(string.ascii_lowercase, k=n))


def _longest_word(texts) -> int:
    return max((len(w) for t in texts for w in t.split()), default=0)


# --- chunking --------------------------------------------------------------------------------------------------


def test_a_long_unbroken_line_reaches_bpe_in_chunks_of_max_word_chars():
    line = _letters(200_000)
    pieces = list(training_texts([line], max_word_chars=100))
    assert _longest_word(pieces) == 100 and "".join(pieces) == line  # cut, nothing lost (under the budgets)
    mixed = "short words " + _letters(1_050, seed=1) + " and more\ttabs " + _letters(250, seed=2) + " end"
    pieces = list(training_texts([mixed], max_word_chars=100))
    assert _longest_word(pieces) <= 100 and "".join(pieces) == mixed
    assert list(training_texts(["a b c", "x" * 100], max_word_chars=100)) == ["a b c", "x" * 100]  # short: as is


def test_long_lines_with_spaces_are_cut_into_pieces_before_a_space():
    line = " ".join(["word"] * 10_000)  # 49,999 characters, no long word
    pieces = list(training_texts([line]))
    assert "".join(pieces) == line and max(map(len, pieces)) <= tokenizer_train.PIECE_CHARS
    assert all(p.startswith(" ") for p in pieces[1:])  # " word" stays one pre-token


def test_a_tokenizer_trained_on_a_long_unbroken_line_round_trips_it():
    line = _letters(200_000)
    tok = train_tokenizer([line], vocab_size=1000)
    assert tok.vocab_size == 1000
    assert max(len(tok.id_to_token(i) or "") for i in range(tok.vocab_size)) <= 100
    for text in (line[:20_000], "abc " + line[:5_000] + "\n" + line[-3_000:]):
        assert tok.decode(tok.encode(text)) == normalize(text)


def test_long_texts_are_encoded_in_pieces_with_the_ids_of_the_whole_text(monkeypatch):
    import aiayn.tokenizer as tokenizer_module

    monkeypatch.setattr(tokenizer_module, "ENCODE_PIECE_CHARS", 200)
    rng = random.Random(3)
    tok = train_tokenizer(["".join(rng.choices(string.ascii_lowercase + " \n", k=20_000))], vocab_size=800)
    words = ["the", "fox", "über", "日本語", "42", "!?", "\n", "\r\n", "\r", "\t", "\xa0", "\u200b", "a" * 150]
    text = "".join(rng.choice(words) + rng.choice([" ", "  ", "   ", "\n"]) for _ in range(3_000))  # no word > 200
    assert len(tokenizer_module._encode_pieces(text)) > 50
    whole = tok._tok.encode(text, add_special_tokens=False).ids  # the Rust encoder on the whole text
    assert tok.encode(text) == whole and tok.encode_batch(["x", text, "y z"])[1] == whole
    unbroken = _letters(5_000)  # words longer than the piece: cut inside them, still a round trip
    assert tok.decode(tok.encode(unbroken)) == unbroken
    assert tok.decode_batch(tok.encode_batch([unbroken, "\r\n" * 300])) == [unbroken, "\n" * 300]


def test_train_tokenizer_from_files_chunks_and_keeps_the_line_cap(tmp_path, monkeypatch):
    assert tokenizer_train.MAX_LINE_BYTES == reader.MAX_LINE_BYTES
    path = tmp_path / "one-line.txt"
    path.write_text(_letters(50_000), encoding="ascii")
    tok = train_tokenizer_from_files([path], vocab_size=600, max_word_chars=50)
    assert max(len(tok.id_to_token(i) or "") for i in range(tok.vocab_size)) <= 50
    monkeypatch.setattr(tokenizer_train, "MAX_LINE_BYTES", 10_000)
    with pytest.raises(DataError, match=r"one-line\.txt line 1 is longer than 10,000 bytes"):
        train_tokenizer_from_files([path], vocab_size=600)


# --- sampling --------------------------------------------------------------------------------------------------


def test_max_train_chars_samples_evenly_deterministically_and_within_the_bound():
    total = sum(map(len, LINES))
    kept = list(training_texts(LINES, max_train_chars=total // 10))
    assert kept == list(training_texts(LINES, max_train_chars=total // 10))  # deterministic
    assert total // 10 - 2 * len(LINES[0]) <= sum(map(len, kept)) <= total // 10
    index = [LINES.index(t) for t in kept]
    assert index[0] < 20 and index[-1] > len(LINES) - 20  # spread over the whole input, not a prefix
    assert max(b - a for a, b in zip(index, index[1:], strict=False)) <= 11  # about every 10th line
    streamed = list(training_texts(iter(LINES), max_train_chars=total // 10, totals=text_totals(LINES)))
    assert streamed == kept  # an iterator with totals counted on a first pass: the same sample
    assert sum(map(len, training_texts(iter(LINES), max_train_chars=1000))) <= 1000  # no totals: a bounded prefix
    assert list(training_texts(LINES)) == LINES  # under the bound: everything, in order


def test_chunks_of_long_runs_have_their_own_evenly_sampled_budget(monkeypatch):
    monkeypatch.setattr(tokenizer_train, "LONG_RUN_CHARS", 10_000)
    texts = [f"{i} " + _letters(1_000, seed=i) for i in range(100)]  # 100,000 characters of long runs
    kept = list(training_texts(texts, max_word_chars=100))
    long = [p for p in kept if len(p.strip()) == 100]
    assert 9_000 <= sum(map(len, long)) <= 10_000
    sources = sorted({i for i, t in enumerate(texts) for p in long if p in t})
    assert sources[0] < 5 and sources[-1] > 94  # from the whole input
    assert sum(1 for p in kept if len(p.strip()) < 10) == 100  # the short words are all kept


def test_train_tokenizer_respects_max_train_chars():
    line = "".join(f"{_letters(50, seed=i)} " for i in range(2_000))  # 102,000 characters, all distinct words
    small = train_tokenizer([line], vocab_size=5000, max_train_chars=10_000, min_frequency=1)
    full = train_tokenizer([line], vocab_size=5000, min_frequency=1)
    assert small.vocab_size < full.vocab_size  # fewer pairs seen: fewer merges


# --- the run folder's tokenizer --------------------------------------------------------------------------------


def _text_run(tmp_path: Path, lines=LINES) -> tuple[DataConfig, Path]:
    path = tmp_path / "train.txt"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return DataConfig(train_text=str(path)), tmp_path / "run" / "tokenizer.json"


def _get(cfg: TokenizerConfig, data: DataConfig, out: Path) -> tuple[object, list[str]]:
    log: list[str] = []
    return get_tokenizer(cfg, data, 0, out, log.append), log


def test_unchanged_data_and_settings_reuse_the_runs_tokenizer(tmp_path):
    data, out = _text_run(tmp_path)
    first, log = _get(TokenizerConfig(vocab_size=400), data, out)
    assert any("training a bpe tokenizer" in m for m in log)
    record = json.loads((out.parent / SOURCE_RECORD).read_text())
    assert (
        record["tokenizer"]["vocab_size"] == 400 and record["files"][0]["size"] == Path(data.train_text).stat().st_size
    )
    again, log = _get(TokenizerConfig(vocab_size=400), data, out)
    assert again == first and not any("training" in m for m in log)


def test_changed_data_trains_a_new_tokenizer(tmp_path):
    data, out = _text_run(tmp_path)
    first, _ = _get(TokenizerConfig(vocab_size=400), data, out)
    path = Path(data.train_text)
    path.write_text("\n".join(f"ganz andere Zeilen {i} über Daten" for i in range(500)) + "\n", encoding="utf-8")
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    second, log = _get(TokenizerConfig(vocab_size=400), data, out)
    assert any("trained on other data or settings" in m for m in log)
    assert second != first and "ü" in json.loads(out.read_text())["model"]["vocab"]


def test_changed_vocab_size_trains_a_new_tokenizer(tmp_path):
    data, out = _text_run(tmp_path)
    _get(TokenizerConfig(vocab_size=300), data, out)
    second, _ = _get(TokenizerConfig(vocab_size=400), data, out)
    assert second.vocab_size == 400
    assert json.loads((out.parent / SOURCE_RECORD).read_text())["tokenizer"]["vocab_size"] == 400


def test_a_stale_tokenizer_in_a_run_with_checkpoints_is_one_line_of_error(tmp_path):
    data, out = _text_run(tmp_path)
    _get(TokenizerConfig(vocab_size=300), data, out)
    (out.parent / "checkpoints" / "step-000004").mkdir(parents=True)
    kept, _ = _get(TokenizerConfig(vocab_size=300), data, out)  # unchanged: resumes with it
    with pytest.raises(
        ConfigError, match=r"no longer matches this run \(tokenizer.vocab_size: 300 then, 500 now\)"
    ) as e:
        _get(TokenizerConfig(vocab_size=500), data, out)
    assert "\n" not in str(e.value) and f"--tokenizer.path {out}" in str(e.value)
    assert _get(TokenizerConfig(vocab_size=300), data, out)[0] == kept  # nothing was overwritten
    result = subprocess.run(
        [sys.executable, "-m", "aiayn", "train", "--data.train_text", data.train_text, "--model.arch", "lm",
         "--tokenizer.vocab_size", "500", "--train.out_dir", str(out.parent), "--resume", "auto"],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.startswith("error: ") and result.stderr.count("\n") == 1
    assert "no longer matches this run" in result.stderr


def test_a_tokenizer_without_a_record_is_retrained_unless_the_run_has_checkpoints(tmp_path):
    data, out = _text_run(tmp_path)
    first, _ = _get(TokenizerConfig(vocab_size=300), data, out)
    (out.parent / SOURCE_RECORD).unlink()  # a run folder from before records, or a crash after the save
    (out.parent / "checkpoints" / "step-000002").mkdir(parents=True)
    assert _get(TokenizerConfig(vocab_size=500), data, out)[0] == first  # nothing to compare with: kept
    (out.parent / "checkpoints" / "step-000002").rmdir()
    assert _get(TokenizerConfig(vocab_size=400), data, out)[0].vocab_size == 400


# --- validation before writing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content, message",
    [
        (b"fine text\n" * 3 + b"\x00\x01\x02binary", "looks binary"),
        (b"fine text\n" * 5000 + b"bad \xff byte\n", "invalid UTF-8"),
    ],
)
def test_bad_training_data_leaves_no_tokenizer_in_the_run_folder(tmp_path, content, message):
    path = tmp_path / "train.txt"
    path.write_bytes(content)
    run = tmp_path / "run"
    with pytest.raises(DataError, match=message):
        prepare(DataConfig(train_text=str(path)), TokenizerConfig(vocab_size=300), 0, run, 0, lambda _: None)
    assert not (run / "tokenizer.json").exists() and not (run / SOURCE_RECORD).exists()


def test_bad_parallel_or_validation_data_leaves_no_tokenizer(tmp_path):
    src, tgt, valid = tmp_path / "a.en", tmp_path / "a.de", tmp_path / "v.txt"
    src.write_text("one\ntwo\nthree\n", encoding="utf-8")
    tgt.write_text("eins\nzwei\n", encoding="utf-8")
    run = tmp_path / "run"
    with pytest.raises(DataError, match="line count mismatch"):
        get_tokenizer(TokenizerConfig(vocab_size=300), DataConfig(train_src=str(src), train_tgt=str(tgt)), 0,
                      run / "tokenizer.json", lambda _: None)  # fmt: skip
    assert not (run / "tokenizer.json").exists()
    train = tmp_path / "train.txt"
    train.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    valid.write_bytes(b"ok\n" * 100 + b"\xc3(\n")
    with pytest.raises(DataError, match=r"invalid UTF-8 in .*v\.txt line 101"):
        get_tokenizer(TokenizerConfig(vocab_size=300), DataConfig(train_text=str(train), valid_text=str(valid)), 0,
                      run / "tokenizer.json", lambda _: None)  # fmt: skip
    assert not (run / "tokenizer.json").exists()
