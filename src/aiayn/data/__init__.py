"""Reading the user's text, batching it, and the built-in generated tasks."""

from aiayn.data.corpus import CorpusStats, TokenCorpus, cache_key, collate, token_batches, token_stream
from aiayn.data.reader import DataError, clean, read_lines, read_parallel, read_tsv

__all__ = [
    "CorpusStats",
    "DataError",
    "TokenCorpus",
    "cache_key",
    "clean",
    "collate",
    "read_lines",
    "read_parallel",
    "read_tsv",
    "token_batches",
    "token_stream",
]
