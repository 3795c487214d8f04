"""Static shapes for pair batches (train.length_bucket) and what they are for: compiled steps with fixed shapes and
CUDA graphs (train.cuda_graphs, aiayn.train.compile_step). Batches are padded to a few (rows, width) shapes and the
padding changes no loss or gradient; the compiled run gives the eager losses; settings that would do nothing are
refused in one line."""

import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trainer import LM_TEXT, lm_args
from tiny_run import TINY, aiayn

from aiayn import ModelConfig
from aiayn.config import PAD_ID, TaskKind, TrainConfig
from aiayn.data.batching import TokenRows, bucket_shape, collate, token_batches
from aiayn.errors import ConfigError
from aiayn.model import Transformer
from aiayn.train import compile_step
from aiayn.train.loss import LossModel


def _shapes(src, tgt, max_tokens, bucket, seed=0):
    batches = token_batches(src, tgt, max_tokens, seed, 0, bucket)
    return batches, [bucket_shape(src[b], tgt[b], max_tokens, bucket) for b in batches]


def test_a_worked_example_gives_one_shape_per_rounded_width():
    # widths max(src + 1, tgt + 2): 4, 4, 4, 3, 4, 7, 7, 8, rounded up to multiples of 4: five of 4, three of 8
    src = np.array([1, 2, 3, 1, 3, 6, 3, 7])
    tgt = np.array([2, 2, 1, 1, 2, 5, 5, 6])
    batches, shapes = _shapes(src, tgt, 16, 4)
    # Sorted by (rounded width, target, source): 3, 2, 0, 1, 4 | 6, 5, 7; cut greedily, so the fifth 4-wide example
    # shares a batch with the first 8-wide one, padded for the wider.
    assert sorted(sorted(b.tolist()) for b in batches) == [[0, 1, 2, 3], [4, 6], [5, 7]]
    assert sorted(shapes) == [(2, 8), (2, 8), (4, 4)]


def test_collate_pads_to_the_shape_with_filler_rows_of_one_token():
    rows = TokenRows([[5, 6], [7]], [[8], [9, 10, 11]])
    src, tgt = collate(rows, [0, 1], shape=(3, 6))
    # The filler row: a source of EOS alone and a target of BOS alone, whose labels (tgt[:, 1:]) are all padding.
    assert src.tolist() == [[5, 6, 2, 0, 0, 0], [7, 2, 0, 0, 0, 0], [2, 0, 0, 0, 0, 0]]
    assert tgt.tolist() == [[1, 8, 2, 0, 0, 0], [1, 9, 10, 11, 2, 0], [1, 0, 0, 0, 0, 0]]
    assert PAD_ID == 0
    assert (tgt[2, 1:] == PAD_ID).all()
    with pytest.raises(ValueError, match="cannot hold 2 rows of up to 5 tokens"):
        collate(rows, [0, 1], shape=(2, 4))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 60), st.integers(1, 60)), min_size=1, max_size=300),
       st.sampled_from([64, 200, 1000]), st.sampled_from([4, 8, 16]), st.integers(0, 5))  # fmt: skip
def test_bucketed_batches_hold_every_example_once_in_few_shapes(pairs, max_tokens, bucket, seed):
    src, tgt = np.array([p[0] for p in pairs]), np.array([p[1] for p in pairs])
    batches, shapes = _shapes(src, tgt, max_tokens, bucket, seed)
    assert sorted(np.concatenate(batches).tolist()) == list(range(len(pairs)))
    for b, (n, w) in zip(batches, shapes, strict=True):
        assert n >= len(b) and w % bucket == 0 and w >= max(src[b].max() + 1, tgt[b].max() + 2)
        assert n * w <= max_tokens or n == 1  # within the budget, or one example longer than it
    assert len(set(shapes)) <= compile_step.shape_count(src, tgt, bucket)
    assert all(n == max(max_tokens // w, 1) for n, w in shapes)  # one row count per width: one shape per width


@settings(max_examples=30, deadline=None)
@given(st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=80),
       st.sampled_from([64, 300]), st.sampled_from([8, 16]))  # fmt: skip
def test_every_query_of_a_static_shape_sees_a_key(lengths, max_tokens, bucket):
    """No attention row is fully masked, fillers included: such a row has a logsumexp near -inf, for which cuDNN's
    SDPA backward on H100/H200 returns NaN gradients (pytorch/pytorch#196678; 2.3 % of the steps were skipped as
    non-finite on an H200 before fillers held a token). Self- and cross-attention keys are the source's."""
    rows = TokenRows([[7] * s for s, _ in lengths], [[8] * t for _, t in lengths])
    src_len, tgt_len = np.array([s for s, _ in lengths]), np.array([t for _, t in lengths])
    for batch in token_batches(src_len, tgt_len, max_tokens, 0, 0, bucket):
        src, tgt = collate(rows, batch, shape=bucket_shape(src_len[batch], tgt_len[batch], max_tokens, bucket))
        assert src.shape[0] >= len(batch) and (src != PAD_ID).any(dim=1).all()
        assert (tgt[:, 0] != PAD_ID).all()  # the decoder's causal self-attention: query 0 sees key 0


def test_padding_to_the_shape_changes_no_loss_or_gradient():
    torch.manual_seed(0)
    config = ModelConfig(arch="seq2seq", vocab_size=60, d_model=32, n_heads=4, n_encoder_layers=2,
                         n_decoder_layers=2, d_ff=64, max_len=64, dropout=0.0)  # fmt: skip
    model = Transformer(config).train()
    rng = np.random.default_rng(1)
    rows = TokenRows([rng.integers(4, 60, n).tolist() for n in (5, 9, 3)],
                     [rng.integers(4, 60, n).tolist() for n in (7, 4, 8)])  # fmt: skip
    loss_model = LossModel(model, model.hidden, 0.1, PAD_ID)
    results = []
    for shape in (None, (6, 16)):
        src, tgt = collate(rows, [0, 1, 2], shape=shape)
        model.zero_grad()
        loss, nll = loss_model(src, tgt[:, :-1], target=tgt[:, 1:])
        loss.backward()
        results.append((loss.item(), nll.item(), [p.grad.clone() for p in model.parameters()]))
    (loss_a, nll_a, grads_a), (loss_b, nll_b, grads_b) = results
    assert loss_b == pytest.approx(loss_a, rel=1e-6) and nll_b == pytest.approx(nll_a, rel=1e-6)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(grads_a, grads_b, strict=True))


def _losses(run):
    entries = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [e["loss"] for e in entries if "split" not in e]


def test_a_compiled_run_with_length_buckets_gives_the_eager_losses(tmp_path):
    args = [*TINY, "--model.dropout", "0", "--train.max_steps", "4", "--train.eval_every", "100",
            "--train.length_bucket", "16"]  # fmt: skip
    got = {}
    for mode, extra in (("eager", []), ("compiled", ["--train.compile", "true"])):
        result = aiayn("train", *args, *extra, "--train.out_dir", tmp_path / mode, timeout=600)
        assert result.returncode == 0, result.stderr
        got[mode] = _losses(tmp_path / mode)
    assert len(got["eager"]) == 4 and got["compiled"] == pytest.approx(got["eager"], rel=1e-4)


@pytest.mark.parametrize(("extra", "message"), [
    (["--train.cuda_graphs", "true"], "cuda_graphs=true replays compiled code: it needs train.compile=true"),
    (["--train.cuda_graphs", "true", "--train.compile", "true", "--train.device", "cpu"],
     "cuda_graphs=true needs a CUDA device; this run is on cpu"),
    (["--train.length_bucket", "-1"], "length_bucket=-1 must be >= 0"),
])  # fmt: skip
def test_settings_that_cannot_work_are_one_line(tmp_path, extra, message):
    result = aiayn("train", *TINY, *extra, "--train.out_dir", tmp_path / "run")
    assert result.returncode == 2 and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_length_buckets_on_text_are_refused_in_one_line(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text(LM_TEXT, encoding="utf-8")
    result = aiayn("train", *lm_args(text), "--train.length_bucket", "8", "--train.out_dir", tmp_path / "run")
    assert result.returncode == 2 and "train.length_bucket applies to translation pairs" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_cuda_graphs_for_pairs_need_length_buckets():
    train = TrainConfig(compile=True, cuda_graphs=True)
    with pytest.raises(ConfigError, match="needs fixed shapes: set train.length_bucket"):
        compile_step.check_static_shapes(train, TaskKind.PAIRS, torch.device("cuda"))
    compile_step.check_static_shapes(TrainConfig(compile=True, cuda_graphs=True, length_bucket=16), TaskKind.PAIRS,
                                     torch.device("cuda"))  # fmt: skip


def test_more_shapes_than_dynamos_limit_raise_it_around_each_call_only(monkeypatch):
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    before = getattr(config, name)
    seen = []
    monkeypatch.setattr(torch, "compile", lambda fn, **kwargs: fn)  # what is compiled is not the point here
    lengths = np.array([3, 150])  # widths up to 152: 10 shapes of 16
    corpus = TokenRows([[5] * n for n in lengths], [[6] * n for n in lengths])
    train = TrainConfig(compile=True, length_bucket=16)
    hidden = compile_step.compile_hidden(lambda: seen.append(getattr(config, name)), train, TaskKind.PAIRS,
                                         torch.device("cpu"), corpus)  # fmt: skip
    hidden()
    assert seen == [11] and getattr(config, name) == before
