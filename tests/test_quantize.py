"""int8 CPU decoding (`aiayn.load(DIR, quantize="int8")`, `--quantize int8`): on a small trained model (the demo's
dates model, shortened), logits stay within a stated bound of fp32's and greedy outputs equal fp32's on at least
90% of held-out dates; every Linear is replaced; what cannot be quantized is one line."""

from __future__ import annotations

import pytest
import torch
from tiny_run import aiayn

from aiayn.data.tasks import task_pairs
from aiayn.demo import EVAL_SEED
from aiayn.inference import load
from aiayn.model.masks import padding_mask

HELD_OUT = 200
# The stated bounds, teacher-forced over the real target positions of 32 held-out dates: the largest logit
# difference at most 5% of the range of fp32's logits, and the largest difference of any token's probability
# 0.1. Measured with torch.ao on torch 2.13 (300 steps): 1.9% of the range (0.31 of 16.7), 0.049.
LOGIT_BOUND = 0.05
PROB_BOUND = 0.1


@pytest.fixture(scope="module")
def dates_model(tmp_path_factory):
    """The demo's model and data, 300 steps: ~95% exact match, enough to make outputs depend on the weights."""
    run = tmp_path_factory.mktemp("dates") / "run"
    result = aiayn("train", "--config", "configs/demo-dates.yaml", "--train.out_dir", run, "--train.max_steps", "300",
                   "--data.task_train_size", "20000", "--train.eval_every", "300", "--train.save_every", "300",
                   "--train.eval_bleu_sentences", "20", "--train.log_every", "300", timeout=900)  # fmt: skip
    assert result.returncode == 0, result.stderr
    return run


def _held_out() -> list[tuple[str, str]]:
    return task_pairs("dates", HELD_OUT, EVAL_SEED)


def test_int8_greedy_equals_fp32_on_held_out_dates(dates_model):
    fp32, int8 = load(dates_model, device="cpu"), load(dates_model, device="cpu", quantize="int8")
    assert fp32.quantized is None and int8.quantized in ("torch.ao", "torchao")
    sources = [s for s, _ in _held_out()]
    a, b = fp32.translate(sources, beam=1), int8.translate(sources, beam=1)
    same = sum(x == y for x, y in zip(a, b, strict=True)) / len(sources)
    assert same >= 0.9, f"int8 greedy equals fp32 on {same:.1%} of held-out dates"
    correct = sum(x == t for x, (_, t) in zip(b, _held_out(), strict=True)) / len(sources)
    assert correct >= 0.5  # the model learned the task: outputs that equal fp32's are not empty ones


def test_int8_logits_within_bound_of_fp32(dates_model):
    fp32, int8 = load(dates_model, device="cpu"), load(dates_model, device="cpu", quantize="int8")
    pairs = _held_out()[:32]
    tok, ids = fp32.tokenizer, fp32.model.config.special_ids
    rows = [tok.encode(s) + [ids.eos] for s, _ in pairs]
    targets = [[ids.bos] + tok.encode(t) for _, t in pairs]
    src = torch.full((len(rows), max(map(len, rows))), ids.pad)  # (B, S) right-padded
    tgt = torch.full((len(rows), max(map(len, targets))), ids.pad)  # (B, T)
    for i, (s, t) in enumerate(zip(rows, targets, strict=True)):
        src[i, : len(s)], tgt[i, : len(t)] = torch.tensor(s), torch.tensor(t)
    with torch.inference_mode():
        expected, got = fp32.model(src, tgt), int8.model(src, tgt)  # (B, T, V)
    real = tgt != ids.pad  # (B, T) the positions of real target tokens
    e, g = expected[real], got[real]  # (N, V)
    diff = (g - e).abs().max() / (e.max() - e.min())
    assert 0 < diff <= LOGIT_BOUND, f"int8 logits differ from fp32 by {diff:.1%} of their range"  # > 0: int8 ran
    assert (g.softmax(-1) - e.softmax(-1)).abs().max() <= PROB_BOUND
    assert (g.argmax(-1) == e.argmax(-1)).float().mean() >= 0.99
    # Every Linear became an int8 one (the pre-softmax one too), and scoring keeps the fp32 output matrix.
    assert not any(type(m) is torch.nn.Linear and type(m.weight) is torch.nn.Parameter for m in int8.model.modules())
    assert torch.equal(int8.model.output_weight, fp32.model.output_weight)
    mask = padding_mask(src, ids.pad)
    with torch.inference_mode():
        assert torch.allclose(int8.model.encode(src, mask), fp32.model.encode(src, mask), atol=0.5)


def test_quantize_on_the_command_line(dates_model, tmp_path):
    sources = [s for s, _ in _held_out()[:20]]
    (tmp_path / "in.txt").write_text("\n".join(sources) + "\n", encoding="utf-8")
    result = aiayn("translate", "--model", dates_model, "--quantize", "int8", "--beam", "1", "--device", "cpu",
                   "--input", tmp_path / "in.txt")  # fmt: skip
    assert result.returncode == 0, result.stderr
    expected = load(dates_model, device="cpu", quantize="int8").translate(sources, beam=1)
    assert result.stdout.splitlines() == expected


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (dict(quantize="int4"), "quantize='int4': expected one of int8"),
        (dict(quantize="int8", compile=True), "quantize='int8' and compile=True do not go together"),
    ],
)
def test_what_cannot_be_quantized_is_one_line(dates_model, kwargs, message):
    from aiayn.errors import ConfigError

    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load(dates_model, device="cpu", **kwargs)


def test_quantize_flag_is_refused_where_it_does_not_apply(dates_model):
    result = aiayn("perplexity", "--model", dates_model, "--quantize", "int8", "--text", "x")
    assert result.returncode == 2 and "unrecognized arguments: --quantize" in result.stderr


def test_torchao_where_torch_ao_quantizes_nothing(dates_model, monkeypatch):
    """A torch whose torch.ao.quantize_dynamic leaves the layers as they are gets torchao's int8 layers."""
    pytest.importorskip("torchao")
    from aiayn.inference import quantize

    monkeypatch.setattr(quantize, "_torch_ao", lambda model: False)
    fp32, int8 = load(dates_model, device="cpu"), load(dates_model, device="cpu", quantize="int8")
    assert int8.quantized == "torchao"
    assert all(type(m.weight) is not torch.nn.Parameter for m in int8.model.modules() if type(m) is torch.nn.Linear)
    sources = [s for s, _ in _held_out()[:100]]
    a, b = fp32.translate(sources, beam=1), int8.translate(sources, beam=1)
    assert sum(x == y for x, y in zip(a, b, strict=True)) >= 90
