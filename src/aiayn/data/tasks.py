"""The built-in generated tasks (`data.task`), deterministic by seed: data that needs no download, for the
demo, smoke tests and examples. `task_pairs` gives text pairs for training; `symbol_task` gives id tensors for
scripts that train the model alone (examples/reverse_task.py).

`dates`: dates written the many ways people write them -> ISO dates (aiayn.data.dates).
`copy`: the target is the source; `reverse`: the target is the source reversed. Both need attention to the
right source position at every step, so a model that learns them exactly has working masks and positions.
"""

from __future__ import annotations

import random
import string

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID, UNK_ID
from aiayn.data.dates import _check_count, date_pairs
from aiayn.errors import ConfigError

TASKS = ("dates", "copy", "reverse")

FIRST_SYMBOL = UNK_ID + 1  # ids below are the special tokens pad / bos / eos / unk


def symbol_task(
    task: str, n: int, generator: torch.Generator, n_symbols: int = 10, min_len: int = 3, max_len: int = 8
) -> tuple[torch.Tensor, torch.Tensor]:
    """n random sequences of min_len..max_len symbols (ids FIRST_SYMBOL .. FIRST_SYMBOL + n_symbols - 1).

    Returns right-padded (src (n, max_len + 1), tgt (n, max_len + 2)): src is the sequence then EOS, tgt is BOS,
    the answer, EOS. Feed tgt[:, :-1] to the decoder and predict tgt[:, 1:] (teacher forcing). Vocabulary size:
    FIRST_SYMBOL + n_symbols. The source ends with EOS, as in Marian and fairseq, so that "the source is used up"
    is a token the decoder can attend to; without it a model must infer the end from positions alone, and
    small models then stop one token early on full-length sequences that end in a repeated symbol.
    """
    if task not in ("copy", "reverse"):
        raise ConfigError(f"task={task!r} is not one of 'copy' | 'reverse'")
    if not 1 <= min_len <= max_len:
        raise ConfigError(f"need 1 <= min_len <= max_len, got min_len={min_len}, max_len={max_len}")
    lengths = torch.randint(min_len, max_len + 1, (n,), generator=generator)
    symbols = torch.randint(FIRST_SYMBOL, FIRST_SYMBOL + n_symbols, (n, max_len), generator=generator)
    positions = torch.arange(max_len)[None, :]  # (1, max_len)
    real = positions < lengths[:, None]  # (n, max_len): True on the first `length` columns
    sequences = symbols.masked_fill(~real, PAD_ID)  # (n, max_len)
    if task == "reverse":
        # Position i of the answer is source position length - 1 - i.
        index = (lengths[:, None] - 1 - positions).clamp(min=0)  # (n, max_len)
        answer = sequences.gather(1, index).masked_fill(~real, PAD_ID)
    else:
        answer = sequences
    rows = torch.arange(n)
    src = torch.full((n, max_len + 1), PAD_ID)
    src[:, :-1] = sequences
    src[rows, lengths] = EOS_ID
    tgt = torch.full((n, max_len + 2), PAD_ID)
    tgt[:, 0] = BOS_ID
    tgt[:, 1:-1] = answer
    tgt[rows, lengths + 1] = EOS_ID
    return src, tgt


def _letter_pairs(task: str, n: int, rng: random.Random, min_len: int = 3, max_len: int = 8) -> list[tuple[str, str]]:
    pairs = []
    for _ in range(n):
        letters = [rng.choice(string.ascii_lowercase) for _ in range(rng.randint(min_len, max_len))]
        answer = letters[::-1] if task == "reverse" else letters
        pairs.append((" ".join(letters), " ".join(answer)))
    return pairs


def task_pairs(task: str, n: int, seed: int) -> list[tuple[str, str]]:
    """n (source, target) text pairs of a built-in task, deterministic by seed.

    "dates": `date_pairs(n, seed)`. "copy" / "reverse": 3-8 random lowercase letters separated by spaces
    ("q w e r"); the target is the same letters ("copy") or the letters in reverse order ("reverse": "r e w q").
    """
    if task not in TASKS:
        raise ConfigError(f"task={task!r} is not one of {' | '.join(map(repr, TASKS))}")
    _check_count(n)
    if task == "dates":
        return date_pairs(n, seed)
    return _letter_pairs(task, n, random.Random(seed))
