"""The built-in symbol tasks and greedy decoding's bookkeeping."""

import pytest
import torch

from aiayn import ModelConfig
from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.data.tasks import FIRST_SYMBOL, symbol_task
from aiayn.decoding import greedy
from aiayn.model import Transformer


@pytest.mark.parametrize("task", ["copy", "reverse"])
def test_symbol_task_layout(task):
    src, tgt = symbol_task(task, 50, torch.Generator().manual_seed(1), min_len=2, max_len=6)
    assert src.shape == (50, 7) and tgt.shape == (50, 8)
    for s, t in zip(src.tolist(), tgt.tolist(), strict=True):
        seq = s[: s.index(EOS_ID)]
        assert 2 <= len(seq) <= 6 and all(x >= FIRST_SYMBOL for x in seq)
        assert s[len(seq) :] == [EOS_ID] + [PAD_ID] * (6 - len(seq))  # EOS, then right padding only
        answer = seq if task == "copy" else seq[::-1]
        assert t == [BOS_ID, *answer, EOS_ID] + [PAD_ID] * (6 - len(seq))


def test_symbol_task_is_deterministic_by_seed_and_checks_arguments():
    a = symbol_task("copy", 5, torch.Generator().manual_seed(3))
    b = symbol_task("copy", 5, torch.Generator().manual_seed(3))
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    with pytest.raises(ValueError, match="task='sort'"):
        symbol_task("sort", 5, torch.Generator())
    with pytest.raises(ValueError, match="min_len=4, max_len=2"):
        symbol_task("copy", 5, torch.Generator(), min_len=4, max_len=2)


class Scripted(torch.nn.Module):
    """A stand-in model whose decoder emits a fixed script per batch row, to check greedy's bookkeeping."""

    def __init__(self, scripts, vocab=8):
        super().__init__()
        self.config = ModelConfig(vocab_size=vocab, d_model=8, n_heads=2)
        self.scripts, self.vocab, self.calls = scripts, vocab, 0

    def encode(self, src, src_mask):
        return torch.zeros(src.shape[0], src.shape[1], 8)

    def new_cache(self, capacity=0):
        return None

    def decode(self, tgt, memory, src_mask, cache):
        step = self.calls
        self.calls += 1
        logits = torch.zeros(tgt.shape[0], 1, self.vocab)
        for b, script in enumerate(self.scripts):
            logits[b, 0, script[min(step, len(script) - 1)]] = 1.0
        return logits


def test_greedy_cuts_at_eos_and_stops_when_all_finished():
    model = Scripted([[5, 6, EOS_ID, 7], [EOS_ID, 4], [5, 5, 5, 5, 5, 5]])
    out = greedy(model, torch.ones(3, 4, dtype=torch.long), max_len=10)
    assert out[0] == [5, 6] and out[1] == [] and out[2] == [5] * 10  # the third never ends: length limit
    assert model.calls == 10
    model = Scripted([[EOS_ID], [4, EOS_ID]])
    assert greedy(model, torch.ones(2, 4, dtype=torch.long), max_len=10) == [[], [4]]
    assert model.calls == 2  # stopped as soon as every row had its EOS


def test_greedy_batched_equals_one_at_a_time():
    torch.manual_seed(0)
    model = Transformer(ModelConfig(vocab_size=20, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2,
                                    n_decoder_layers=2)).eval()  # fmt: skip
    src, _ = symbol_task("copy", 6, torch.Generator().manual_seed(2), n_symbols=16)
    batched = greedy(model, src, max_len=12)
    for b in range(6):
        n = int((src[b] != PAD_ID).sum())
        assert greedy(model, src[b : b + 1, :n], max_len=12) == [batched[b]]
