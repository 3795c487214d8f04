"""Masks: True = may attend, built in one place; properties checked on random shapes."""

import torch
from hypothesis import given
from hypothesis import strategies as st

from aiayn.model.masks import causal_mask, combine, padding_mask


@given(t_query=st.integers(1, 12), extra=st.integers(0, 12))
def test_causal_mask_lets_each_query_see_exactly_its_past(t_query, extra):
    t_key = t_query + extra  # `extra` past steps held in a KV cache
    mask = causal_mask(t_query, t_key)
    assert mask.shape == (t_query, t_key) and mask.dtype == torch.bool
    for i in range(t_query):
        position = extra + i  # absolute position of query i
        assert mask[i, : position + 1].all()
        assert not mask[i, position + 1 :].any()


def test_causal_mask_refuses_fewer_keys_than_queries():
    try:
        causal_mask(5, 3)
    except ValueError as e:
        assert "t_key=3" in str(e)
    else:
        raise AssertionError("expected ValueError")


@given(lengths=st.lists(st.integers(0, 9), min_size=1, max_size=5), pad_id=st.integers(0, 3))
def test_padding_mask_marks_real_tokens(lengths, pad_id):
    S = max(lengths) + 1
    ids = torch.full((len(lengths), S), pad_id)
    for b, n in enumerate(lengths):
        ids[b, :n] = pad_id + 1
    mask = padding_mask(ids, pad_id)
    assert mask.shape == (len(lengths), 1, 1, S)
    assert mask.sum(dim=-1).flatten().tolist() == lengths


def test_combine_is_logical_and_with_broadcast():
    ids = torch.tensor([[5, 6, 0], [7, 0, 0]])
    both = combine(padding_mask(ids, 0), None, causal_mask(3))
    assert both.shape == (2, 1, 3, 3)
    expected_row2 = torch.tensor([[1, 0, 0], [1, 0, 0], [1, 0, 0]], dtype=torch.bool)
    assert torch.equal(both[1, 0], expected_row2)
    assert combine(None, None) is None


def test_no_additive_mask_constants_in_the_package():
    """Masks are boolean and applied with masked_fill / SDPA; an additive -1e9 (or -1e4) overflows in fp16 and
    turns fully masked rows into NaN (reliability battery N2)."""
    import re
    from pathlib import Path

    import aiayn

    pattern = re.compile(r"-\s*1e[49]\b|-\s*10000\.0?\b|float\(\s*['\"]-inf['\"]\s*\)|-math\.inf|-torch\.inf")
    offenders = [
        f"{path.name}:{n}: {line.strip()}"
        for path in Path(aiayn.__file__).parent.rglob("*.py")
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
        if pattern.search(line)
    ]
    assert offenders == []
