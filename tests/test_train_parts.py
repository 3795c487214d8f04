"""The training recipe's pure parts: label-smoothed loss, learning-rate schedules, run configs and overrides."""

import math
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from aiayn.config import RunConfig, load_yaml, merge, parse_overrides
from aiayn.train.distributed import cpu_has_bf16
from aiayn.train.loss import label_smoothed_loss, linear_label_smoothed_loss
from aiayn.train.optim import cosine_lr, inverse_sqrt_lr, learning_rate, make_optimizer, noam_lr


@pytest.mark.parametrize("smoothing", [0.0, 0.1, 0.3])
def test_label_smoothed_loss_matches_torch_and_ignores_padding(smoothing):
    torch.manual_seed(0)
    logits = torch.randn(3, 5, 11) * 4
    target = torch.randint(4, 11, (3, 5))
    target[0, 3:] = 0  # padding
    target[2, 1:] = 0
    loss, nll, tokens = label_smoothed_loss(logits, target, smoothing, pad_id=0)
    ref = F.cross_entropy(
        logits.reshape(-1, 11), target.reshape(-1), ignore_index=0, reduction="sum", label_smoothing=smoothing
    )
    ref_nll = F.cross_entropy(logits.reshape(-1, 11), target.reshape(-1), ignore_index=0, reduction="sum")
    assert tokens == 3 + 5 + 1
    torch.testing.assert_close(loss, ref, rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-6, atol=1e-5)


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_label_smoothed_loss_gradient_matches_torch(smoothing):
    # The backward is written by hand (softmax - smoothed one-hot): it must equal autograd through PyTorch's loss.
    torch.manual_seed(1)
    logits = (torch.randn(4, 6, 13, dtype=torch.float64) * 3).requires_grad_()
    target = torch.randint(1, 13, (4, 6))
    target[1, 2:] = 0
    target[3, :] = 0
    loss, _, _ = label_smoothed_loss(logits, target, smoothing, pad_id=0)
    (loss * 0.37).backward()
    ref_logits = logits.detach().clone().requires_grad_()
    ref = F.cross_entropy(
        ref_logits.reshape(-1, 13), target.reshape(-1), ignore_index=0, reduction="sum", label_smoothing=smoothing
    )
    (ref * 0.37).backward()
    torch.testing.assert_close(logits.grad, ref_logits.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(logits.grad[3], torch.zeros(6, 13, dtype=torch.float64))


def test_label_smoothing_worked_example():
    # Two classes, uniform logits: every log-prob is log(1/2), so loss = log 2 whatever the smoothing.
    loss, nll, tokens = label_smoothed_loss(torch.zeros(1, 1, 2), torch.tensor([[1]]), 0.1, pad_id=5)
    assert tokens == 1 and loss.item() == pytest.approx(math.log(2)) and nll.item() == pytest.approx(math.log(2))
    # Logits (0, ln 3): p = (1/4, 3/4); target 1, eps 0.1: 0.9 * -ln(3/4) + 0.1 * mean(-ln(1/4), -ln(3/4)).
    loss, _, _ = label_smoothed_loss(torch.tensor([[[0.0, math.log(3)]]]), torch.tensor([[1]]), 0.1, pad_id=5)
    expected = 0.9 * -math.log(0.75) + 0.1 * 0.5 * (-math.log(0.25) - math.log(0.75))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_all_padding_batch_gives_zero_loss_and_zero_grads_not_nan():
    logits = torch.randn(2, 3, 7, requires_grad=True)
    loss, nll, tokens = label_smoothed_loss(logits, torch.zeros(2, 3, dtype=torch.long), 0.1, pad_id=0)
    loss.backward()
    assert tokens == 0 and loss.item() == 0.0 and nll.item() == 0.0
    assert torch.equal(logits.grad, torch.zeros_like(logits))


def test_loss_under_bf16_autocast_is_computed_in_fp32():
    logits = (torch.randn(2, 4, 50) * 1e4).bfloat16()
    loss, _, _ = label_smoothed_loss(logits, torch.randint(1, 50, (2, 4)), 0.1, pad_id=0)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)


def test_noam_schedule_is_the_papers_formula():
    # §5.3 with d_model 512, warmup 4000: peak at step 4000 = 512^-0.5 * 4000^-0.5.
    peak = 512**-0.5 * 4000**-0.5
    assert noam_lr(4000, 512, 4000) == pytest.approx(peak, rel=1e-12)
    assert noam_lr(4000, 512, 4000) == pytest.approx(6.987712429686844e-04, rel=1e-12)
    assert noam_lr(1, 512, 4000) == pytest.approx(512**-0.5 * 4000**-1.5)
    assert noam_lr(16000, 512, 4000) == pytest.approx(peak / 2)  # 1/sqrt(step) after the warmup
    values = [noam_lr(s, 512, 4000) for s in range(1, 10000, 97)]
    assert max(values) <= peak


def test_inverse_sqrt_and_cosine_schedules():
    assert inverse_sqrt_lr(50, 1e-3, 100) == pytest.approx(5e-4)
    assert inverse_sqrt_lr(100, 1e-3, 100) == pytest.approx(1e-3)
    assert inverse_sqrt_lr(400, 1e-3, 100) == pytest.approx(5e-4)
    assert cosine_lr(10, 1e-3, 10, 110) == pytest.approx(1e-3)
    assert cosine_lr(60, 1e-3, 10, 110, 1e-4) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert cosine_lr(110, 1e-3, 10, 110, 1e-4) == pytest.approx(1e-4)
    assert cosine_lr(500, 1e-3, 10, 110, 1e-4) == pytest.approx(1e-4)


def test_learning_rate_dispatches_on_the_config():
    config = RunConfig.from_dict({"optim": {"schedule": "inverse_sqrt", "lr": 1e-3, "warmup": 10}})
    assert learning_rate(40, config.optim, 512, 100) == pytest.approx(5e-4)
    config = RunConfig.from_dict({})
    assert learning_rate(4000, config.optim, 512, 100) == pytest.approx(512**-0.5 * 4000**-0.5)


def test_optimizer_is_adam_with_the_papers_betas():
    optim = make_optimizer(torch.nn.Linear(2, 2), RunConfig.from_dict({}).optim)
    assert isinstance(optim, torch.optim.Adam)
    group = optim.param_groups[0]
    assert group["betas"] == (0.9, 0.98) and group["eps"] == 1e-9


def test_overrides_are_typed_and_dotted():
    got = parse_overrides(
        [
            "--train.max_steps",
            "100",
            "--optim.lr=1e-3",
            "--train.compile",
            "true",
            "--data.train_src",
            "a.en",
            "--data.train_tgt",
            "a.de",
            "--train.out_dir",
            "runs/e1",
        ]
    )
    assert got == {
        "train": {"max_steps": 100, "compile": True, "out_dir": "runs/e1"},
        "optim": {"lr": 0.001},
        "data": {"train_src": "a.en", "train_tgt": "a.de"},
    }
    config = RunConfig.from_dict(merge({"train": {"max_steps": 5, "seed": 3}}, got))
    assert config.train.max_steps == 100 and config.train.seed == 3 and config.optim.lr == 1e-3


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--trian.max_steps", "1"], "did you mean '--train.max_steps'"),
        (["--train.max_step", "1"], "did you mean 'max_steps'"),
        (["--train.precision", "fp8"], "TrainConfig.precision='fp8' is not one of 'fp32' | 'bf16' | 'fp16'"),
        (["--train.max_steps", "ten"], "TrainConfig.max_steps='ten' must be an integer"),
        (["--train.max_steps"], "needs a value"),
        (["--data.train_src", "a"], "data.train_src and data.train_tgt go together"),
        (["--data.task", "dates", "--data.train_tsv", "x.tsv"], "give one source of training data"),
    ],
)
def test_bad_overrides_name_the_key(args, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("|", r"\|")):
        RunConfig.from_dict(parse_overrides(args))


def test_config_files_errors_name_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  max_steps: [1\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"bad.yaml line \d+: not valid YAML"):
        load_yaml(str(bad))
    with pytest.raises(ValueError, match="no such file"):
        load_yaml(str(tmp_path / "missing.yaml"))
    with pytest.raises(ValueError, match="unknown config section 'trian'; did you mean 'train'"):
        RunConfig.from_dict({"trian": {}})


def test_weight_decay_uses_adamw_and_spares_biases_and_norms():
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.LayerNorm(4))
    config = RunConfig.from_dict({"optim": {"weight_decay": 0.1}}).optim
    optim = make_optimizer(model, config)
    assert isinstance(optim, torch.optim.AdamW)
    decayed, spared = optim.param_groups
    assert decayed["weight_decay"] == 0.1 and [p.shape for p in decayed["params"]] == [torch.Size([4, 3])]
    assert spared["weight_decay"] == 0.0 and len(spared["params"]) == 3  # linear bias, norm weight and bias


def test_matmul_precision_bf16_uses_bf16_inputs_and_restores_the_setting():
    # PyTorch's setting is a permission, not an order: oneDNN gives fp32 products bf16 inputs only where it has the
    # kernel (AMX), and elsewhere (AVX512-BF16 CPUs included) silently computes in fp32. matmul_precision('bf16')
    # then refuses in one line; its probe must agree with what the setting, set by hand, does to a product here.
    from aiayn.errors import ConfigError
    from aiayn.train.distributed import bf16_matmul_precision_works, matmul_precision

    before = torch.backends.mkldnn.matmul.fp32_precision
    torch.manual_seed(0)
    a, b = torch.randn(64, 128), torch.randn(128, 96)
    exact = a @ b
    rounded = a.bfloat16().double() @ b.bfloat16().double()  # bf16 inputs, exact accumulation
    torch.backends.mkldnn.matmul.fp32_precision = "bf16"
    try:
        by_hand = a @ b
    finally:
        torch.backends.mkldnn.matmul.fp32_precision = before
    honoured = (by_hand.double() - rounded).abs().max().item() < 1e-3
    assert bf16_matmul_precision_works() is honoured
    assert torch.backends.mkldnn.matmul.fp32_precision == before  # the probe puts the setting back
    if not cpu_has_bf16():
        assert not honoured  # no bf16 in oneDNN at all
    if honoured:
        with matmul_precision("bf16", torch.device("cpu")):
            assert torch.backends.mkldnn.matmul.fp32_precision == "bf16"
            fast = a @ b
        torch.testing.assert_close(fast.double(), rounded, rtol=0, atol=1e-3)
        assert not torch.equal(fast, exact)
    else:
        torch.testing.assert_close(by_hand, exact, rtol=0, atol=1e-4)  # the setting changed nothing...
        with (
            pytest.raises(ConfigError) as refused,
            matmul_precision("bf16", torch.device("cpu")),
        ):
            pass
        assert str(refused.value) == (  # ...so it is refused, never a silent no-op
            f"train.matmul_precision='bf16' has no effect with torch {torch.__version__} on this CPU: its fp32 "
            "matrix products keep fp32 inputs (oneDNN gives them bf16 inputs only on CPUs with AMX); use 'fp32'"
        )
    assert torch.backends.mkldnn.matmul.fp32_precision == before
    with matmul_precision("fp32", torch.device("cpu")):
        assert torch.equal(a @ b, exact)
    with (
        pytest.raises(ValueError, match="'tf32' is for CUDA devices; on CPUs use 'bf16'"),
        matmul_precision("tf32", torch.device("cpu")),
    ):
        pass
    with pytest.raises(ValueError, match="matmul_precision"):
        RunConfig.from_dict({"train": {"matmul_precision": "fp8"}})


def test_more_processes_than_gpus_is_one_clear_error(monkeypatch):
    from aiayn.train import distributed

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=r"LOCAL_RANK=1 needs CUDA device 1, but this machine has 1: start torchrun "
                       r"with --nproc_per_node <= 1, or use --train.device cpu"):  # fmt: skip
        distributed.setup("cuda")


FAULTS = """
import resource, sys, torch
from aiayn.train.memory import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
faults = []
for _ in range(6):
    x = torch.ones(16 * 2**20)  # 64 MB, written: every page touched
    del x
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    x = torch.ones(16 * 2**20)
    del x
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
# The fewest: a small allocation between two rounds can take the start of the freed block, so that one round
# extends the heap (with fresh pages) instead of reusing it; by default every round faults all its pages in.
print(min(faults))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc")
def test_keep_freed_memory_stops_the_page_faults_of_a_repeated_large_allocation():
    def faults(mode):
        out = subprocess.run([sys.executable, "-c", FAULTS, mode], capture_output=True, text=True, check=True)
        return int(out.stdout)

    default, kept = faults("default"), faults("keep")
    assert kept < 16 <= default  # 16,384 4-KiB pages by default (32 with transparent huge pages), 0 when kept


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("rows", [1, 4, 7, 1000])
def test_linear_loss_equals_the_loss_over_full_logits(smoothing, with_bias, rows):
    # The chunked form computes its gradients in the forward, with the eps / V term folded into column sums:
    # value and gradients must equal autograd through F.linear + PyTorch's cross-entropy, for any chunk size.
    torch.manual_seed(2)
    hidden = torch.randn(3, 5, 8, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(13, 8, dtype=torch.float64, requires_grad=True)
    bias = torch.randn(13, dtype=torch.float64, requires_grad=True) if with_bias else None
    target = torch.randint(1, 13, (3, 5))
    target[1, 2:] = 0
    target[2, :] = 0
    loss, nll, tokens = linear_label_smoothed_loss(hidden, weight, bias, target, smoothing, pad_id=0, rows=rows)
    (loss * 0.37).backward()
    leaves = [t for t in (hidden, weight, bias) if t is not None]
    grads = [t.grad for t in leaves]
    ref_leaves = [t.detach().clone().requires_grad_() for t in leaves]
    logits = F.linear(ref_leaves[0], ref_leaves[1], ref_leaves[2] if with_bias else None).reshape(-1, 13)
    ref = F.cross_entropy(logits, target.reshape(-1), ignore_index=0, reduction="sum", label_smoothing=smoothing)
    ref_nll = F.cross_entropy(logits, target.reshape(-1), ignore_index=0, reduction="sum")
    (ref * 0.37).backward()
    assert tokens == 5 + 2
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-12, atol=1e-12)
    for got, leaf in zip(grads, ref_leaves, strict=True):
        torch.testing.assert_close(got, leaf.grad, rtol=1e-10, atol=1e-12)
    assert torch.equal(hidden.grad[2], torch.zeros(5, 8, dtype=torch.float64))  # all padding: no gradient


def test_linear_loss_without_grad_builds_no_gradients_and_matches():
    torch.manual_seed(3)
    hidden, weight = torch.randn(2, 6, 8), torch.randn(11, 8, requires_grad=True)
    target = torch.randint(1, 11, (2, 6))
    with torch.no_grad():
        loss, nll, tokens = linear_label_smoothed_loss(hidden, weight, None, target, 0.1, pad_id=0, rows=5)
    ref, ref_nll, _ = label_smoothed_loss(F.linear(hidden, weight.detach()), target, 0.1, pad_id=0)
    assert tokens == 12 and not loss.requires_grad
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(nll, ref_nll, rtol=1e-5, atol=1e-5)


def test_linear_loss_under_bf16_autocast_uses_bf16_products_and_fp32_softmax():
    # As autocast would run F.linear + the loss: the product's inputs rounded to bf16, then fp32 throughout.
    torch.manual_seed(4)
    hidden, weight = torch.randn(4, 16), torch.randn(50, 16, requires_grad=True)
    target = torch.randint(1, 50, (4,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _, _ = linear_label_smoothed_loss(hidden, weight, None, target, 0.1, pad_id=0)
    rounded = F.linear(hidden.bfloat16().float(), weight.detach().bfloat16().float())
    ref, _, _ = label_smoothed_loss(rounded, target, 0.1, pad_id=0)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref, rtol=1e-3, atol=1e-3)
    loss.backward()
    assert weight.grad.dtype == torch.float32 and torch.isfinite(weight.grad).all()


def test_linear_loss_rejects_negative_chunk_rows():
    with pytest.raises(ValueError, match="rows must be >= 0"):
        linear_label_smoothed_loss(torch.randn(2, 4), torch.randn(5, 4), None, torch.tensor([1, 2]), 0.1, 0, rows=-1)


@pytest.mark.parametrize("arch", ["seq2seq", "lm"])
def test_hidden_states_give_the_forward_logits(arch):
    # Training computes its loss from model.hidden(...) and the output layer: that must be the model's forward.
    from aiayn import ModelConfig
    from aiayn.model import build_model

    torch.manual_seed(5)
    model = build_model(
        ModelConfig(arch=arch, vocab_size=23, d_model=16, n_heads=2, n_encoder_layers=1, n_decoder_layers=2, d_ff=32)
    ).eval()
    ids = torch.randint(4, 23, (3, 7))
    inputs = (ids, ids[:, :5]) if arch == "seq2seq" else (ids,)
    torch.testing.assert_close(model.output(model.hidden(*inputs)), model(*inputs), rtol=0, atol=0)


@pytest.mark.parametrize("max_tokens", [16, 48, 4096])  # 1 row a batch (batch_size), 3 rows, all rows at once
def test_lm_validation_loss_covers_every_token_once_whatever_the_batch(max_tokens):
    # The evaluator (Trainer.validation_loss) reads the validation text in blocks of block_size, train.max_tokens at
    # a time: the
    # result is the mean cross-entropy of predicting every token after the first of each full block, as computed
    # here over all blocks at once.
    import contextlib

    import numpy as np

    from aiayn.config import TaskKind
    from aiayn.model import build_model
    from aiayn.train.evaluator import Evaluator

    config = RunConfig.from_dict(
        {
            "model": {"arch": "lm", "vocab_size": 20, "d_model": 16, "n_heads": 2, "n_decoder_layers": 1, "d_ff": 32},
            "train": {"batch_size": 1, "block_size": 16, "max_tokens": max_tokens},
            "optim": {"label_smoothing": 0.0},
        }
    )
    torch.manual_seed(0)
    model = build_model(config.model)
    stream = np.random.default_rng(0).integers(4, 20, size=16 * 7 + 5).astype(np.uint16)  # 7 full blocks + a tail
    evaluator = Evaluator(model, TaskKind.TEXT, stream, [], None, config.train, 0.0, torch.device("cpu"),
                          contextlib.nullcontext)  # fmt: skip
    sums = evaluator.validation_loss()
    loss, nll, tokens = sums.mean_loss, sums.mean_nll, sums.tokens

    windows = torch.from_numpy(stream[: 16 * 7 + 1].astype(np.int64))
    x = torch.stack([windows[i * 16 : i * 16 + 16] for i in range(7)])  # (7, 16)
    y = torch.stack([windows[i * 16 + 1 : i * 16 + 17] for i in range(7)])  # (7, 16)
    with torch.no_grad():
        expected = F.cross_entropy(model(x).flatten(0, 1), y.flatten())
    assert tokens == 7 * 16
    assert nll == pytest.approx(expected.item(), rel=1e-5)
    assert loss == pytest.approx(expected.item(), rel=1e-5)
