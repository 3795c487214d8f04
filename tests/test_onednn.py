"""oneDNN's linear on packed weights (aiayn.inference.onednn), the CPU path `aiayn.load` takes where it measured
faster: the same values as F.linear, the same tokens from every search, eager and compiled, and the same
parameters; a stale packed copy is never used. And its training form (aiayn.train.linear_path, train.gemm): the
gradients of nn.Linear, the same parameters, the choice recorded and kept by an exact resume."""

import pytest
import torch
import torch.nn.functional as F
import yaml
from test_inference import TEXT, write_model
from tiny_run import TINY, final_weights

import aiayn
from aiayn import ModelConfig, machine
from aiayn.config import RunConfig, parse_overrides
from aiayn.decoding import beam_search, greedy_search
from aiayn.errors import ConfigError
from aiayn.inference import onednn
from aiayn.inference.onednn import OneDnnLinear, _packed_for, pack_linears
from aiayn.model import LanguageModel, Transformer, compile_decoding
from aiayn.tokenizer import train_tokenizer
from aiayn.train import linear_path
from aiayn.train.linear_path import OneDnnTrainLinear, resolve_gemm, use_onednn_linears
from aiayn.train.trainer import Trainer

pytestmark = pytest.mark.skipif(not machine.onednn_linear_available(), reason="this torch has no oneDNN linear")


@pytest.mark.parametrize("bias", [True, False])
@pytest.mark.parametrize("shape", [(1, 1, 48), (1, 3, 48), (7, 5, 48), (64, 48)])
def test_onednn_linear_equals_f_linear(bias, shape):
    torch.manual_seed(0)
    plain = torch.nn.Linear(48, 80, bias=bias)
    packed = OneDnnLinear(plain)
    x = torch.randn(shape)
    with torch.inference_mode():
        assert torch.allclose(packed(x), F.linear(x, plain.weight, plain.bias), rtol=1e-5, atol=1e-5)
    assert packed.weight is plain.weight and packed.bias is plain.bias


def _model(arch="seq2seq"):
    torch.manual_seed(1)
    config = ModelConfig(arch=arch, vocab_size=120, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                         d_ff=64, max_len=40, output_bias=True, dropout=0.0)  # fmt: skip
    model = (Transformer if arch == "seq2seq" else LanguageModel)(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # sharp distributions: the searches' choices are clear
    return model


def _searches(model, src):
    greedy = [h.tokens for h in greedy_search(model, src, max_len=12)]
    beams = beam_search(model, src, beam_size=4, alpha=0.6, max_len=12)
    return greedy, [[h.tokens for h in b] for b in beams], [[round(h.score, 3) for h in b] for b in beams]


def test_packed_model_searches_like_the_plain_one_with_the_same_parameters():
    model = _model()
    src = torch.randint(4, 120, (5, 9))
    before = _searches(model, src)
    keys, params = list(model.state_dict()), list(model.parameters())
    assert pack_linears(model) == 2 * 4 + 2 * 7 + 1  # encoder: qkv, out, FFN w1, w2; decoder: + q, kv, out; output
    assert list(model.state_dict()) == keys and all(a is b for a, b in zip(model.parameters(), params, strict=True))
    assert _searches(model, src) == before


def test_compiled_steps_of_a_packed_model_give_the_eager_tokens(monkeypatch):
    """Batches of at least 16 rows take the compiled step, where oneDNN is reached through the custom op; smaller
    ones stay eager."""
    model = _model()
    src = torch.randint(4, 120, (16, 7))
    pack_linears(model)
    eager = [h.tokens for h in greedy_search(model, src, max_len=10)]
    few = src[:3]
    eager_few = [h.tokens for h in greedy_search(model, few, max_len=10)]
    compile_decoding(model)
    custom_op_calls = []
    real = onednn._packed_for
    monkeypatch.setattr(onednn, "_packed_for", lambda w: custom_op_calls.append(1) or real(w))
    assert [h.tokens for h in greedy_search(model, src, max_len=10)] == eager
    assert custom_op_calls  # the compiled steps reached oneDNN through the custom op
    custom_op_calls.clear()
    assert [h.tokens for h in greedy_search(model, few, max_len=10)] == eager_few
    assert not custom_op_calls  # fewer than 16 rows: eager steps, on the packed weights directly


def test_a_packed_copy_whose_weight_changed_place_is_not_used():
    layer = OneDnnLinear(torch.nn.Linear(16, 8))
    assert _packed_for(layer.weight) is layer.packed
    old = layer.weight.data  # a tensor at the place the packed copy was made from
    with torch.no_grad():
        layer.weight.data = torch.zeros(8, 16)  # new storage: the packed copy is of the old weights
    assert _packed_for(old) is None  # its parameter has moved: the entry is dropped, not used for whatever is there
    assert _packed_for(layer.weight) is None


def test_a_packed_copy_goes_when_its_model_goes():
    import gc

    layer = OneDnnLinear(torch.nn.Linear(16, 8))
    ptr = layer.weight.data_ptr()
    assert ptr in onednn._PACKED
    del layer
    gc.collect()
    assert ptr not in onednn._PACKED


@pytest.mark.parametrize("path", ["mkl", "onednn"])
def test_load_takes_the_path_chosen_and_says_which(monkeypatch, tmp_path, path):
    monkeypatch.setenv("AIAYN_GEMM", path)
    machine.gemm_choice.cache_clear()
    try:
        tokenizer = train_tokenizer(TEXT, vocab_size=300, min_frequency=1)
        write_model(tmp_path / "s2s", tokenizer, output_bias=True)
        loaded = aiayn.load(tmp_path / "s2s", device="cpu")
        assert loaded.gemm == path
        packed = [m for m in loaded.model.modules() if isinstance(m, OneDnnLinear)]
        assert len(packed) == (0 if path == "mkl" else 23)
        assert aiayn.load(tmp_path / "s2s", device="cpu", quantize="int8").gemm is None
    finally:
        machine.gemm_choice.cache_clear()


# ------------------------------------------------------------------------------------------ training (train.gemm)
@pytest.mark.parametrize("bias", [True, False])
def test_training_linear_has_nn_linears_values_and_gradients(bias):
    torch.manual_seed(0)
    plain = torch.nn.Linear(24, 40, bias=bias).double().float()
    onednn = OneDnnTrainLinear(plain)
    x = torch.randn(3, 7, 24, requires_grad=True)
    grad = torch.randn(3, 7, 40)
    expected = torch.autograd.grad(plain(x), [x, *plain.parameters()], grad)
    y = onednn(x)
    assert torch.allclose(y, plain(x), rtol=1e-5, atol=1e-5)
    got = torch.autograd.grad(y, [x, *onednn.parameters()], grad)
    assert len(got) == len(expected) == (3 if bias else 2)
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-4) for a, b in zip(got, expected, strict=True))


def test_use_onednn_linears_keeps_the_parameters_and_their_names():
    model = _model()
    names = [n for n, _ in model.named_parameters()]
    params = list(model.parameters())
    assert use_onednn_linears(model) == 2 * 4 + 2 * 7  # every nn.Linear; the output projection is the loss's
    assert [n for n, _ in model.named_parameters()] == names
    assert all(a is b for a, b in zip(model.parameters(), params, strict=True))


CHOICES = [("AMD", None, "onednn"), ("Intel", None, "mkl"), ("Intel", "onednn", "onednn"), ("AMD", "mkl", "mkl")]


@pytest.mark.parametrize(("vendor", "recorded", "expected"), CHOICES)
def test_gemm_auto_takes_onednn_on_amd_and_keeps_a_resumed_runs_choice(monkeypatch, vendor, recorded, expected):
    monkeypatch.setattr(linear_path, "cpu_info", lambda: machine.CpuInfo("x", vendor, {}, 2))
    assert resolve_gemm("auto", torch.device("cpu"), recorded) == expected
    assert resolve_gemm("mkl", torch.device("cpu"), "onednn") == "mkl"


def test_gemm_onednn_where_it_cannot_run_is_one_line():
    with pytest.raises(ConfigError, match="train.gemm='onednn' is for CPUs"):
        resolve_gemm("onednn", torch.device("cuda"), None)


def test_a_run_on_onednn_records_it_and_resumes_exactly(tmp_path):
    lines: list[str] = []
    first = Trainer(_tiny(tmp_path / "run", "--train.gemm", "onednn", "--train.max_steps", "8"), log=lines.append)
    assert first.run() == 0 and any("gemm onednn" in line for line in lines)
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["train"]["gemm"] == "onednn"
    assert isinstance(first.model.decoder.layers[0].ffn.w1, OneDnnTrainLinear)
    assert Trainer(_tiny(tmp_path / "run"), resume="auto", log=lambda _: None).run() == 0  # auto: the recorded one
    assert Trainer(_tiny(tmp_path / "straight", "--train.gemm", "onednn"), log=lambda _: None).run() == 0
    a, b = final_weights(tmp_path / "run"), final_weights(tmp_path / "straight")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _tiny(out, *extra) -> RunConfig:
    return RunConfig.from_dict(parse_overrides([*TINY, "--train.out_dir", str(out), *extra]))
