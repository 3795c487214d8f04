"""The encoder-decoder Transformer and the decoder-only LM: parity with torch.nn.Transformer, cached decoding,
padding invariance, fully masked rows, and learning a copy task."""

import pytest
import torch
import torch.nn.functional as F

from aiayn import ModelConfig
from aiayn.data.tasks import FIRST_SYMBOL, symbol_task
from aiayn.decoding import greedy
from aiayn.model import LanguageModel, Transformer, build_model, record_attention

PAD, BOS, EOS = 0, 1, 2


def tiny(arch="seq2seq", **kw):
    base = dict(arch=arch, vocab_size=40, d_model=32, n_heads=4, d_ff=64, n_encoder_layers=2, n_decoder_layers=2)
    return ModelConfig(**{**base, **kw})


def padded_batch(lengths, vocab=40, seed=0):
    """Right-padded (B, max_len) ids with real tokens in 3..vocab-1."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.full((len(lengths), max(lengths)), PAD)
    for b, n in enumerate(lengths):
        ids[b, :n] = torch.randint(3, vocab, (n,), generator=g)
    return ids


def copy_mha(ours, ref, cross=False):
    """Copy aiayn attention weights into a torch.nn.MultiheadAttention (in_proj stacks [W_q; W_k; W_v])."""
    if cross:
        w = torch.cat([ours.q_proj.weight, ours.kv_proj.weight])
        b = torch.cat([ours.q_proj.bias, ours.kv_proj.bias])
    else:
        w, b = ours.qkv_proj.weight, ours.qkv_proj.bias
    ref.in_proj_weight.copy_(w)
    ref.in_proj_bias.copy_(b)
    ref.out_proj.weight.copy_(ours.out_proj.weight)
    ref.out_proj.bias.copy_(ours.out_proj.bias)


def copy_linear_norm(src, dst):
    dst.weight.copy_(src.weight)
    dst.bias.copy_(src.bias)


def torch_reference(model: Transformer) -> torch.nn.Transformer:
    c = model.config
    ref = torch.nn.Transformer(
        c.d_model, c.n_heads, c.n_encoder_layers, c.n_decoder_layers, c.d_ff, dropout=0.0,
        batch_first=True, norm_first=c.norm == "pre",
    )  # fmt: skip
    with torch.no_grad():
        for ours, theirs in zip(model.encoder.layers, ref.encoder.layers, strict=True):
            copy_mha(ours.self_attn, theirs.self_attn)
            copy_linear_norm(ours.ffn.w1, theirs.linear1)
            copy_linear_norm(ours.ffn.w2, theirs.linear2)
            copy_linear_norm(ours.self_attn_block.norm, theirs.norm1)
            copy_linear_norm(ours.ffn_block.norm, theirs.norm2)
        for ours, theirs in zip(model.decoder.layers, ref.decoder.layers, strict=True):
            copy_mha(ours.self_attn, theirs.self_attn)
            copy_mha(ours.cross_attn, theirs.multihead_attn, cross=True)
            copy_linear_norm(ours.ffn.w1, theirs.linear1)
            copy_linear_norm(ours.ffn.w2, theirs.linear2)
            copy_linear_norm(ours.self_attn_block.norm, theirs.norm1)
            copy_linear_norm(ours.cross_attn_block.norm, theirs.norm2)
            copy_linear_norm(ours.ffn_block.norm, theirs.norm3)
        if c.norm == "pre":
            copy_linear_norm(model.encoder.norm, ref.encoder.norm)
            copy_linear_norm(model.decoder.norm, ref.decoder.norm)
        else:
            # The paper's post-LN stacks end with the last layer's Add & Norm; torch.nn.Transformer adds one more.
            ref.encoder.norm = None
            ref.decoder.norm = None
    return ref.eval()


@pytest.mark.filterwarnings("ignore:enable_nested_tensor")
@pytest.mark.parametrize("norm", ["post", "pre"])
def test_encoder_decoder_equals_torch_nn_transformer(norm):
    torch.manual_seed(0)
    model = Transformer(tiny(norm=norm, dropout=0.1)).eval()
    ref = torch_reference(model)
    src, tgt = padded_batch([7, 4, 6], seed=1), padded_batch([5, 5, 2], seed=2)
    logits = model(src, tgt)
    T = tgt.shape[1]
    hidden = ref(
        model.src_embed(src), model.tgt_embed(tgt),
        tgt_mask=torch.ones(T, T, dtype=torch.bool).triu(1), tgt_is_causal=True,  # torch.nn: True = blocked
        src_key_padding_mask=src == PAD, tgt_key_padding_mask=tgt == PAD, memory_key_padding_mask=src == PAD,
    )  # fmt: skip
    expected = model.output(hidden)
    real = tgt != PAD  # padded target positions are never read (right padding + causal mask)
    torch.testing.assert_close(logits[real], expected[real], atol=1e-5, rtol=1e-5)


VARIANTS = [
    dict(),
    dict(norm="pre", positional="learned", activation="gelu"),
    dict(norm="pre", positional="rope", activation="swiglu", norm_type="rmsnorm"),
    dict(tie_embeddings=False, output_bias=True, activation="gelu_tanh"),
]


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "paper")
def test_cached_step_by_step_decoding_equals_full_forward_seq2seq(variant):
    torch.manual_seed(1)
    model = Transformer(tiny(**variant)).eval()
    src, tgt = padded_batch([6, 3], seed=3), padded_batch([8, 8], seed=4)
    full = model(src, tgt)
    src_mask = (src != PAD)[:, None, None, :]
    memory = model.encode(src, src_mask)
    cache = model.new_cache()
    steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(tgt.shape[1])]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, atol=1e-5, rtol=1e-5)
    # Encoder-decoder keys/values were projected once and reused.
    assert cache.layers[0].cross_attn.k.shape == (2, 4, 6, 8)
    assert cache.length == 8


@pytest.mark.parametrize("variant", VARIANTS, ids=lambda v: "-".join(map(str, v.values())) or "paper")
def test_cached_step_by_step_equals_full_forward_lm(variant):
    torch.manual_seed(2)
    model = LanguageModel(tiny("lm", **variant)).eval()
    ids = padded_batch([10, 10], seed=5)
    full = model(ids)
    cache = model.new_cache()
    prompt = model(ids[:, :4], cache=cache)  # a prompt of 4 tokens at once, then token by token
    steps = [model(ids[:, t : t + 1], cache=cache) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat([prompt, *steps], dim=1), full, atol=1e-5, rtol=1e-5)


def test_sentence_alone_equals_sentence_padded_in_a_batch():
    torch.manual_seed(3)
    model = Transformer(tiny()).eval()
    src, tgt = padded_batch([9, 4, 2], seed=6), padded_batch([3, 7, 5], seed=7)
    batch_logits = model(src, tgt)
    for b in range(3):
        n_src, n_tgt = int((src[b] != PAD).sum()), int((tgt[b] != PAD).sum())
        alone = model(src[b : b + 1, :n_src], tgt[b : b + 1, :n_tgt])
        assert (alone - batch_logits[b : b + 1, :n_tgt]).abs().max() <= 1e-5
    lm = LanguageModel(tiny("lm")).eval()
    ids = padded_batch([8, 3], seed=8)
    batch_logits = lm(ids)
    torch.testing.assert_close(lm(ids[1:, :3]), batch_logits[1:, :3], atol=1e-5, rtol=0)


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benchmarks/gpu_check.sh runs it)")


@pytest.mark.parametrize(
    ("device", "dtype"),
    [("cpu", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16),
     pytest.param("cuda", torch.float16, marks=CUDA), pytest.param("cuda", torch.bfloat16, marks=CUDA)],
)  # fmt: skip
def test_padding_only_sequences_keep_everything_finite(device, dtype):
    """A batch row whose source is all padding: every query of its encoder and every cross-attention query
    sees no key at all. Outputs, the loss and all gradients must stay finite, and the other rows unchanged."""
    torch.manual_seed(4)
    model = Transformer(tiny(dropout=0.0)).to(device)
    src, tgt = padded_batch([5, 6], seed=9).to(device), padded_batch([4, 4], seed=10).to(device)
    src[1] = PAD
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        logits = model(src, tgt)
        alone = model(src[:1], tgt[:1])
    assert logits.dtype == dtype and torch.isfinite(logits).all()
    tol = {torch.float32: 1e-6, torch.bfloat16: 2e-2, torch.float16: 5e-3}[dtype]
    torch.testing.assert_close(logits[:1].float(), alone.float(), atol=tol, rtol=tol)
    loss = F.cross_entropy(logits.float().flatten(0, 1), tgt.roll(-1, 1).flatten(), ignore_index=PAD)
    assert torch.isfinite(loss)
    loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name


def test_recorder_sees_every_layer_and_head_without_changing_outputs():
    torch.manual_seed(5)
    model = Transformer(tiny()).eval()
    src, tgt = padded_batch([6, 4], seed=11), padded_batch([5, 3], seed=12)
    fast = model(src, tgt)
    with record_attention(model) as rec:
        recorded = model(src, tgt)
    torch.testing.assert_close(recorded, fast, atol=1e-5, rtol=1e-5)
    assert sorted(rec.weights) == sorted(
        [f"encoder.layers.{i}.self_attn" for i in range(2)]
        + [f"decoder.layers.{i}.{kind}" for i in range(2) for kind in ("self_attn", "cross_attn")]
    )
    (cross,) = rec.weights["decoder.layers.1.cross_attn"]
    assert cross.shape == (2, 4, 5, 6)  # (B, H, T, S)
    assert torch.all(cross[1, :, :, 4:] == 0)  # padded source tokens get no attention


def test_tied_embeddings_share_one_matrix():
    model = Transformer(tiny())
    assert model.src_embed.token.weight is model.tgt_embed.token.weight is model.output.weight
    untied = Transformer(tiny(tie_embeddings=False))
    assert untied.src_embed.token.weight is not untied.tgt_embed.token.weight
    assert untied.output.weight is not untied.tgt_embed.token.weight


def test_paper_base_parameter_count():
    """The README states this number; the paper reports "65M" for base (Table 3) with a ~37k shared vocabulary."""
    model = build_model(ModelConfig(vocab_size=37000))
    assert sum(p.numel() for p in model.parameters()) == 63_082_496


def test_tiny_model_learns_to_copy():
    """Trained for 400 steps on random sequences, then asked to copy 200 sequences it never saw: all exact."""
    torch.manual_seed(6)
    vocab = FIRST_SYMBOL + 10
    model = Transformer(tiny(vocab_size=vocab, d_model=128, d_ff=256, dropout=0.0))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, betas=(0.9, 0.98), eps=1e-9)
    g = torch.Generator().manual_seed(0)
    for step in range(1, 401):
        for group in optimizer.param_groups:  # the paper's warmup + inverse-sqrt decay, compressed to 50 steps
            group["lr"] = 1e-3 * min(step / 50, (50 / step) ** 0.5)
        src, tgt = symbol_task("copy", 128, g)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    src, _ = symbol_task("copy", 200, torch.Generator().manual_seed(12345))  # sequences never seen in training
    out = greedy(model, src, max_len=src.shape[1] + 1)
    correct = sum(o == s[(s != PAD) & (s != EOS)].tolist() for o, s in zip(out, src, strict=True))
    assert correct == len(out), f"{correct}/{len(out)} copied exactly (final loss {loss:.4f})"


def test_wrong_family_and_missing_memory_give_clear_errors():
    with pytest.raises(ValueError, match="Transformer needs ModelConfig.arch='seq2seq', got 'lm'"):
        Transformer(tiny("lm"))
    with pytest.raises(ValueError, match="LanguageModel needs ModelConfig.arch='lm', got 'seq2seq'"):
        LanguageModel(tiny())
    model = Transformer(tiny()).eval()
    with pytest.raises(ValueError, match="encoder-decoder attention needs `memory`"):
        model.decode(padded_batch([3]), None, None)
