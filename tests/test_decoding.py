"""Greedy and beam search against slow reference implementations that recompute every prefix without a cache.

The checks none of the other toolkits ship: cached = uncached, batched = one at a time (token for token, fp32),
beam size 1 = greedy, alpha 0 ranks by raw log-probability, EOS at the first step, no EOS before the limit.
"""

import math

import pytest
import torch

from aiayn import ModelConfig
from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.decoding import (
    NEG,
    Hypothesis,
    beam_search,
    check_options,
    greedy,
    greedy_search,
    length_penalty,
    sample,
)
from aiayn.model import KVCache, LanguageModel, Transformer, compile_decoding, record_attention

V = 12


def tiny_model(seed: int = 0, **overrides) -> Transformer:
    torch.manual_seed(seed)
    config = ModelConfig(
        vocab_size=V, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2, d_ff=64, max_len=64, **overrides
    )
    model = Transformer(config).eval()
    # Random weights make near-uniform outputs; sharper ones make the search choices (and EOS) matter.
    with torch.no_grad():
        model.output.weight.mul_(6.0)
    return model


def sources(n: int = 6, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(1, 7, (n,), generator=g).tolist()
    return [torch.randint(4, V, (n_,), generator=g).tolist() for n_ in lengths]


def pad(rows: list[list[int]]) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [PAD_ID] * (width - len(r)) for r in rows])


@torch.no_grad()
def next_logp(model, src: list[int], prefix: list[int]) -> torch.Tensor:
    """log P(next | src, prefix) from a full forward pass: no cache, no batching. The ids decoding never emits
    (padding and BOS: ModelConfig.special_ids.never_emit) get -inf: no search may choose them."""
    logits = model(torch.tensor([src]), torch.tensor([[BOS_ID, *prefix]]))  # (1, T, V)
    logp = logits[0, -1].float().log_softmax(-1)
    logp[list(model.config.special_ids.never_emit)] = float("-inf")
    return logp


@torch.no_grad()
def sequence_logp(model, src: list[int], tokens: list[int], with_eos: bool) -> float:
    """Sum of the log-probabilities of tokens (and a final EOS) under teacher forcing."""
    out = tokens + [EOS_ID] if with_eos else tokens
    logp = model(torch.tensor([src]), torch.tensor([[BOS_ID, *out[:-1]]]))[0].float().log_softmax(-1)  # (T, V)
    return float(logp[torch.arange(len(out)), torch.tensor(out)].sum())


def reference_greedy(model, src: list[int], limit: int) -> list[int]:
    out = []
    for _ in range(limit):
        token = int(next_logp(model, src, out).argmax())
        if token == EOS_ID:
            break
        out.append(token)
    return out


def reference_beam(model, src: list[int], K: int, alpha: float, limit: int) -> list[tuple[list[int], float, bool]]:
    """Beam search written as plainly as possible: lists of (tokens, log-probability), one prefix at a time."""
    beams, finished = [([], 0.0)], []
    for step in range(1, limit + 1):
        candidates = []
        for tokens, score in beams:
            logp = next_logp(model, src, tokens)
            candidates += [(score + float(logp[v]), tokens, v) for v in range(V)]
        candidates.sort(key=lambda c: -c[0])
        new_beams = []
        for rank, (score, tokens, v) in enumerate(candidates[: 2 * K]):
            if v == EOS_ID:
                if rank < K:
                    finished.append((tokens, score / length_penalty(step, alpha), True))
            elif len(new_beams) < K:
                new_beams.append((tokens + [v], score))
        if step == limit:
            finished += [(t, s / length_penalty(step, alpha), False) for t, s in new_beams]
        finished = sorted(finished, key=lambda h: -h[1])[:K]
        if len(finished) == K or step == limit:
            return finished
        beams = new_beams
    return finished


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_greedy_equals_uncached_reference_and_one_at_a_time(seed):
    model = tiny_model(seed)
    srcs = sources(seed=seed + 10)
    batched = greedy_search(model, pad(srcs), max_len=9)
    for src, hyp in zip(srcs, batched, strict=True):
        ref = reference_greedy(model, src, 9)
        assert hyp.tokens == ref
        assert hyp.finished == (len(ref) < 9 or hyp.finished)  # finished iff it produced EOS
        assert EOS_ID not in hyp.tokens
        assert greedy_search(model, pad([src]), max_len=9)[0].tokens == ref
        assert hyp.score == pytest.approx(sequence_logp(model, src, hyp.tokens, hyp.finished), abs=1e-4)


@pytest.mark.parametrize(("seed", "K", "alpha"), [(0, 4, 0.6), (1, 3, 0.0), (2, 5, 1.0), (3, 2, 0.6)])
def test_beam_search_equals_uncached_reference_batched_and_alone(seed, K, alpha):
    model = tiny_model(seed)
    srcs = sources(4, seed=seed + 20)
    batched = beam_search(model, pad(srcs), beam_size=K, alpha=alpha, max_len=7, n_best=K)
    for src, hyps in zip(srcs, batched, strict=True):
        ref = reference_beam(model, src, K, alpha, 7)
        assert [(h.tokens, h.finished) for h in hyps] == [(t, f) for t, _, f in ref]
        assert [h.score for h in hyps] == pytest.approx([s for _, s, _ in ref], abs=1e-4)
        alone = beam_search(model, pad([src]), beam_size=K, alpha=alpha, max_len=7, n_best=K)[0]
        assert [h.tokens for h in alone] == [h.tokens for h in hyps]
        assert [h.score for h in alone] == pytest.approx([h.score for h in hyps], abs=1e-5)


def test_beam_size_one_is_greedy():
    for seed in range(4):
        model = tiny_model(seed)
        src = pad(sources(8, seed=seed))
        beam = beam_search(model, src, beam_size=1, alpha=0.6)
        assert [h[0].tokens for h in beam] == greedy(model, src)


def test_alpha_zero_ranks_by_raw_log_probability():
    model = tiny_model(5)
    srcs = sources(4, seed=3)
    for src, hyps in zip(srcs, beam_search(model, pad(srcs), beam_size=4, alpha=0.0, max_len=8, n_best=4), strict=True):
        raw = [sequence_logp(model, src, h.tokens, h.finished) for h in hyps]
        assert [h.score for h in hyps] == pytest.approx(raw, abs=1e-4)
        assert raw == sorted(raw, reverse=True)


def test_length_penalty_divides_the_log_probability():
    model = tiny_model(6)
    src = sources(1, seed=4)[0]
    for h in beam_search(model, pad([src]), beam_size=4, alpha=0.6, max_len=8, n_best=4)[0]:
        length = len(h.tokens) + int(h.finished)
        raw = sequence_logp(model, src, h.tokens, h.finished)
        assert h.score == pytest.approx(raw / ((5 + length) / 6) ** 0.6, abs=1e-4)


def biased(model: Transformer, token: int, value: float) -> Transformer:
    """Add `value` to one output logit (with a huge value, that token always or never wins)."""
    bias = torch.zeros(V)
    bias[token] = value
    model.output.bias = torch.nn.Parameter(bias)
    return model


def test_eos_at_the_first_step_gives_an_empty_hypothesis():
    model = biased(tiny_model(), EOS_ID, 1e4)
    src = pad(sources(3))
    assert greedy(model, src) == [[], [], []]
    for hyps in beam_search(model, src, beam_size=4, n_best=1):
        assert hyps == [Hypothesis([], hyps[0].score, True)]


def test_no_eos_stops_at_the_length_limit_and_is_marked_unfinished():
    model = biased(tiny_model(), EOS_ID, -1e4)
    srcs = sources(3)
    for src, h in zip(srcs, greedy_search(model, pad(srcs)), strict=True):
        assert (len(h.tokens), h.finished) == (len(src) + 50, False)  # paper §6.1: input length + 50
    for src, hyps in zip(srcs, beam_search(model, pad(srcs), beam_size=3, n_best=3), strict=True):
        assert [(len(h.tokens), h.finished) for h in hyps] == [(len(src) + 50, False)] * 3
    # The limit never exceeds the model's positions.
    assert {len(h.tokens) for h in greedy_search(model, pad(srcs), max_len=1000)} == {64}


@pytest.mark.parametrize(("K", "steps"), [(1, 1), (4, 2)])
def test_beam_stops_as_soon_as_every_source_is_finished(K, steps):
    # EOS always wins: step 1 finishes the one prefix there is; step 2 finishes the other K - 1 beams (each
    # ends in EOS), and then no decoder call is left to make.
    model = biased(tiny_model(), EOS_ID, 1e4)
    calls = []
    decode = model.decode
    model.decode = lambda *a, **k: calls.append(1) or decode(*a, **k)
    out = beam_search(model, pad(sources(4)), beam_size=K, n_best=K)
    assert len(calls) == steps
    assert all(sorted(len(h.tokens) for h in hyps) == sorted([0] + [1] * (K - 1)) for hyps in out)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"beam_size": 0}, "beam_size=0 must be an integer >= 1"),
        ({"alpha": -0.5}, "alpha=-0.5 must be a finite number >= 0"),
        ({"alpha": math.nan}, "alpha=nan"),
        ({"n_best": 5, "beam_size": 4}, r"n_best=5 must be an integer between 1 and beam_size \(4\)"),
        ({"temperature": -1.0}, "temperature=-1.0 must be a finite number >= 0"),
        ({"temperature": math.nan}, "temperature=nan"),
        ({"top_p": 0.0}, r"top_p=0.0 must be in \(0, 1\]"),
        ({"top_p": 1.5}, r"top_p=1.5 must be in \(0, 1\]"),
        ({"top_k": -1}, "top_k=-1 must be an integer >= 0"),
        ({"max_len": 0}, "max_len=0 must be an integer >= 1"),
    ],
)
def test_invalid_options_raise_a_clear_error(options, message):
    with pytest.raises(ValueError, match=message):
        check_options(**options)
    if set(options) <= {"beam_size", "alpha", "n_best", "max_len"}:
        with pytest.raises(ValueError, match=message):
            beam_search(tiny_model(), pad(sources(1)), **options)


def test_min_len_forbids_eos_before_it():
    model = biased(tiny_model(), EOS_ID, 1e4)  # EOS wins whenever it is allowed
    src = pad(sources(3))
    assert [len(h.tokens) for h in greedy_search(model, src, min_len=5)] == [5, 5, 5]
    assert all(h.finished for h in greedy_search(model, src, min_len=5))
    for hyps in beam_search(model, src, beam_size=3, n_best=3, min_len=4):
        assert [len(h.tokens) for h in hyps] == [4, 4, 4] and all(h.finished for h in hyps)  # K prefixes, each + EOS


def test_compiled_decoding_gives_the_eager_hypotheses():
    """compile_decoding: greedy, beam search (whose batch shrinks as sources finish) and sampling give the eager
    tokens, finished flags and scores, over batches of different sizes and source lengths (one compilation with
    dynamic shapes serves them all: the compiled step does not recompile for each, and is not silently eager)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    eager, compiled = tiny_model(5), compile_decoding(tiny_model(5))
    for n, seed in [(6, 30), (1, 31), (3, 32)]:
        src = pad(sources(n, seed=seed))
        for search in (
            lambda m, src=src: [[h] for h in greedy_search(m, src, max_len=9)],
            lambda m, src=src: beam_search(m, src, beam_size=3, alpha=0.6, max_len=9, n_best=3),
        ):
            want, got = search(eager), search(compiled)
            assert [[(h.tokens, h.finished) for h in n_best] for n_best in got] == [
                [(h.tokens, h.finished) for h in n_best] for n_best in want
            ]
            for n_got, n_want in zip(got, want, strict=True):
                assert [h.score for h in n_got] == pytest.approx([h.score for h in n_want], abs=1e-5)
    # The steps ran compiled: a graph for the first batch, one once the source length varied (dynamic from then
    # on) and one for batches of a single row; not one per batch (a graph break in attention would add more).
    assert counters["stats"]["unique_graphs"] == 3
    # Compiling again changes nothing; while attention is recorded, every step runs eager and is recorded.
    step = compiled.decode
    assert compile_decoding(compiled).decode is step
    src = pad(sources(3, seed=33))
    with record_attention(eager) as want:
        greedy_search(eager, src, max_len=9, min_len=9)
    with record_attention(compiled) as got:
        greedy_search(compiled, src, max_len=9, min_len=9)
    name = "decoder.layers.1.cross_attn"
    assert len(got.weights[name]) == len(want.weights[name]) == 9
    for w_got, w_want in zip(got.weights[name], want.weights[name], strict=True):
        torch.testing.assert_close(w_got, w_want)
    assert counters["stats"]["unique_graphs"] == 3

    torch.manual_seed(0)
    config = ModelConfig(arch="lm", vocab_size=V, d_model=32, n_heads=4, n_decoder_layers=2, d_ff=64, max_len=32)
    lm = LanguageModel(config).eval()
    prompt = torch.tensor([[5, 6, 7], [8, 9, 10]])
    want = sample(lm, prompt, 12, temperature=0.8, generator=torch.Generator().manual_seed(1))
    compile_decoding(lm)
    assert sample(lm, prompt, 12, temperature=0.8, generator=torch.Generator().manual_seed(1)) == want


def test_kv_cache_with_a_capacity_allocates_once():
    """KVCache(n, capacity): the buffers are allocated at that size at the first step and never regrow (the
    decoders pass their length limit), while the returned keys/values cover exactly the steps so far."""
    cache = KVCache(1, capacity=40)
    attn = cache.layers[0].self_attn
    k = torch.randn(2, 4, 1, 8)
    attn.append(k, k)
    buffer = attn.k
    assert buffer.shape == (2, 4, 40, 8)
    for step in range(2, 41):
        keys, _ = attn.append(k * step, k * step)
        assert keys.shape == (2, 4, step, 8) and torch.equal(keys[:, :, -1:], k * step)
    assert attn.k is buffer  # no reallocation in 40 steps
    attn.append(k, k)  # past the capacity: grows, keeping what it held
    assert attn.k.shape[2] == 80 and torch.equal(attn.k[:, :, :40], buffer)
    assert KVCache(1).layers[0].self_attn.capacity == 0  # without a hint: grows by doubling from 16, as before


@pytest.mark.parametrize(
    ("rows", "n", "k"), [(1, 32000, 8), (64, 32000, 8), (3, 4096, 8), (5, 4097, 8), (2, 70000, 62)]
)
def test_top_k_by_blocks_equals_topk(rows, n, k):
    # Beam search ranks K * V extensions with aiayn.decoding.top_k, which looks only inside the k blocks with the
    # largest maxima for long rows. Distinct values: the same values and indices as torch.topk.
    from aiayn.decoding import top_k

    torch.manual_seed(n + k)
    x = torch.randn(rows, n)
    x[0, -k:] = 100 + torch.arange(k, dtype=torch.float32)  # all k best in the last (partial) block of row 0
    if rows > 1:
        x[1, ::4096] = 50 + torch.arange(len(range(0, n, 4096)), dtype=torch.float32)  # one in each of many blocks
    values, indices = top_k(x, k)
    expected = x.topk(k, dim=1)
    assert torch.equal(values, expected.values)
    assert torch.equal(indices, expected.indices)
    # Ties (the NEG scores of dropped beams): the same values, and indices that hold them.
    x[:, : n // 2] = NEG
    values, indices = top_k(x, k)
    assert torch.equal(values, x.topk(k, dim=1).values)
    assert torch.equal(x.gather(1, indices), values)
