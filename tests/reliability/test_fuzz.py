"""Issue 18, point 8: hypothesis fuzzing of the four places where outside bytes enter aiayn.

- the data reader: arbitrary bytes in a file give lines or a DataError, never another exception;
- the tokenizer: arbitrary text encodes to ids inside the vocabulary and decodes to `normalize(text)`;
- the model-folder loader: flipped bytes and truncations of model.safetensors, config.yaml or manifest.json (the
  manifest's bytes and sha256 rewritten, so the deeper checks run) load or raise a UserError;
- the server: random JSON bodies for /v1/translate and /v1/generate get 200 / 400 / 413 / 415 / 422 / 503, never
  500, and every error body is a JSON object with a str "error".

Each is bounded (few examples, no deadline) so the file runs in seconds.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from starlette.testclient import TestClient

import aiayn
from aiayn import modelfile
from aiayn.config import ModelConfig
from aiayn.data.reader import read_lines, read_parallel, read_tsv
from aiayn.errors import DataError, UserError
from aiayn.model import build
from aiayn.serve import Settings, create_app
from aiayn.tokenizer import normalize
from aiayn.tokenizer_train import train_tokenizer
from aiayn.train import checkpoint as ckpt

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
CORPUS = ["two dogs play in the snow", "zwei hunde spielen im schnee", "a man rides a bike", "二〇二六年十一月"] * 5

# Bytes that look like text more often than uniform bytes do: line ends, tabs, BOM, NUL, invalid UTF-8, gzip magic.
PIECES = st.sampled_from(
    [b"\n", b"\r\n", b"\r", b"\t", b"\xef\xbb\xbf", b"\x00", b"\xff", b"\xc3", b"\x1f\x8b", b"ab", " é中😀".encode()]
)
RAW = st.one_of(st.binary(max_size=200), st.lists(st.one_of(PIECES, st.binary(max_size=4)), max_size=40).map(b"".join))


def _write(folder: Path, name: str, data: bytes) -> Path:
    path = folder / name
    path.write_bytes(data)
    return path


def _drain(read, *paths) -> list:
    """All items of read(*paths), or the DataError the reader promises (at the call: a binary file; or while
    iterating: invalid UTF-8, a line count mismatch, ...); any other exception fails the test."""
    try:
        return list(read(*paths))
    except DataError as e:
        assert str(e) and "\n" not in str(e), repr(e)
        return []


# -- the data reader -----------------------------------------------------------------------------------------------


@FAST
@given(data=RAW)
def test_read_lines_of_any_bytes_gives_lines_or_a_data_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "a.txt", data)
        for number, line in _drain(read_lines, path):
            assert isinstance(number, int) and number >= 1 and isinstance(line, str) and "\n" not in line


@FAST
@given(src=RAW, tgt=RAW)
def test_read_parallel_of_any_bytes_gives_pairs_or_a_data_error(src, tgt):
    with tempfile.TemporaryDirectory() as tmp:
        a, b = _write(Path(tmp), "a.en", src), _write(Path(tmp), "a.de", tgt)
        for number, s, t in _drain(read_parallel, a, b):
            assert number >= 1 and isinstance(s, str) and isinstance(t, str)


@FAST
@given(data=RAW)
def test_read_tsv_of_any_bytes_gives_pairs_or_a_data_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = _write(Path(tmp), "a.tsv", data)
        for number, s, t in _drain(read_tsv, path):
            assert number >= 1 and "\t" not in s and isinstance(t, str)


# -- the tokenizer -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(CORPUS, vocab_size=300, min_frequency=1)


TEXT = st.one_of(
    st.text(max_size=60),  # any code point, lone surrogates included
    st.lists(st.sampled_from(["\r\n", "\u200b", "\ufeff", "\xa0", "\u3000", "<eos>", "<0x41>", "😀", "中", " "])).map(
        "".join
    ),
)


@FAST
@given(text=TEXT)
def test_tokenizer_encodes_any_text_within_the_vocabulary_and_round_trips(tokenizer, text):
    ids = tokenizer.encode(text)
    assert all(isinstance(i, int) and 0 <= i < tokenizer.vocab_size for i in ids)
    assert tokenizer.decode(ids) == normalize(text)  # the module docstring's promise, for any str


@FAST
@given(ids=st.lists(st.integers(min_value=-(2**40), max_value=2**40), max_size=40))
def test_tokenizer_decodes_any_ids_without_raising(tokenizer, ids):
    assert isinstance(tokenizer.decode(ids), str)  # ids outside the vocabulary are skipped, bad bytes read U+FFFD


# -- the model-folder loader ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tokenizer):
    torch.manual_seed(0)
    root = tmp_path_factory.mktemp("fuzz-model")
    config = ModelConfig(
        vocab_size=tokenizer.vocab_size, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=1, d_ff=32,
        max_len=32,
    )  # fmt: skip
    tokenizer.save(root / "tokenizer.json")
    return ckpt.save_checkpoint(
        root / "model", model=build(config), config={"model": config.to_dict()},
        tokenizer_json=(root / "tokenizer.json").read_bytes(),
    )  # fmt: skip


def _refresh_manifest(folder: Path, name: str) -> None:
    path = folder / "manifest.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    raw = (folder / name).read_bytes()
    data["files"][name] = {"bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    path.write_text(json.dumps(data), encoding="utf-8")


def _mutate(raw: bytes, flips: list[tuple[int, int]], cut: int | None) -> bytes:
    data = bytearray(raw)
    for where, value in flips:
        if data:
            data[where % len(data)] ^= value
    if cut is not None:
        data = data[: cut % (len(data) + 1)]
    return bytes(data)


MUTATION = dict(
    name=st.sampled_from(["model.safetensors", "config.yaml", "manifest.json"]),
    flips=st.lists(st.tuples(st.integers(0, 2**31), st.integers(1, 255)), max_size=4),
    cut=st.none() | st.integers(0, 2**31),
    header=st.booleans(),  # aim the flips at the first 200 bytes (the safetensors header, the YAML's first keys)
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(**MUTATION)
def test_a_damaged_model_folder_loads_or_is_a_user_error(model_folder, name, flips, cut, header):
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(shutil.copytree(model_folder, Path(tmp) / "model"))
        raw = (folder / name).read_bytes()
        if header:
            flips = [(where % 200, value) for where, value in flips]
        (folder / name).write_bytes(_mutate(raw, flips, cut))
        if name != "manifest.json":
            _refresh_manifest(folder, name)  # the hash check passes: the deeper checks see the damage
        try:
            model, tok, config, _ = modelfile.load(folder)
        except UserError as e:
            # One line is the CLI's promise too, but a YAML syntax error's message keeps PyYAML's line breaks:
            # test_battery.py::test_a_config_yaml_syntax_error_is_one_line (xfail) records that bug.
            assert str(e), repr(e)
        else:
            assert isinstance(model, torch.nn.Module) and tok.vocab_size == model.config.vocab_size


# -- the server's request validation -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def clients(model_folders):
    def client(kind):
        app = create_app(aiayn.load(model_folders / kind, device="cpu"), Settings(max_work=2048))
        return TestClient(app, base_url="http://127.0.0.1", raise_server_exceptions=False)

    return {"/v1/translate": client("s2s"), "/v1/generate": client("lm")}


SCALAR = st.one_of(
    st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=12),
)  # fmt: skip
VALUE = st.recursive(
    SCALAR,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)
SMALL_INT = st.integers(-3, 40) | st.sampled_from([0, 1, 10**9, -(10**9)])
WRONG = {"bogus": VALUE}  # a field of any name: an unknown one is a 422


def _bodies(valid: dict, wrong: dict) -> st.SearchStrategy:
    """Mostly well-formed bodies (most reach the model: 200), some with values of any range or JSON type."""
    good = st.fixed_dictionaries(
        {k: v for k, v in valid.items() if k in ("text", "prompt")},
        optional={k: v for k, v in valid.items() if k not in ("text", "prompt")},
    )
    bad = st.fixed_dictionaries({}, optional={k: v | wrong.get(k, VALUE) for k, v in valid.items()} | WRONG)
    return st.one_of(good, bad, VALUE)


TRANSLATE = _bodies(
    {"text": st.text(max_size=30) | st.lists(st.text(max_size=15), max_size=4), "beam": st.integers(1, 4),
     "alpha": st.floats(0, 2), "max_len": st.none() | st.integers(0, 20)},
    {"beam": SMALL_INT, "alpha": st.floats(allow_nan=True), "max_len": SMALL_INT},
)  # fmt: skip
GENERATE = _bodies(
    {"prompt": st.text(max_size=30), "max_new_tokens": st.integers(0, 12), "temperature": st.floats(0, 10),
     "top_k": st.integers(0, 50), "top_p": st.floats(0.01, 1), "seed": st.integers(0, 2**31)},
    {"max_new_tokens": SMALL_INT, "temperature": st.sampled_from([-1, 11, 1e-300, 5e-324, float("nan")]),
     "top_k": SMALL_INT, "top_p": st.floats(-1, 2), "seed": SMALL_INT},
)  # fmt: skip
BODY = st.one_of(st.tuples(st.just("/v1/translate"), TRANSLATE), st.tuples(st.just("/v1/generate"), GENERATE))
ANSWERS = {200, 400, 413, 415, 422, 503}


def _check(response):
    event(f"status {response.status_code}")  # --hypothesis-show-statistics shows the mix
    assert response.status_code in ANSWERS, (response.status_code, response.text)
    if response.status_code != 200:
        body = response.json()
        assert isinstance(body, dict) and isinstance(body.get("error"), str), body


@settings(max_examples=80, deadline=None)
@given(case=BODY)
def test_any_json_body_gets_an_answer_or_a_json_error_never_500(clients, case):
    path, body = case
    # Encoded here, not by the client: httpx refuses NaN, but a real client may send the token, and it must get a 4xx.
    raw = json.dumps(body).encode()
    _check(clients[path].post(path, content=raw, headers={"Content-Type": "application/json"}))


@settings(max_examples=40, deadline=None)
@given(
    path=st.sampled_from(["/v1/translate", "/v1/generate"]),
    raw=st.binary(max_size=60) | st.text(max_size=60).map(str.encode),
    content_type=st.sampled_from(["application/json", "text/plain", "application/json; charset=latin-1", ""]),
)
def test_any_raw_body_and_content_type_gets_an_answer_or_a_json_error_never_500(clients, path, raw, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    _check(clients[path].post(path, content=raw, headers=headers))


@pytest.mark.parametrize("token", ["NaN", "Infinity", "-Infinity"])
@pytest.mark.parametrize(("path", "field"), [("/v1/generate", "temperature"), ("/v1/translate", "alpha")])
def test_a_non_finite_number_token_gets_a_json_error(clients, path, field, token):
    text = "prompt" if path == "/v1/generate" else "text"
    raw = f'{{"{text}": "two dogs", "{field}": {token}}}'.encode()
    response = clients[path].post(path, content=raw, headers={"Content-Type": "application/json"})
    assert response.status_code in (400, 422), (response.status_code, response.text)
    assert [f["field"] for f in response.json()["fields"]] == [field], response.json()
