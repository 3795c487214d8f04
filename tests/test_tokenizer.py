"""The BPE / char tokenizer: special ids, normalisation, exact round trips, files, determinism."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from aiayn.tokenizer import Tokenizer, normalize, train_tokenizer, train_tokenizer_from_files

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

CORPUS = [
    "A man in a blue shirt is standing on a ladder.",
    "Ein Mann in einem blauen Hemd steht auf einer Leiter.",
    "Zwei Männer überqueren die Straße, während Kinder spielen.",
    "我们今天去公园散步。",
    "我喜欢学习中文，也喜欢看书。",
    "日期：2026年11月22日 星期日",
    "First Citizen:\nBefore we proceed any further, hear me speak.",
    "Café naïve résumé — “quotes” and ‘apostrophes’ …",
    "Numbers 1 22 333 and symbols #$%&*+-/<=>@[]^_{|}~",
] * 3


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_tokenizer(CORPUS, vocab_size=400)


def test_special_ids(tok: Tokenizer) -> None:
    assert (PAD_ID, BOS_ID, EOS_ID, UNK_ID) == (0, 1, 2, 3)
    for name, i in {"<pad>": PAD_ID, "<bos>": BOS_ID, "<eos>": EOS_ID, "<unk>": UNK_ID}.items():
        assert tok.id_to_token(i) == name
    assert tok.id_to_token(4) == "<0x00>" and tok.id_to_token(259) == "<0xFF>"
    assert tok.vocab_size == 400


def test_special_strings_in_text_are_plain_text(tok: Tokenizer) -> None:
    text = "<pad> <bos> <eos> <unk> <0x41>"
    ids = tok.encode(text)
    assert not set(ids) & {PAD_ID, BOS_ID, EOS_ID, UNK_ID}
    assert tok.decode(ids) == text


def test_space_like_list_is_complete() -> None:
    from aiayn.tokenizer import _SPACE_LIKE

    expected = {chr(c) for c in range(0x110000) if chr(c).isspace()} - {"\n", " "}
    assert set(_SPACE_LIKE) == expected


def test_normalize_exact() -> None:
    assert normalize("a\u00a0b") == "a b"  # NBSP
    assert normalize("a\tb\t\tc") == "a b  c"  # tabs become spaces, not collapsed
    assert normalize("zero\u200bwidth\ufeff") == "zerowidth"
    assert normalize("\ufeffBOM at start") == "BOM at start"
    assert normalize("keep\u200djoiner") == "keep\u200djoiner"  # ZWJ joins emoji sequences
    assert normalize("全角\u3000空格") == "全角 空格"
    assert normalize("a\u2028b\u2029c\u0085d\u2009e\u202ff\u205fg") == "a b c d e f g"
    assert normalize("line\r\nline\rx\n") == "line\nline x\n"
    assert normalize("  lead and trail  ") == "  lead and trail  "
    assert normalize("Straße ＡＢ，。") == "Straße ＡＢ，。"  # no case folding, no NFKC
    assert normalize("bad \ud800 surrogate") == "bad \ufffd surrogate"


def test_tokenizer_applies_normalize(tok: Tokenizer) -> None:
    text = "\ufeffA\u00a0man\tin\u200b a\u3000blue shirt\r\n"
    assert tok.decode(tok.encode(text)) == "A man in a blue shirt\n"
    assert tok.encode(text) == tok.encode(normalize(text))


# Arbitrary text, weighted towards the hard parts: spaces of every kind, CJK, emoji sequences, combining marks.
TEXT = st.lists(
    st.one_of(
        st.characters(codec="utf-8"),
        st.sampled_from(list(" \n\t\r\u00a0\u200b\ufeff\u200d\u3000\u2028\u0301\u0308▁<>")),
        st.sampled_from(list("我们今天公园中文日期年月星期")),
        st.sampled_from(["😀", "👍🏽", "🇩🇪", "👨\u200d👩\u200d👧", "  ", "\r\n", "<eos>", "<0x41>", "man", " blue"]),
    ),
    max_size=40,
).map("".join)


@settings(max_examples=300, deadline=None)
@given(TEXT)
def test_round_trip_any_text(tok: Tokenizer, text: str) -> None:
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert tok.decode(ids) == normalize(text)
    assert len(tok.tokens(text)) == len(ids)
    assert normalize(normalize(text)) == normalize(text)


@settings(max_examples=100, deadline=None)
@given(st.lists(TEXT, max_size=5))
def test_batch_matches_single(tok: Tokenizer, texts: list[str]) -> None:
    batch = tok.encode_batch(texts)
    assert batch == [tok.encode(t) for t in texts]
    assert tok.decode_batch(batch) == [normalize(t) for t in texts]


def test_round_trip_char_kind_any_text() -> None:
    char = train_tokenizer(CORPUS, vocab_size=1, kind="char")

    @settings(max_examples=200, deadline=None)
    @given(TEXT)
    def check(text: str) -> None:
        assert char.decode(char.encode(text)) == normalize(text)

    check()


def test_surrogates_do_not_raise(tok: Tokenizer) -> None:
    assert tok.decode(tok.encode("a\udc80b")) == "a\ufffdb"
    assert tok.encode_batch(["\ud83d"]) == [tok.encode("\ufffd")]


def test_chinese_seen_chars_are_single_tokens(tok: Tokenizer) -> None:
    seen = {c for line in CORPUS for c in line if "\u4e00" <= c <= "\u9fff"}
    assert len(seen) > 15
    for c in seen:
        assert len(tok.encode(c)) == 1, c
        assert tok.tokens(c) == [c]


def test_unseen_emoji_uses_bytes_not_unk(tok: Tokenizer) -> None:
    text = "I 🦜 you 👨\u200d👩\u200d👧"
    ids = tok.encode(text)
    assert UNK_ID not in ids
    assert tok.decode(ids) == text
    parrot = tok.encode("🦜")
    assert len(parrot) == 4 and all(4 <= i < 260 for i in parrot)  # its 4 UTF-8 bytes
    assert tok.tokens("🦜") == ["🦜", "<0x9F>", "<0xA6>", "<0x9C>"]


def test_control_characters_are_labelled_by_their_byte(tok: Tokenizer) -> None:
    """No font draws U+0006: a picture's label says <0x06> (a newline keeps its \\n)."""
    assert tok.labels([4 + 0x06, 4 + ord("a"), 4 + 0x0A, 4 + 0x7F]) == ["<0x06>", "a", "\\n", "<0x7F>"]


def test_decode_skips_specials_and_survives_bad_bytes(tok: Tokenizer) -> None:
    ids = tok.encode("a man")
    assert tok.decode([BOS_ID, *ids, EOS_ID, PAD_ID, PAD_ID]) == "a man"
    assert tok.decode([EOS_ID, *ids]) == "a man"  # does not stop at eos
    lone = 4 + 0xE4  # first byte of a 3-byte character, alone
    assert tok.decode([*ids, lone]) == "a man\ufffd"
    assert tok.decode([lone, 4 + 0x41]) in ("\ufffdA", "\ufffd\ufffd")
    assert tok.decode([10**9, -1]) == ""  # ids outside the vocabulary are skipped
    assert tok.decode([]) == ""


def test_tokens_readable(tok: Tokenizer) -> None:
    tokens = tok.tokens("a blue shirt\nx")
    assert "".join(tokens).replace("▁", " ").replace("\\n", "\n") == "a blue shirt\nx"
    assert "\\n" in tokens
    assert any(t.startswith("▁") for t in tokens)


def test_char_kind_one_token_per_char() -> None:
    text = "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak."
    char = train_tokenizer([text], vocab_size=65, kind="char")
    assert char.kind == "char"
    alphabet = set(text)
    assert char.vocab_size == 4 + 256 + len(alphabet | {" ", "\n"})
    ids = char.encode(text)
    assert len(ids) == len(text)
    assert char.tokens(text) == [c.replace(" ", "▁").replace("\n", "\\n") for c in text]
    assert char.decode(ids) == text
    assert char.decode(char.encode("Zebra 🦓")) == "Zebra 🦓"  # unseen characters fall back to bytes


def test_vocab_size_clamped_up_and_validated() -> None:
    small = train_tokenizer(CORPUS, vocab_size=1)
    alphabet = {c for line in CORPUS for c in normalize(line)} | {" ", "\n"}
    assert small.vocab_size == 4 + 256 + len(alphabet)
    for bad in (0, -5, 1.5, "8000", True, None):
        with pytest.raises(ValueError, match="vocab_size"):
            train_tokenizer(CORPUS, vocab_size=bad)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="kind"):
        train_tokenizer(CORPUS, vocab_size=300, kind="wordpiece")


def test_save_load(tok: Tokenizer, tmp_path: Path) -> None:
    path = tmp_path / "sub" / "tokenizer.json"
    tok.save(path)
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]  # no temporary file left
    loaded = Tokenizer.load(path)
    assert loaded.fingerprint() == tok.fingerprint() and loaded == tok
    assert loaded.kind == "bpe" and loaded.vocab_size == tok.vocab_size
    for text in CORPUS[:9] + ["unseen 🦜 Ünïcödé"]:
        assert loaded.encode(text) == tok.encode(text)
    char = train_tokenizer(CORPUS, vocab_size=1, kind="char")
    char.save(tmp_path / "char.json")
    assert Tokenizer.load(tmp_path / "char.json").kind == "char"
    assert char.fingerprint() != tok.fingerprint()


def test_load_refuses_bad_files(tok: Tokenizer, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="missing.json"):
        Tokenizer.load(tmp_path / "missing.json")
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"model": ', encoding="utf-8")
    with pytest.raises(ValueError, match="corrupt.json"):
        Tokenizer.load(corrupt)

    data = json.loads(tok.to_json())
    vocab = data["model"]["vocab"]
    vocab["<pad>"], vocab["<bos>"] = vocab["<bos>"], vocab["<pad>"]
    swapped = tmp_path / "swapped.json"
    swapped.write_text(json.dumps(data), encoding="utf-8")
    with pytest.raises(ValueError, match=r"swapped\.json.*<pad>=0, <bos>=1, <eos>=2, <unk>=3"):
        Tokenizer.load(swapped)


def _write(path: Path, lines: list[str], newline: str, bom: bool = False) -> Path:
    path.write_bytes((b"\xef\xbb\xbf" if bom else b"") + newline.join(lines).encode("utf-8") + newline.encode())
    return path


def test_crlf_bom_files_train_like_lf(tmp_path: Path) -> None:
    lf = train_tokenizer_from_files([_write(tmp_path / "lf.txt", CORPUS, "\n")], vocab_size=400)
    crlf = train_tokenizer_from_files([_write(tmp_path / "crlf.txt", CORPUS, "\r\n", bom=True)], vocab_size=400)
    assert crlf.to_json() == lf.to_json()
    vocab = json.loads(crlf.to_json())["model"]["vocab"]
    assert not any("\r" in t or "\ufeff" in t for t in vocab)


def test_tsv_uses_first_two_columns(tmp_path: Path) -> None:
    lines = [line for line in CORPUS if "\n" not in line]
    rows = [f"{en}\t{de}\tIGNOREDCOLUMN" for en, de in zip(lines[0::2], lines[1::2], strict=False)]
    tsv = train_tokenizer_from_files([_write(tmp_path / "pairs.tsv", rows, "\n")], vocab_size=400)
    vocab = json.loads(tsv.to_json())["model"]["vocab"]
    assert "Z" in vocab and "G" not in vocab  # "G" appears only in the third column
    assert tsv.decode(tsv.encode(CORPUS[1])) == CORPUS[1]


def test_deterministic(tmp_path: Path) -> None:
    first = train_tokenizer(CORPUS, vocab_size=400)
    second = train_tokenizer(iter(CORPUS), vocab_size=400)
    assert first.to_json() == second.to_json()
    first.save(tmp_path / "a.json")
    second.save(tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    # A fresh process has other hash seeds: the bytes must not change with them.
    code = (
        "import sys; from aiayn.tokenizer import train_tokenizer; "
        "sys.stdout.buffer.write(train_tokenizer(sys.stdin.read().split('\\x1e'), 400).to_json().encode())"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], input="\x1e".join(CORPUS).encode(), capture_output=True, check=True
    ).stdout
    assert out == first.to_json().encode()


@pytest.mark.skipif(not (SHARED_DATA / "multi30k" / "train.de").is_file(), reason="Multi30k not in shared/data")
def test_multi30k_round_trip() -> None:
    folder = SHARED_DATA / "multi30k"
    tok = train_tokenizer_from_files([folder / "train.en", folder / "train.de"], vocab_size=8000)
    assert tok.vocab_size == 8000
    lines = (folder / "val.de").read_text(encoding="utf-8").splitlines()
    encoded = tok.encode_batch(lines)
    assert not any(UNK_ID in ids for ids in encoded)
    assert tok.decode_batch(encoded) == [normalize(line) for line in lines]
