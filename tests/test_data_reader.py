"""Reading users' text files: line splitting, encodings, and the one-line errors for every problem we can name."""

import gzip
import os
import tracemalloc
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiayn.data import reader
from aiayn.data.reader import DataError, clean, read_lines, read_parallel, read_tsv

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def write(tmp_path, name, data: bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def lines(path) -> list[str]:
    return [text for _, text in read_lines(path)]


def error(fn, *args) -> str:
    """The message of the DataError that calling fn(*args) and draining its iterator raises; checks it is one line."""
    with pytest.raises(DataError) as info:
        list(fn(*args))
    message = str(info.value)
    assert "\n" not in message and message.strip() == message
    return message


# ----------------------------------------------------------------------------------------------- line splitting


def test_crlf_and_mixed_line_ends_read_like_lf(tmp_path):
    expected = ["first line", "", "third  line", "last"]
    lf = write(tmp_path, "lf.txt", b"first line\n\nthird  line\nlast\n")
    crlf = write(tmp_path, "crlf.txt", b"first line\r\n\r\nthird  line\r\nlast\r\n")
    mixed = write(tmp_path, "mixed.txt", b"first line\r\n\nthird  line\r\nlast\n")
    for path in (lf, crlf, mixed):
        assert list(read_lines(path)) == list(enumerate(expected, start=1))


def test_only_one_cr_before_lf_is_removed(tmp_path):
    path = write(tmp_path, "a.txt", b"a\r\r\nb\r\n")
    assert lines(path) == ["a\r", "b"]


def test_utf8_bom_is_stripped_at_the_start_only(tmp_path):
    path = write(tmp_path, "bom.txt", "\ufeffhello\r\nworld \ufeffx\n".encode())
    assert lines(path) == ["hello", "world \ufeffx"]
    assert lines(write(tmp_path, "only_bom.txt", b"\xef\xbb\xbf")) == [""]


def test_last_line_without_newline_is_counted(tmp_path):
    assert list(read_lines(write(tmp_path, "a.txt", b"one\ntwo"))) == [(1, "one"), (2, "two")]
    assert list(read_lines(write(tmp_path, "b.txt", b"one\ntwo\n"))) == [(1, "one"), (2, "two")]
    assert list(read_lines(write(tmp_path, "c.txt", b"one\n\n"))) == [(1, "one"), (2, "")]


@pytest.mark.parametrize("separator", ["\r", "\x85", "\u2028", "\u2029", "\x0c", "\x0b", "\x1c", "\x1e"])
def test_characters_that_splitlines_treats_as_line_ends_do_not_split(tmp_path, separator):
    text = f"a{separator}b\n{separator}c{separator}{separator}d\n{separator}e"
    path = write(tmp_path, "a.txt", text.encode())
    assert len(text.splitlines()) > 3  # what Python's own line splitting would have done
    got = lines(path)
    assert len(got) == text.count("\n") + 1  # no final newline
    assert got == [f"a{separator}b", f"{separator}c{separator}{separator}d", f"{separator}e"]


def test_empty_and_whitespace_only_files_are_not_errors(tmp_path):
    assert lines(write(tmp_path, "empty.txt", b"")) == []
    assert lines(write(tmp_path, "blank.txt", b"\n \n\t\n")) == ["", " ", "\t"]


def test_lines_are_streamed_not_read_whole(tmp_path):
    line = b"a fairly ordinary sentence of text, " * 4 + b"\n"  # 145 bytes
    path = write(tmp_path, "big.txt", line * 50_000)  # 7 MB
    tracemalloc.start()
    try:
        n = sum(1 for _ in read_lines(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert n == 50_000
    assert peak < 2_500_000  # the read buffer and a line, not the file


def test_very_long_line_is_an_error_naming_the_line(tmp_path, monkeypatch):
    monkeypatch.setattr(reader, "MAX_LINE_BYTES", 100)
    path = write(tmp_path, "a.txt", b"short\n" + b"x" * 100 + b"\n" + b"y" * 101 + b"\n")
    message = error(read_lines, path)
    assert message == f"{path} line 3 is longer than 100 bytes; expected one sentence per line"
    assert len(lines(write(tmp_path, "b.txt", b"x" * 100))) == 1  # exactly at the limit, no final newline


@settings(max_examples=60, deadline=None)
@given(
    texts=st.lists(st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\x00")), max_size=8),
    crlf=st.lists(st.booleans(), min_size=8, max_size=8),
    final_newline=st.booleans(),
)
def test_lines_round_trip(tmp_path_factory, texts, crlf, final_newline):
    # A text ending in "\r" before a "\n" is indistinguishable from a CRLF line end, and a first line that starts
    # with U+FEFF from one after a byte order mark: leave those out.
    texts = [t.rstrip("\r") for t in texts]
    if texts:
        texts[0] = texts[0].lstrip("\ufeff")
    if texts and texts[-1] == "" and not final_newline:
        final_newline = True  # an empty last line without a newline is no line at all
    data = "".join(t + ("\r\n" if c else "\n") for t, c in zip(texts, crlf[: len(texts)], strict=True))
    if texts and not final_newline:
        data = data[: -2 if crlf[len(texts) - 1] else -1]
    path = tmp_path_factory.mktemp("rt") / "a.txt"
    path.write_bytes(data.encode())
    assert lines(path) == texts


def test_clean_collapses_all_whitespace():
    assert clean("  a\tb\xa0c\x85d\u2028e\r\nf\x0cg  ") == "a b c d e f g"
    assert clean(" \t ") == ""
    assert clean("a\u200bb") == "a\u200bb"  # a zero-width space is not whitespace


# ----------------------------------------------------------------------------------------------- path errors


def test_missing_file(tmp_path):
    path = tmp_path / "nope.txt"
    with pytest.raises(DataError, match="no such file") as info:
        read_lines(path)  # raised on the call, before iterating
    assert str(info.value) == f"{path}: no such file"
    assert isinstance(info.value, ValueError)


def test_directory(tmp_path):
    assert error(read_lines, tmp_path) == f"{tmp_path} is a directory, expected a text file"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root can read files without permission")
def test_unreadable_file(tmp_path):
    path = write(tmp_path, "secret.txt", b"a\n")
    path.chmod(0)
    try:
        assert error(read_lines, path) == f"cannot read {path}: permission denied"
    finally:
        path.chmod(0o600)


def test_unreadable_file_simulated(tmp_path, monkeypatch):
    # The same path as test_unreadable_file, for runs as root, where chmod 000 does not stop reading.
    path = write(tmp_path, "secret.txt", b"a\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(reader, "open", denied, raising=False)
    assert error(read_lines, path) == f"cannot read {path}: permission denied"


# ----------------------------------------------------------------------------------------------- content errors


def test_nul_byte_means_binary(tmp_path):
    path = write(tmp_path, "a.bin", b"hello\nwor\x00ld\n")
    assert error(read_lines, path) == (
        f"{path} looks binary (a NUL byte at byte offset 9; expected UTF-8 text, one sentence per line)"
    )


def test_gzip_file_is_binary(tmp_path):
    path = write(tmp_path, "train.en.gz", gzip.compress(b"hello\n"))
    assert error(read_lines, path) == f"{path} looks binary (gzip-compressed: decompress it first, e.g. with gunzip)"


def test_utf16_file_is_binary_with_a_hint(tmp_path):
    path = write(tmp_path, "a.txt", "hello\n".encode("utf-16"))
    message = error(read_lines, path)
    assert message.startswith(f"{path} looks binary (UTF-16 byte order mark: convert it to UTF-8")


def test_binary_is_detected_on_the_call_for_parallel_and_tsv(tmp_path):
    good = write(tmp_path, "good.txt", b"a\n")
    bad = write(tmp_path, "bad.txt", b"a\x00\n")
    with pytest.raises(DataError, match="bad.txt looks binary"):
        read_parallel(good, bad)
    with pytest.raises(DataError, match="bad.txt looks binary"):
        read_tsv(bad)


def test_nul_after_the_first_64_kib_is_an_invalid_line_not_binary(tmp_path):
    # Only the start of the file is sniffed for binary files; a NUL later is refused line by line (issue 18: it
    # used to come back in the text), naming the line and its byte offset.
    path = write(tmp_path, "a.txt", b"x\n" * 40_000 + b"a\x00b\n")
    assert error(read_lines, path).startswith(f"{path} line 40001 has a NUL byte (byte offset 80001 in the file)")


def test_invalid_utf8_names_line_and_byte_offsets(tmp_path):
    data = b"one\ntwo\nthree\nfour\nab\xffcd\nsix\n"  # lines 1-4 take 4 + 4 + 6 + 5 = 19 bytes
    path = write(tmp_path, "a.txt", data)
    assert data.index(b"\xff") == 21
    message = error(read_lines, path)
    assert message == (
        f"invalid UTF-8 in {path} line 5 (byte offset 21 in the file, 2 in the line: invalid start byte, "
        "bytes ff); save the file as UTF-8"
    )


def test_invalid_utf8_offsets_count_crlf_and_bom(tmp_path):
    data = b"\xef\xbb\xbfone\r\n\xe4\xb8\r\n"  # a truncated 3-byte sequence on line 2
    path = write(tmp_path, "a.txt", data)
    assert error(read_lines, path) == (
        f"invalid UTF-8 in {path} line 2 (byte offset 8 in the file, 0 in the line: unexpected end of data, "
        "bytes e4 b8); save the file as UTF-8"
    )


def test_lines_before_the_invalid_one_are_yielded(tmp_path):
    path = write(tmp_path, "a.txt", b"ok\n\xc3(\n")
    it = read_lines(path)
    assert next(it) == (1, "ok")
    with pytest.raises(DataError, match="line 2"):
        next(it)


# ----------------------------------------------------------------------------------------------- parallel files


def test_read_parallel_pairs_lines(tmp_path):
    src = write(tmp_path, "a.en", b"Hello.\r\nBye.\n")
    tgt = write(tmp_path, "a.de", "\ufeffHallo.\nTsch\u00fcss.".encode())
    assert list(read_parallel(src, tgt)) == [(1, "Hello.", "Hallo."), (2, "Bye.", "Tsch\u00fcss.")]


@pytest.mark.parametrize("longer", ["src", "tgt"])
def test_line_count_mismatch_gives_both_real_totals_during_iteration(tmp_path, longer):
    n_src, n_tgt = (1000, 999) if longer == "src" else (999, 1000)
    src = write(tmp_path, "train.en", b"s\n" * n_src)
    tgt = write(tmp_path, "train.de", b"t\n" * n_tgt)
    it = read_parallel(src, tgt)  # no error yet: the counts are only known at the end
    pairs = []
    with pytest.raises(DataError) as info:
        for pair in it:
            pairs.append(pair)
    assert len(pairs) == 999
    assert str(info.value) == f"line count mismatch: {src} has {n_src:,} lines, {tgt} has {n_tgt:,}"


def test_line_count_mismatch_far_apart(tmp_path):
    src = write(tmp_path, "a.en", b"s\n" * 3)
    tgt = write(tmp_path, "a.de", b"t\n" * 25 + b"no newline")
    assert error(read_parallel, src, tgt) == f"line count mismatch: {src} has 3 lines, {tgt} has 26"
    empty = write(tmp_path, "empty.de", b"")
    assert error(read_parallel, src, empty) == f"line count mismatch: {src} has 3 lines, {empty} has 0"


def test_read_parallel_invalid_utf8_names_the_right_file(tmp_path):
    src = write(tmp_path, "a.en", b"a\nb\n")
    tgt = write(tmp_path, "a.de", b"a\n\xfe\n")
    assert error(read_parallel, src, tgt).startswith(f"invalid UTF-8 in {tgt} line 2 (byte offset 2 in the file")


def test_read_parallel_missing_target(tmp_path):
    src = write(tmp_path, "a.en", b"a\n")
    with pytest.raises(DataError, match="a.de: no such file"):
        read_parallel(src, tmp_path / "a.de")


# ----------------------------------------------------------------------------------------------- TSV


def test_tsv_uses_the_first_two_columns(tmp_path):
    data = (
        "Hi.\t\u55e8\u3002\tCC-BY 2.0 (France) Attribution: tatoeba.org #538123 (CM)\r\n"
        "Run!\t\u4f60\u7528\u8dd1\u7684\u3002\n"
    )
    path = write(tmp_path, "cmn.txt", data.encode())
    assert list(read_tsv(path)) == [(1, "Hi.", "\u55e8\u3002"), (2, "Run!", "\u4f60\u7528\u8dd1\u7684\u3002")]


def test_tsv_empty_columns_and_blank_lines_come_back_empty(tmp_path):
    path = write(tmp_path, "a.tsv", b"a\t\n\n\tb\n")
    assert list(read_tsv(path)) == [(1, "a", ""), (2, "", ""), (3, "", "b")]


def test_tsv_line_without_a_tab_is_an_error_with_its_line(tmp_path):
    path = write(tmp_path, "a.tsv", b"a\tb\nc\td\nno tab here\n")
    assert error(read_tsv, path) == (
        f"{path} line 3: expected at least 2 tab-separated columns (source<TAB>target), found 1: 'no tab here'"
    )


# ----------------------------------------------------------------------------------------------- real data


@pytest.mark.skipif(not (SHARED_DATA / "tatoeba-cmn" / "train.en").exists(), reason="shared Tatoeba data not present")
def test_tatoeba_train_reads_26069_pairs():
    folder = SHARED_DATA / "tatoeba-cmn"
    n = 0
    for line_no, en, zh in read_parallel(folder / "train.en", folder / "train.zh"):
        n += 1
        assert line_no == n
        assert clean(en) and clean(zh)
    assert n == 26_069
