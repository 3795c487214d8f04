"""The recurrent encoder-decoders (aiayn.model.rnn): the written-out cell steps against PyTorch's cells and fused
layers, additive attention against NumPy, cached decoding against the teacher-forced forward, padding, beam 1 =
greedy, a learned reverse task, exact save/load, and a CLI run with an exact resume after kill -9."""

import math
import signal

import numpy as np
import pytest
import tiny_run
import torch
import torch.nn.functional as F
from tiny_run import aiayn, metrics

import aiayn as package
from aiayn.config import ModelConfig, TaskKind
from aiayn.config.model import EOS_ID, PAD_ID
from aiayn.data.tasks import FIRST_SYMBOL, symbol_task
from aiayn.decoding import beam_search, greedy
from aiayn.errors import ConfigError
from aiayn.inference import compile_decoding
from aiayn.model import RNNSeq2Seq, Seq2SeqModel, build, record_attention, task_kind
from aiayn.model.masks import padding_mask
from aiayn.model.rnn import AdditiveAttention, GeneralAttention, additive_attention, gru_step, lstm_step, rnn_step
from aiayn.tokenizer import train_tokenizer
from aiayn.train import checkpoint as ckpt

CELLS = ["lstm", "gru", "rnn"]
ATTENTION = ["additive", "general", "none"]


def rnn_config(**overrides) -> ModelConfig:
    base = dict(arch="rnn", vocab_size=40, d_model=16, n_encoder_layers=2, n_decoder_layers=2, dropout=0.0,
                max_len=64)  # fmt: skip
    return ModelConfig(**{**base, **overrides})


def batch(generator: torch.Generator, B: int = 4, S: int = 7, T: int = 6, vocab: int = 40):
    """Random src (B, S) with rows of different lengths (right-padded) and tgt (B, T)."""
    src = torch.randint(4, vocab, (B, S), generator=generator)
    lengths = torch.randint(1, S + 1, (B,), generator=generator)
    lengths[0] = S  # one full row, so that S is the batch's longest
    src = src.masked_fill(torch.arange(S)[None, :] >= lengths[:, None], PAD_ID)
    return src, torch.randint(4, vocab, (B, T), generator=generator)


@pytest.mark.parametrize(("d_in", "hidden", "B"), [(3, 5, 2), (8, 8, 1), (16, 7, 5)])
@pytest.mark.parametrize("kind", ["rnn_tanh", "rnn_relu", "lstm", "gru"])
def test_steps_equal_torch_cells_and_the_fused_layer_step_by_step(kind, d_in, hidden, B):
    torch.manual_seed(d_in * 100 + hidden)
    nonlinearity = kind.split("_")[1] if kind.startswith("rnn") else None
    if kind == "lstm":
        cell, fused = torch.nn.LSTMCell(d_in, hidden), torch.nn.LSTM(d_in, hidden, batch_first=True)
    elif kind == "gru":
        cell, fused = torch.nn.GRUCell(d_in, hidden), torch.nn.GRU(d_in, hidden, batch_first=True)
    else:
        cell = torch.nn.RNNCell(d_in, hidden, nonlinearity=nonlinearity)
        fused = torch.nn.RNN(d_in, hidden, nonlinearity=nonlinearity, batch_first=True)
    with torch.no_grad():  # one set of weights for the cell, the fused layer and our step
        for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"):
            getattr(fused, f"{name}_l0").copy_(getattr(cell, name))
    weights = (cell.weight_ih, cell.weight_hh, cell.bias_ih, cell.bias_hh)
    xs = torch.randn(B, 6, d_in)  # (B, T, D_in)
    h, c = torch.randn(B, hidden), torch.randn(B, hidden)
    fused_out, _ = fused(xs, (h[None], c[None]) if kind == "lstm" else h[None])  # (B, T, H)
    h_cell, c_cell = h, c
    with torch.no_grad():
        for t in range(xs.shape[1]):
            x = xs[:, t]
            if kind == "lstm":
                h, c = lstm_step(x, h, c, *weights)
                h_cell, c_cell = cell(x, (h_cell, c_cell))
                assert torch.allclose(c, c_cell, atol=1e-6)
            elif kind == "gru":
                h, h_cell = gru_step(x, h, *weights), cell(x, h_cell)
            else:
                h, h_cell = rnn_step(x, h, *weights, nonlinearity=nonlinearity), cell(x, h_cell)
            assert torch.allclose(h, h_cell, atol=1e-6)
            assert torch.allclose(h, fused_out[:, t], atol=1e-6)


def numpy_additive(query, keys, values, w_q, w_k, w_v, mask):
    """The additive attention formula, one row and one position at a time, in float64 NumPy."""
    q, k, v, wq, wk, wv = (np.asarray(t, dtype=np.float64) for t in (query, keys, values, w_q, w_k, w_v))
    B, S = k.shape[:2]
    contexts, weights = np.zeros((B, v.shape[2])), np.zeros((B, S))
    for b in range(B):
        allowed = [j for j in range(S) if mask[b, j]]
        if not allowed:
            continue  # a fully masked row: zero weights, zero context
        scores = np.array([wv @ np.tanh(wq @ q[b] + wk @ k[b, j]) for j in allowed])
        e = np.exp(scores - scores.max())
        for j, a in zip(allowed, e / e.sum(), strict=True):
            weights[b, j] = a
            contexts[b] += a * v[b, j]
    return contexts, weights


def test_additive_attention_equals_numpy_with_padding_and_a_fully_masked_row():
    g = torch.Generator().manual_seed(1)
    B, S, Dq, Dk, Dv, A = 4, 6, 5, 7, 3, 9
    args = [torch.randn(*shape, generator=g) for shape in ((B, Dq), (B, S, Dk), (B, S, Dv), (A, Dq), (A, Dk), (A,))]
    mask = torch.ones(B, S, dtype=torch.bool)
    mask[1, 4:] = False  # padding
    mask[2, 1:] = False  # one real position
    mask[3] = False  # fully masked
    context, weights = additive_attention(*args, mask=mask)
    want_context, want_weights = numpy_additive(*(a.numpy() for a in args), mask.numpy())
    np.testing.assert_allclose(weights.numpy(), want_weights, atol=1e-6)
    np.testing.assert_allclose(context.numpy(), want_context, atol=1e-5)
    assert not torch.isnan(context).any() and torch.equal(context[3], torch.zeros(Dv))
    assert torch.equal(weights[3], torch.zeros(S)) and weights[1, 4:].abs().sum() == 0

    module = AdditiveAttention(Dq, Dk, A)  # the block version: one projection of the keys, T queries at once
    with torch.no_grad():
        module.w_q.weight.copy_(args[3]), module.w_k.weight.copy_(args[4]), module.w_v.copy_(args[5])
    queries = torch.stack([args[0], args[0].flip(0)], dim=1)  # (B, T=2, Dq)
    block_context, block_weights = module(queries, module.project_keys(args[1]), args[2], mask)
    assert torch.allclose(block_context[:, 0], context, atol=1e-6)
    assert torch.allclose(block_weights[:, 0], weights, atol=1e-6)
    assert torch.allclose(block_weights[:, 1], additive_attention(args[0].flip(0), *args[1:], mask=mask)[1], atol=1e-6)


def test_general_attention_is_the_bilinear_score():
    torch.manual_seed(2)
    module = GeneralAttention(5, 7)
    q, k, v = torch.randn(2, 3, 5), torch.randn(2, 4, 7), torch.randn(2, 4, 6)
    context, weights = module(q, module.project_keys(k), v)
    want = torch.softmax(torch.einsum("btq,qk,bsk->bts", q, module.w.weight, k), dim=-1)
    assert torch.allclose(weights, want, atol=1e-6) and torch.allclose(context, want @ v, atol=1e-6)


@pytest.mark.parametrize("attention", ATTENTION)
@pytest.mark.parametrize("cell", CELLS)
def test_cached_step_by_step_decoding_equals_the_teacher_forced_forward(cell, attention):
    torch.manual_seed(3)
    model = build(rnn_config(rnn_cell=cell, rnn_attention=attention)).eval()
    src, tgt = batch(torch.Generator().manual_seed(4))
    with torch.no_grad():
        full = model(src, tgt)  # (B, T, V)
        src_mask = padding_mask(src, PAD_ID)
        memory = model.encode(src, src_mask)
        cache = model.new_cache()
        steps = [model.decode(tgt[:, t : t + 1], memory, src_mask, cache) for t in range(tgt.shape[1])]
    assert cache.length == tgt.shape[1]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("cell", CELLS)
def test_a_sentence_alone_equals_the_same_sentence_padded_in_a_batch(cell, bidirectional):
    torch.manual_seed(5)
    model = build(rnn_config(rnn_cell=cell, rnn_bidirectional=bidirectional)).eval()
    src, tgt = batch(torch.Generator().manual_seed(6), B=5, S=9)
    with torch.no_grad():
        together = model(src, tgt)
        for b in range(src.shape[0]):
            alone = src[b : b + 1, : int((src[b] != PAD_ID).sum())]  # (1, S_b): no padding at all
            assert torch.allclose(model(alone, tgt[b : b + 1]), together[b : b + 1], atol=1e-5)


def test_beam_1_equals_greedy_and_the_recorder_sees_the_alignments():
    torch.manual_seed(7)
    model = build(rnn_config(rnn_cell="lstm")).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # sharper than random: the choices matter
    src, tgt = batch(torch.Generator().manual_seed(8), B=6)
    want = greedy(model, src, max_len=10)
    assert [h[0].tokens for h in beam_search(model, src, beam_size=1, alpha=0.0, max_len=10)] == want
    assert len(beam_search(model, src, beam_size=3, max_len=10)) == 6  # repeats and views memory (B*K, S, 2H)
    with record_attention(model) as rec, torch.no_grad():
        model(src, tgt)
    (weights,) = rec.weights["decoder.cross_attn"]
    assert weights.shape == (6, 1, tgt.shape[1], src.shape[1])  # (B, H=1, T, S)
    assert torch.allclose(weights.sum(-1), torch.ones(6, 1, tgt.shape[1]))
    assert (weights[:, 0] * ~padding_mask(src, PAD_ID)[:, 0]).abs().sum() == 0  # no weight on padding


def test_lstm_with_additive_attention_learns_to_reverse():
    """400 steps on random sequences (~5 s on a 2-core CPU), then 200 sequences it never saw, reversed by greedy
    decoding (200/200 with seeds 9 and 1; 300 steps without the decay gave 198)."""
    torch.manual_seed(9)
    vocab = FIRST_SYMBOL + 10
    model = RNNSeq2Seq(rnn_config(vocab_size=vocab, d_model=64, n_encoder_layers=1, n_decoder_layers=1))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    steps = 400
    for step in range(steps):
        for group in optimizer.param_groups:  # half a cosine from 3e-3 to 0
            group["lr"] = 3e-3 * 0.5 * (1 + math.cos(math.pi * step / steps))
        src, tgt = symbol_task("reverse", 64, g)
        logits = model(src, tgt[:, :-1])
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
    model.eval()
    src, _ = symbol_task("reverse", 200, torch.Generator().manual_seed(12345))
    out = greedy(model, src, max_len=src.shape[1] + 1)
    correct = sum(o == s[(s != PAD_ID) & (s != EOS_ID)].flip(0).tolist() for o, s in zip(out, src, strict=True))
    assert correct >= 198, f"{correct}/200 reversed exactly (final loss {loss:.4f})"


def test_save_and_load_is_exact(tmp_path):
    torch.manual_seed(10)
    tokenizer = train_tokenizer(["a man rides a bike", "ein mann fährt fahrrad"] * 5, vocab_size=300, min_frequency=1)
    config = rnn_config(vocab_size=tokenizer.vocab_size, rnn_cell="gru", tie_embeddings=False, output_bias=True)
    model = build(config).eval()
    tokenizer.save(tmp_path / "tokenizer.json")
    ckpt.save_checkpoint(tmp_path / "m", model=model, config={"model": config.to_dict()},
                         tokenizer_json=(tmp_path / "tokenizer.json").read_bytes())  # fmt: skip
    loaded = package.load(tmp_path / "m", device="cpu")
    assert isinstance(loaded.model, RNNSeq2Seq)
    ours, theirs = model.state_dict(), loaded.model.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    src, tgt = batch(torch.Generator().manual_seed(11), vocab=tokenizer.vocab_size)
    with torch.no_grad():
        assert torch.equal(model(src, tgt), loaded.model(src, tgt))
    assert loaded.translate(["a man rides"])  # the whole inference path: tokenizer, batching, search


def test_the_family_implements_the_protocol_and_lists_its_parts():
    model = build(rnn_config(tie_embeddings=True))
    assert (
        isinstance(model, RNNSeq2Seq) and isinstance(model, Seq2SeqModel) and task_kind(model.config) is TaskKind.PAIRS
    )
    assert model.output_weight is model.encoder.embed.token.weight is model.decoder.embed.token.weight  # tied
    assert [(name, kind) for name, kind, _ in model.sublayers()] == [
        ("encoder.embed", "embedding"), ("encoder.rnn", "recurrent"), ("decoder.bridge", "bridge"),
        ("decoder.embed", "embedding"), ("decoder.rnn", "recurrent"), ("decoder.cross_attn", "attention"),
    ]  # fmt: skip
    modules = dict(model.named_modules())
    assert all(modules[name] is module for name, _, module in model.sublayers())
    assert "attention" not in [kind for _, kind, _ in build(rnn_config(rnn_attention="none")).sublayers()]
    # The fused recurrent step is the fast path already: compile_decoding leaves the family eager.
    assert compile_decoding(model) is model and not hasattr(model.decode, "compiled")
    with pytest.raises(ConfigError, match="RNNSeq2Seq needs ModelConfig.arch='rnn', got 'seq2seq'"):
        RNNSeq2Seq(ModelConfig(vocab_size=40))


def test_config_keys_are_validated_and_ignored_keys_named():
    with pytest.raises(ConfigError, match="rnn_cell='conv' is not one of 'lstm' | 'gru' | 'rnn'"):
        rnn_config(rnn_cell="conv")
    with pytest.raises(ConfigError, match="rnn_nonlinearity='relu' applies only to rnn_cell='rnn'"):
        rnn_config(rnn_nonlinearity="relu")
    with pytest.raises(ConfigError, match="rnn_attention_dim=0"):
        rnn_config(rnn_attention_dim=0)
    assert rnn_config(d_model=15, n_heads=4).ignored_keys[0] == "n_heads"  # heads and positions are not checked
    assert build(rnn_config(rnn_cell="rnn", rnn_nonlinearity="relu")).encoder.rnn.nonlinearity == "relu"


RNN_RUN = [*tiny_run.TINY, "--model.arch", "rnn", "--model.rnn_cell", "lstm"]


def test_cli_trains_translates_and_resumes_exactly_after_kill_9(tmp_path):
    reference, killed = tmp_path / "ref", tmp_path / "killed"
    first = aiayn("train", *RNN_RUN, "--train.out_dir", reference)
    assert first.returncode == 0, first.stderr
    assert "note: model.n_heads, model.d_ff: not used by model.arch='rnn', ignored" in first.stderr
    translated = aiayn("translate", "--model", reference, input="a b c\n")
    assert translated.returncode == 0, translated.stderr
    assert len(translated.stdout.splitlines()) == 1
    crash = aiayn("train", *RNN_RUN, "--train.out_dir", killed, env={"AIAYN_FAULT": "step:7"})
    assert crash.returncode == -signal.SIGKILL, crash.stderr
    resumed = aiayn("train", *RNN_RUN, "--train.out_dir", killed, "--resume", "auto")
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed from" in resumed.stdout
    tiny_run.assert_same_run(reference, killed)  # every logged value and the final weights, bit for bit


def test_plain_text_with_arch_rnn_is_one_line_of_error(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("".join(f"line {i} of plain text\n" for i in range(50)))
    result = aiayn("train", "--data.train_text", text, "--model.arch", "rnn", "--train.out_dir", tmp_path / "run",
                   "--tokenizer.kind", "char", "--train.max_steps", "1")  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "model.arch='rnn' learns from pairs of texts" in lines[0], result.stderr


def test_two_torchrun_processes_equal_one_process_with_two_accumulation_steps(tmp_path):
    """DDP (gloo, CPU) on the recurrent family: two processes of one micro-batch each take the same steps as one
    process that accumulates two (the packed recurrent layers and the attention all get their gradients)."""
    import subprocess
    import sys

    one, two = tmp_path / "one", tmp_path / "two"
    args = [*RNN_RUN, "--train.device", "cpu"]
    assert aiayn("train", *args, "--train.grad_accum", "2", "--train.out_dir", one).returncode == 0
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "aiayn",
           "train", *args, "--train.grad_accum", "1", "--train.out_dir", str(two)]  # fmt: skip
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600, cwd=tiny_run.ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    for a, b in zip(metrics(one), metrics(two), strict=True):
        assert a["step"] == b["step"] and a.get("tokens") == b.get("tokens") and a.get("lr") == b.get("lr")
        if "loss" in a:
            assert b["loss"] == pytest.approx(a["loss"], abs=1e-5)
    wa, wb = tiny_run.final_weights(one), tiny_run.final_weights(two)
    for name in wa:
        torch.testing.assert_close(wb[name], wa[name], rtol=0, atol=1e-5)
