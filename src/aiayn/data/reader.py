"""Reading the user's text files: one sentence per line, UTF-8, streamed, with errors a user can act on.

Lines are split on "\\n" only, never on the other characters that Python's universal newlines and
`str.splitlines` treat as line ends ("\\r", "\\x0b", "\\x0c", "\\x1c".."\\x1e", "\\x85", "\\u2028", "\\u2029"):
those occur inside real sentences (Tatoeba and web crawls have them), and splitting on them would shift
every later line of one side of a parallel corpus against the other. One "\\r" before the "\\n" (Windows line
ends) is removed, and so is a UTF-8 byte order mark at the start of the file. A last line without a final
newline is a line like any other. `clean` then collapses all whitespace inside a sentence.

Every problem with the user's files is a `DataError` (a `ValueError`) whose message is one line that names the
file and, where there is one, the 1-based line number; the command line prints it as "error: <message>".
Problems with the path and with the file's kind (missing, a directory, unreadable, binary) are raised when
`read_lines`, `read_parallel` or `read_tsv` is called; problems in the content (invalid UTF-8, a missing column,
parallel files of different lengths) are raised while iterating, when the reader gets there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from aiayn.errors import DataError

__all__ = ["DataError", "clean", "read_lines", "read_parallel", "read_tsv"]

BOM = b"\xef\xbb\xbf"
SNIFF_BYTES = 64 * 1024  # how much of the start of a file is checked for signs of a binary file
MAX_LINE_BYTES = 64 * 1024 * 1024  # a longer "line" means the file is not one sentence per line
_BUFFER_BYTES = 1024 * 1024

# Magic numbers of the compressed and archive formats that users most often pass by mistake.
_SIGNATURES = (
    (b"\x1f\x8b", "gzip-compressed: decompress it first, e.g. with gunzip"),
    (b"PK\x03\x04", "a zip archive: extract it first"),
    (b"\xfd7zXZ\x00", "xz-compressed: decompress it first, e.g. with unxz"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed: decompress it first, e.g. with unzstd"),
    (b"\xff\xfe", "UTF-16 byte order mark: convert it to UTF-8, e.g. with iconv -f UTF-16 -t UTF-8"),
    (b"\xfe\xff", "UTF-16 byte order mark: convert it to UTF-8, e.g. with iconv -f UTF-16 -t UTF-8"),
)


def clean(text: str) -> str:
    """Collapse each run of whitespace (space, tab, NBSP, "\\r", "\\x85", "\\u2028", ...) to one space; trim ends."""
    return " ".join(text.split())


def read_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    """Stream (1-based line number, text) over a UTF-8 text file. Empty lines come back as ""."""
    _check_text_file(path)
    return _decoded_lines(path)


def read_parallel(src_path: str | os.PathLike, tgt_path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """Stream (1-based line number, source text, target text) over two line-aligned files.

    If one file has more lines than the other, iteration ends in a `DataError` that gives both real line counts
    (the longer file is read to its end to count them): every pair before it has been yielded by then, so a
    caller that drains the iterator (as the corpus builder does) finds the problem before any training.
    """
    _check_text_file(src_path)
    _check_text_file(tgt_path)
    return _parallel_lines(src_path, tgt_path)


def read_tsv(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    """Stream (1-based line number, source, target) from tab-separated columns 1 and 2; further columns are ignored.

    This is the layout of Tatoeba / manythings.org downloads ("English<TAB>other language<TAB>attribution").
    A blank line comes back as ("", "") (the corpus builder skips and counts it); any other line without a tab is a
    `DataError` naming the line.
    """
    _check_text_file(path)
    return _tsv_lines(path)


# ---------------------------------------------------------------------------------------------------------------


def _open_binary(path: str | os.PathLike):
    """open(path, "rb"), with the OSErrors a user can cause turned into DataErrors."""
    try:
        return open(path, "rb", buffering=_BUFFER_BYTES)  # noqa: SIM115 (the caller closes it)
    except FileNotFoundError:
        raise DataError(f"{os.fspath(path)}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{os.fspath(path)} is a directory, expected a text file") from None
    except PermissionError:
        raise DataError(f"cannot read {os.fspath(path)}: permission denied") from None
    except OSError as e:
        raise DataError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None


def _check_text_file(path: str | os.PathLike) -> None:
    """Raise a DataError now if `path` cannot be opened or its first SNIFF_BYTES look like a binary file."""
    with _open_binary(path) as f:
        try:
            head = f.read(SNIFF_BYTES)
        except IsADirectoryError:  # some systems open a directory and fail on read
            raise DataError(f"{os.fspath(path)} is a directory, expected a text file") from None
        except OSError as e:
            raise DataError(f"cannot read {os.fspath(path)}: {e.strerror or e}") from None
    for magic, what in _SIGNATURES:
        if head.startswith(magic):
            raise DataError(f"{os.fspath(path)} looks binary ({what})")
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        raise DataError(f"{os.fspath(path)} looks binary (bzip2-compressed: decompress it first, e.g. with bunzip2)")
    nul = head.find(b"\x00")
    if nul >= 0:
        raise DataError(
            f"{os.fspath(path)} looks binary (a NUL byte at byte offset {nul}; expected UTF-8 text, "
            "one sentence per line)"
        )


def _raw_lines(path: str | os.PathLike) -> Iterator[tuple[int, int, bytes]]:
    """(1-based line number, byte offset in the file where the line's text starts, the line's bytes).

    The bytes are without the "\\n", without one "\\r" before it, and (on line 1) without a UTF-8 byte order mark.
    """
    limit = MAX_LINE_BYTES
    with _open_binary(path) as f:
        offset = 0
        line_no = 0
        while True:
            try:
                raw = f.readline(limit + 1)
            except OSError as e:
                raise DataError(f"cannot read {os.fspath(path)} after line {line_no}: {e.strerror or e}") from None
            if not raw:
                return
            line_no += 1
            start = offset
            offset += len(raw)
            if raw.endswith(b"\n"):
                raw = raw[:-2] if raw.endswith(b"\r\n") else raw[:-1]
            elif len(raw) > limit:
                raise DataError(
                    f"{os.fspath(path)} line {line_no} is longer than {limit:,} bytes; expected one sentence per line"
                )
            if line_no == 1 and raw.startswith(BOM):
                raw = raw[len(BOM) :]
                start += len(BOM)
            yield line_no, start, raw


def _decode(path: str | os.PathLike, line_no: int, start: int, raw: bytes) -> str:
    nul = raw.find(b"\x00")
    if nul >= 0:  # the first 64 KiB are sniffed for binary files; a NUL further on is caught line by line
        raise DataError(
            f"{os.fspath(path)} line {line_no} has a NUL byte (byte offset {start + nul} in the file): a binary "
            "file, or text saved in another encoding; expected UTF-8 text, one sentence per line"
        )
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        bad = raw[e.start : max(e.end, e.start + 1)].hex(" ")
        raise DataError(
            f"invalid UTF-8 in {os.fspath(path)} line {line_no} (byte offset {start + e.start} in the file, "
            f"{e.start} in the line: {e.reason}, bytes {bad}); save the file as UTF-8"
        ) from None


def _decoded_lines(path: str | os.PathLike) -> Iterator[tuple[int, str]]:
    for line_no, start, raw in _raw_lines(path):
        yield line_no, _decode(path, line_no, start, raw)


def _parallel_lines(src_path, tgt_path) -> Iterator[tuple[int, str, str]]:
    src_lines = _raw_lines(src_path)
    tgt_lines = _raw_lines(tgt_path)
    try:
        while True:
            a = next(src_lines, None)
            b = next(tgt_lines, None)
            if a is None or b is None:
                break
            yield a[0], _decode(src_path, *a), _decode(tgt_path, *b)
        if a is None and b is None:
            return
        # One file ended first: count the rest of the other (bytes only) so that the message gives real totals.
        if a is None:
            n_src = b[0] - 1
            n_tgt = b[0] + sum(1 for _ in tgt_lines)
        else:
            n_src = a[0] + sum(1 for _ in src_lines)
            n_tgt = a[0] - 1
        raise DataError(
            f"line count mismatch: {os.fspath(src_path)} has {n_src:,} lines, {os.fspath(tgt_path)} has {n_tgt:,}"
        )
    finally:
        src_lines.close()
        tgt_lines.close()


def _tsv_lines(path: str | os.PathLike) -> Iterator[tuple[int, str, str]]:
    for line_no, text in _decoded_lines(path):
        columns = text.split("\t", 2)
        if len(columns) < 2:
            if not text.strip():
                yield line_no, "", ""
                continue
            snippet = text if len(text) <= 60 else text[:57] + "..."
            raise DataError(
                f"{os.fspath(path)} line {line_no}: expected at least 2 tab-separated columns "
                f"(source<TAB>target), found 1: {snippet!r}"
            )
        yield line_no, columns[0], columns[1]
