"""Attention: the seeds' worked examples as test vectors, fast path = readable path, parity with
torch.nn.MultiheadAttention, the KV cache and the recorder."""

import math

import pytest
import torch

from aiayn import ModelConfig
from aiayn.model import MultiHeadAttention, record_attention, scaled_dot_product_attention
from aiayn.model.attention import AttentionCache
from aiayn.model.kernels import FP32_ATTENTION_MAX_KEYS, SDPA, Kernels, _matmul_attention, fast_attention
from aiayn.model.layers import softmax
from aiayn.model.masks import causal_mask, padding_mask
from aiayn.model.transformer import make_rotary

SHORT_FP32 = Kernels(short_fp32=True)  # what the trainer hands a model training in bf16 on the CPU
MATMUL = Kernels(matmul_attention=True)  # ... training with train.matmul_precision='bf16'

# "Your journey starts with one step": six tokens, 3-dimensional embeddings (the seeds' example).
JOURNEY = torch.tensor(
    [
        [0.43, 0.15, 0.89],  # Your
        [0.55, 0.87, 0.66],  # journey
        [0.57, 0.85, 0.64],  # starts
        [0.22, 0.58, 0.33],  # with
        [0.77, 0.25, 0.10],  # one
        [0.05, 0.80, 0.55],  # step
    ]
)


def test_softmax_worked_examples():
    assert softmax(torch.tensor([2.0, 1.0, 0.1])).tolist() == pytest.approx([0.659, 0.242, 0.099], abs=5e-4)
    assert softmax(torch.tensor([1.0, 2.0, 3.0])).tolist() == pytest.approx([0.0900, 0.2447, 0.6652], abs=5e-5)


def test_temperature_sharpens_below_one_and_flattens_above():
    logits = torch.tensor([1.0, 2.0, 3.0])
    plain, cold, hot = softmax(logits), softmax(logits, 0.5), softmax(logits, 2.0)
    # softmax([1, 2, 3] / 0.5) = softmax([2, 4, 6]); the largest entry grows, the others shrink.
    assert cold.tolist() == pytest.approx(torch.softmax(torch.tensor([2.0, 4.0, 6.0]), 0).tolist(), abs=1e-6)
    assert cold[2] > plain[2] > hot[2]
    assert cold[0] < plain[0] < hot[0]
    entropy = [-(p * p.log()).sum().item() for p in (cold, plain, hot)]
    assert entropy[0] < entropy[1] < entropy[2]
    for bad in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="temperature"):
            softmax(logits, bad)


def test_journey_unscaled_dot_product_attention():
    out, weights = scaled_dot_product_attention(JOURNEY, JOURNEY, JOURNEY, scale=False)
    scores = JOURNEY @ JOURNEY.T  # the unscaled scores, for the seeds' first table
    assert scores[0].tolist() == pytest.approx([0.9995, 0.9544, 0.9422, 0.4753, 0.4576, 0.6310], abs=5e-5)
    assert weights[1].tolist() == pytest.approx([0.1385, 0.2379, 0.2333, 0.1240, 0.1082, 0.1581], abs=5e-5)
    assert out[1].tolist() == pytest.approx([0.4419, 0.6515, 0.5683], abs=5e-5)
    # The weights are the softmax of exactly those scores.
    torch.testing.assert_close(weights, torch.softmax(scores, dim=-1))


def test_journey_scaled_causal_attention():
    mask = causal_mask(6)
    out, weights = scaled_dot_product_attention(JOURNEY, JOURNEY, JOURNEY, mask)
    # Independent computation: scale by sqrt(d_k) = sqrt(3), then softmax over the visible prefix only.
    scores = JOURNEY @ JOURNEY.T / math.sqrt(3)
    for i in range(6):
        expected = torch.softmax(scores[i, : i + 1], dim=0)
        torch.testing.assert_close(weights[i, : i + 1], expected)
        assert torch.all(weights[i, i + 1 :] == 0)  # the future gets exactly zero weight
        torch.testing.assert_close(out[i], expected @ JOURNEY[: i + 1])
    torch.testing.assert_close(weights.sum(-1), torch.ones(6))
    assert weights[0, 0] == 1.0  # the first token can only see itself


def _qkv(dtype=torch.float32, B=3, H=4, T=5, S=7, Dh=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(B, H, n, Dh, generator=g).to(dtype) for n in (T, S, S)]


def _masks(B=3, T=5, S=7):
    ids = torch.ones(B, S, dtype=torch.long)
    ids[1, 4:] = 0  # padded source
    ids[2, :] = 0  # a padding-only sequence: every key masked
    return {"padding": padding_mask(ids, 0), "causal": causal_mask(T, S), "none": None}


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.bfloat16, 1e-2)])
@pytest.mark.parametrize("kind", ["padding", "causal", "none"])
def test_fast_path_equals_readable_path(dtype, tol, kind):
    q, k, v = _qkv(dtype)
    mask = _masks()[kind]
    readable, _ = scaled_dot_product_attention(q, k, v, mask)
    fast = fast_attention(q, k, v, mask)
    assert readable.dtype == fast.dtype == dtype
    close = dict(atol=tol, rtol=tol)
    torch.testing.assert_close(readable.float(), fast.float(), **close)
    if kind == "causal":  # without a cache (T == S), the fused kernel's is_causal flag = the explicit mask
        q, k, v = _qkv(dtype, T=7, S=7)
        expected, _ = scaled_dot_product_attention(q, k, v, causal_mask(7))
        torch.testing.assert_close(fast_attention(q, k, v, None, is_causal=True).float(), expected.float(), **close)


@pytest.mark.parametrize("keys", [7, FP32_ATTENTION_MAX_KEYS + 1])  # the CPU fp32 path, and the bf16 kernel
def test_bf16_fast_path_gradients_match_the_readable_path(keys):
    q, k, v = _qkv(torch.bfloat16, S=keys)
    for p in (q, k, v):
        p.requires_grad_(True)
    mask = torch.ones(3, 1, 1, keys, dtype=torch.bool)
    mask[1, ..., keys // 2 :] = False
    out = fast_attention(q, k, v, mask, kernels=SHORT_FP32)
    assert out.dtype == torch.bfloat16
    grads = torch.autograd.grad(out.float().square().sum(), (q, k, v))
    reference = [p.detach().float().requires_grad_(True) for p in (q, k, v)]
    expected, _ = scaled_dot_product_attention(*reference, mask)
    expected_grads = torch.autograd.grad(expected.square().sum(), reference)
    torch.testing.assert_close(out.float(), expected, atol=2e-2, rtol=2e-2)
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g.float(), e, atol=5e-2, rtol=5e-2)


def test_fast_path_under_bf16_autocast_returns_bf16_and_matches():
    q, k, v = _qkv()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = fast_attention(q, k, v, _masks()["padding"], kernels=SHORT_FP32)
    assert out.dtype == torch.bfloat16  # what autocast promises the next layer, although computed in fp32
    expected, _ = scaled_dot_product_attention(q, k, v, _masks()["padding"])
    torch.testing.assert_close(out.float(), expected, atol=1e-2, rtol=1e-2)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fully_masked_rows_give_zeros_not_nan(dtype):
    q, k, v = _qkv(dtype)
    for p in (q, k, v):
        p.requires_grad_(True)
    mask = _masks()["padding"]
    out, weights = scaled_dot_product_attention(q, k, v, mask)
    assert torch.all(out[2] == 0) and torch.all(weights[2] == 0)
    assert torch.all(weights[1, :, :, 4:] == 0)  # padded keys: exactly zero weight
    out.float().sum().backward()
    for p in (q, k, v):
        assert torch.isfinite(p.grad).all()


def _config(**kw):
    base = dict(vocab_size=50, d_model=32, n_heads=4, d_ff=64, dropout=0.0, n_encoder_layers=1, n_decoder_layers=1)
    return ModelConfig(**{**base, **kw})


def test_multi_head_attention_equals_torch_multihead_attention():
    torch.manual_seed(0)
    config = _config()
    ours = MultiHeadAttention(config).eval()
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.qkv_proj.weight)  # both stack [W_q; W_k; W_v]
        ref.in_proj_bias.copy_(ours.qkv_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x = torch.randn(3, 6, 32)
    ids = torch.ones(3, 6, dtype=torch.long)
    ids[1, 3:] = 0
    key_padding = ids == 0  # torch.nn: True = ignore
    expected, _ = ref(x, x, x, key_padding_mask=key_padding, need_weights=False)
    got = ours(x, mask=padding_mask(ids, 0))
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-5)
    # Causal self-attention against an explicit float mask.
    expected, _ = ref(x, x, x, attn_mask=torch.nn.Transformer.generate_square_subsequent_mask(6), need_weights=False)
    torch.testing.assert_close(ours(x, causal=True), expected, atol=1e-5, rtol=1e-5)


def test_cross_attention_equals_torch_multihead_attention():
    torch.manual_seed(1)
    ours = MultiHeadAttention(_config(), cross=True).eval()
    ref = torch.nn.MultiheadAttention(32, 4, batch_first=True).eval()
    with torch.no_grad():
        ref.in_proj_weight.copy_(torch.cat([ours.q_proj.weight, ours.kv_proj.weight]))
        ref.in_proj_bias.copy_(torch.cat([ours.q_proj.bias, ours.kv_proj.bias]))
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    x, memory = torch.randn(2, 4, 32), torch.randn(2, 7, 32)
    ids = torch.ones(2, 7, dtype=torch.long)
    ids[0, 5:] = 0
    expected, _ = ref(x, memory, memory, key_padding_mask=ids == 0, need_weights=False)
    torch.testing.assert_close(ours(x, memory, mask=padding_mask(ids, 0)), expected, atol=1e-5, rtol=1e-5)


def test_recorder_uses_readable_path_and_matches_fast_path():
    torch.manual_seed(2)
    attn = MultiHeadAttention(_config()).eval()
    wrapper = torch.nn.ModuleDict({"attn": attn})
    x = torch.randn(2, 5, 32)
    fast = attn(x, causal=True)
    with record_attention(wrapper) as rec:
        recorded = attn(x, causal=True)
    torch.testing.assert_close(recorded, fast, atol=1e-6, rtol=1e-6)
    (weights,) = rec.weights["attn"]
    assert weights.shape == (2, 4, 5, 5)  # (B, H, T, S): every head
    torch.testing.assert_close(weights.sum(-1), torch.ones(2, 4, 5))
    assert torch.all(weights.triu(diagonal=1) == 0)
    # Outside the context nothing is recorded.
    attn(x, causal=True)
    assert len(rec.weights["attn"]) == 1


def test_cache_appends_in_place_and_grows():
    cache = AttentionCache()
    steps = [torch.randn(2, 3, 1, 4) for _ in range(40)]
    for i, s in enumerate(steps):
        k, v = cache.append(s, -s)
        assert k.shape == (2, 3, i + 1, 4)
    torch.testing.assert_close(k, torch.cat(steps, dim=2))
    torch.testing.assert_close(v, -torch.cat(steps, dim=2))
    cache.reorder(torch.tensor([1, 1]))
    torch.testing.assert_close(cache.k[0, :, :40], torch.cat(steps, dim=2)[1])


def test_causal_self_attention_with_cache_equals_full():
    torch.manual_seed(3)
    for positional in ("sinusoidal", "rope"):
        config = _config(positional=positional)
        attn = MultiHeadAttention(config, rotary=make_rotary(config)).eval()
        x = torch.randn(2, 9, 32)
        full = attn(x, causal=True)
        cache = AttentionCache()
        # A prompt chunk of 4 (needs the shifted causal mask), then one token at a time.
        parts = [attn(x[:, :4], causal=True, cache=cache)]
        parts += [attn(x[:, t : t + 1], causal=True, cache=cache) for t in range(4, 9)]
        torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("causal", [False, True])
def test_matmul_attention_matches_the_fused_kernel_in_float64(causal):
    # The path train.matmul_precision='bf16' takes on the CPU (see fast_attention): same function, other kernels.
    torch.manual_seed(0)
    q, k, v = (torch.randn(3, 4, 7, 16, dtype=torch.float64, requires_grad=True) for _ in range(3))
    padding = torch.ones(3, 1, 1, 7, dtype=torch.bool)
    padding[0, ..., 5:] = False
    full = padding & causal_mask(7) if causal else padding
    out = _matmul_attention(q, k, v, padding, 0.0, causal)
    expected = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=full)
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12)
    grads = torch.autograd.grad(out.square().sum(), (q, k, v))
    expected_grads = torch.autograd.grad(expected.square().sum(), (q, k, v))
    for g, e in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=0, atol=1e-10)


def test_matmul_kernels_route_cpu_fp32_attention_through_matmuls():
    # Kernels(matmul_attention=True), which the trainer hands the model for train.matmul_precision='bf16'.
    q, k, v = _qkv()
    mask = _masks()["padding"]
    out = fast_attention(q, k, v, mask, kernels=MATMUL)
    assert torch.equal(out, _matmul_attention(q, k, v, mask, 0.0, False))
    assert not torch.equal(fast_attention(q, k, v, mask), out)  # the default is PyTorch's fused kernel
    expected, _ = scaled_dot_product_attention(q, k, v, mask)
    torch.testing.assert_close(out, expected, atol=1e-6, rtol=1e-6)


def test_compiled_attention_follows_the_kernel_choice_without_a_graph_break():
    # The choice is a plain argument (a module attribute in the model), never a global that compiled code cannot
    # read: fullgraph=True fails on any graph break; the matmul path gives other values than the fused kernel.
    q, k, v = _qkv()
    mask = _masks()["padding"]
    compiled = torch.compile(fast_attention, fullgraph=True, dynamic=False)
    expected = _matmul_attention(q, k, v, mask, 0.0, False)
    torch.testing.assert_close(compiled(q, k, v, mask, kernels=MATMUL), expected, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(compiled(q, k, v, mask, kernels=SDPA), fast_attention(q, k, v, mask))


def test_importing_aiayn_does_not_import_the_compiler():
    # torch._dynamo takes ~1 s to import: a command that does not compile must not pay for it.
    import subprocess
    import sys

    code = "import sys, aiayn, aiayn.cli, aiayn.model, aiayn.train.trainer; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_large_cpu_bf16_attention_recomputes_its_fp32_copies_in_the_backward(monkeypatch):
    # Small batches keep the fp32 copies of q, k, v for the backward (faster); from RECOMPUTE_MIN_NUMEL query
    # elements on only the bf16 inputs are kept and the fp32 attention runs again in the backward. Same gradients.
    import aiayn.model.kernels as kernels

    torch.manual_seed(0)
    shape = (1024, 4, 16, 16)  # 2**20 query elements
    base = [torch.randn(shape, dtype=torch.bfloat16) for _ in range(3)]

    def run(min_numel):
        monkeypatch.setattr(kernels, "RECOMPUTE_MIN_NUMEL", min_numel)
        q, k, v = (t.clone().requires_grad_() for t in base)
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t.dtype) or t, lambda t: t):
            out = fast_attention(q, k, v, None, is_causal=True, kernels=SHORT_FP32)
        out.float().square().sum().backward()
        return saved, out, (q.grad, k.grad, v.grad)

    saved_small, out_small, grads_small = run(2**20 + 1)
    saved_large, out_large, grads_large = run(2**20)
    assert torch.float32 in saved_small
    assert torch.float32 not in saved_large
    assert torch.equal(out_small, out_large)
    for a, b in zip(grads_small, grads_large, strict=True):
        assert torch.equal(a, b)
