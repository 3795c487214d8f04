"""Fixtures shared by the tests of what sits on a trained model folder (viz, explain, serve)."""

import pytest
from test_inference import write_model

from aiayn.tokenizer import train_tokenizer

TEXT = ["two dogs play in the snow", "zwei hunde spielen im schnee", "a man rides a bike", "ein mann fährt rad"] * 5


@pytest.fixture(scope="session")
def model_folders(tmp_path_factory):
    """A folder with two small random-weight model folders: `s2s` (encoder-decoder) and `lm` (decoder-only)."""
    tokenizer = train_tokenizer(TEXT, vocab_size=300, min_frequency=1)
    folder = tmp_path_factory.mktemp("models")
    write_model(folder / "s2s", tokenizer, output_bias=True)
    write_model(folder / "lm", tokenizer, arch="lm")
    return folder
