"""aiayn.load and the translate / generate / evaluate / perplexity commands, on small model folders written here."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

import aiayn
from aiayn import ModelConfig
from aiayn.cli import main
from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.decoding import beam_search, greedy
from aiayn.model import LanguageModel, Transformer
from aiayn.tokenizer import train_tokenizer
from aiayn.train import checkpoint as ckpt

TEXT = [
    "a man rides a bike down the street",
    "two dogs play in the snow",
    "ein mann fährt fahrrad auf der straße",
    "zwei hunde spielen im schnee",
    "the girl reads a book in the park",
    "das mädchen liest ein buch im park",
] * 5


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer(TEXT, vocab_size=300, min_frequency=1)


def write_model(folder, tokenizer, arch="seq2seq", seed=0, **overrides):
    torch.manual_seed(seed)
    config = ModelConfig(
        arch=arch, vocab_size=tokenizer.vocab_size, d_model=32, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=64, max_len=overrides.pop("max_len", 48), **overrides,
    )  # fmt: skip
    model = (Transformer if arch == "seq2seq" else LanguageModel)(config).eval()
    with torch.no_grad():
        model.output.weight.mul_(4.0)  # sharper than random: the search choices matter
        if model.output.bias is not None:
            model.output.bias[EOS_ID] = 7.0  # and some hypotheses end before the length limit
    tokenizer.save(folder.parent / f"{folder.name}.tokenizer.json")
    tok_json = (folder.parent / f"{folder.name}.tokenizer.json").read_bytes()
    ckpt.save_checkpoint(
        folder, model=model, config={"model": config.to_dict(), "train": {"block_size": 16}}, tokenizer_json=tok_json
    )
    return model


@pytest.fixture(scope="module")
def seq2seq(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("models") / "s2s"
    write_model(folder, tokenizer, output_bias=True)
    return folder


@pytest.fixture(scope="module")
def lm(tmp_path_factory, tokenizer):
    folder = tmp_path_factory.mktemp("models") / "lm"
    write_model(folder, tokenizer, arch="lm")
    return folder


def run_cli(*args, stdin=None):
    """The installed command in a fresh process: (exit code, stdout, stderr)."""
    proc = subprocess.run(
        [sys.executable, "-m", "aiayn", *map(str, args)], input=stdin, capture_output=True, text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300,
    )  # fmt: skip
    return proc.returncode, proc.stdout, proc.stderr


SENTENCES = ["two dogs", "", "a man rides a bike down the street in the snow", "   ", "the girl", "zwei hunde"]


def test_translate_is_in_input_order_batched_equals_alone_and_blank_gives_blank(seq2seq):
    model = aiayn.load(seq2seq)
    assert model.model.training is False and model.tokenizer.vocab_size == model.model.config.vocab_size
    for beam in (1, 4):
        together = model.translate(SENTENCES, beam=beam, batch_tokens=64)
        alone = [model.translate([s], beam=beam)[0] for s in SENTENCES]
        assert together == alone
        assert together[1] == "" and together[3] == ""
    # The same as the decoding functions on the same ids (source + EOS).
    ids = model.tokenizer.encode("two dogs") + [EOS_ID]
    src = torch.tensor([ids])
    assert model.translate("two dogs", beam=1) == [model.tokenizer.decode(greedy(model.model, src)[0])]
    best = beam_search(model.model, src, beam_size=3, alpha=0.6)[0][0]
    assert model.translate(["two dogs"], beam=3) == [model.tokenizer.decode(best.tokens)]


def test_n_best_is_the_beam_search_n_best(seq2seq):
    model = aiayn.load(seq2seq)
    n_best = model.translate_n_best(["two dogs", "zwei hunde"], beam=4, alpha=0.0, n_best=4)
    src = torch.tensor([model.tokenizer.encode("two dogs") + [EOS_ID]])
    hyps = beam_search(model.model, src, beam_size=4, alpha=0.0, n_best=4)[0]
    assert [(t.text, t.finished) for t in n_best[0]] == [(model.tokenizer.decode(h.tokens), h.finished) for h in hyps]
    assert [t.score for t in n_best[0]] == pytest.approx([h.score for h in hyps], abs=1e-5)
    assert all(len(r) == 4 and [t.score for t in r] == sorted((t.score for t in r), reverse=True) for r in n_best)
    assert any(t.finished for t in n_best[0])


def test_score_and_perplexity_of_a_translation_model_match_teacher_forcing(seq2seq):
    model = aiayn.load(seq2seq)
    src, tgt = "two dogs play", "zwei hunde spielen"
    s = model.tokenizer.encode(src) + [EOS_ID]
    t = model.tokenizer.encode(tgt) + [EOS_ID]
    with torch.no_grad():
        logp = model.model(torch.tensor([s]), torch.tensor([[BOS_ID, *t[:-1]]]))[0].log_softmax(-1)
    expected = float(logp[torch.arange(len(t)), torch.tensor(t)].sum())
    assert model.score([tgt, tgt], sources=[src, src]) == pytest.approx([expected, expected], abs=1e-4)
    ppl = model.perplexity([tgt], sources=[src])
    assert ppl["tokens"] == len(t) and ppl["ppl"] == pytest.approx(math.exp(-expected / len(t)), rel=1e-4)


def test_lm_perplexity_reads_the_text_as_the_trainer_does(lm):
    model = aiayn.load(lm)
    lines = TEXT[:6]
    stream = []
    for line in lines:
        stream += model.tokenizer.encode(line + "\n")
    block = 16  # train.block_size in the folder's config
    n = (len(stream) - 1) // block
    windows = torch.tensor([stream[i * block : i * block + block + 1] for i in range(n)])  # (n, block + 1)
    with torch.no_grad():
        logp = model.model(windows[:, :-1]).log_softmax(-1)
    nll = -float(logp.gather(-1, windows[:, 1:, None]).sum()) / (n * block)
    result = model.perplexity(lines)
    assert result["tokens"] == n * block
    assert result["nll"] == pytest.approx(nll, rel=1e-5)
    # score: every token after the first, whole text
    ids = model.tokenizer.encode("two dogs play")
    with torch.no_grad():
        lp = model.model(torch.tensor([ids[:-1]]))[0].log_softmax(-1)
    assert model.score("two dogs play")[0] == pytest.approx(
        float(lp[torch.arange(len(ids) - 1), ids[1:]].sum()), abs=1e-4
    )


def test_generate_is_reproducible_greedy_at_zero_and_slides_past_the_context(lm):
    model = aiayn.load(lm)
    a = model.generate("two dogs", max_new_tokens=20, temperature=1.0, top_k=5, seed=7)
    assert a == model.generate("two dogs", max_new_tokens=20, temperature=1.0, top_k=5, seed=7)
    ids = model.tokenizer.encode("two dogs")
    ref = list(ids)
    with torch.no_grad():
        for _ in range(10):  # uncached greedy reference
            ref.append(int(model.model(torch.tensor([ref]))[0, -1].argmax()))
    assert model.generate("two dogs", max_new_tokens=10, temperature=0) == model.tokenizer.decode(ref[len(ids) :])
    # max_len is 48 positions: 100 new tokens need the context to slide; the first ones do not.
    long = model.generate_batch(["two dogs"], max_new_tokens=100, temperature=0)[0]
    from aiayn.decoding import sample

    out = sample(model.model, torch.tensor([ids]), 100, temperature=0, slide=True)[0]
    assert len(out) == 100 and long == model.tokenizer.decode(out)
    short = sample(model.model, torch.tensor([ids]), 100, temperature=0)[0]
    assert len(short) == 48 - len(ids) and out[: len(short)] == short


def test_wrong_model_family_and_bad_options_are_clear_errors(seq2seq, lm):
    with pytest.raises(ValueError, match="cannot translate: this is not a translation"):
        aiayn.load(lm).translate(["x"])
    with pytest.raises(ValueError, match="cannot generate: this is not a language model"):
        aiayn.load(seq2seq).generate("x")
    with pytest.raises(ValueError, match="beam_size=0"):
        aiayn.load(seq2seq).translate(["x"], beam=0)
    with pytest.raises(ValueError, match=r"top_p=2.0 must be in \(0, 1\]"):
        aiayn.load(lm).generate("x", top_p=2.0)


def test_cli_translate_keeps_one_line_per_input_line(seq2seq, tmp_path):
    api = aiayn.load(seq2seq).translate(SENTENCES, beam=2)
    code, out, err = run_cli("translate", "--model", seq2seq, "--beam", 2, stdin="\n".join(SENTENCES) + "\n")
    assert code == 0, err
    assert out.split("\n")[:-1] == api
    source = tmp_path / "in.txt"
    source.write_bytes(("\r\n".join(SENTENCES)).encode())  # CRLF, no final newline
    code, _, err = run_cli("translate", "--model", seq2seq, "--beam", 2, "--input", source, "--output", tmp_path / "o")
    assert code == 0, err
    assert (tmp_path / "o").read_text(encoding="utf-8").split("\n")[:-1] == api
    code, out, err = run_cli("translate", "--model", seq2seq, "--n-best", 3, "--input", source)
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    assert len(rows) == len(SENTENCES) and all(len(r) == 3 or r[0]["text"] == "" for r in rows)
    assert [r[0]["text"] for r in rows] == aiayn.load(seq2seq).translate(SENTENCES, beam=4)


def test_cli_evaluate_scores_with_sacrebleu(seq2seq, tmp_path):
    from sacrebleu.metrics import BLEU

    src, ref = tmp_path / "src", tmp_path / "ref"
    src.write_text("\n".join(TEXT[:6]) + "\n", encoding="utf-8")
    ref.write_text("\n".join(TEXT[6:12]) + "\n", encoding="utf-8")
    code, out, err = run_cli("evaluate", "--model", seq2seq, "--src", src, "--ref", ref, "--beam", 2, "--json")
    assert code == 0, err
    result = json.loads(out)
    hyps = aiayn.load(seq2seq).translate(TEXT[:6], beam=2)
    assert result["bleu"] == pytest.approx(BLEU().corpus_score(hyps, [TEXT[6:12]]).score)
    assert result["bleu_signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a")
    assert {"chrf", "bleu_lc", "chrf_signature", "seconds"} <= set(result)


def test_cli_generate_and_perplexity(lm, tmp_path):
    code, out, err = run_cli("generate", "--model", lm, "--prompt", "two", "--max-new-tokens", 5, "--seed", 3)
    assert code == 0, err
    assert out == "two" + aiayn.load(lm).generate("two", max_new_tokens=5, seed=3) + "\n"
    code, out, err = run_cli("generate", "--model", lm, "--prompt", "-", "--num-samples", 2, "--temperature", 0,
                             "--max-new-tokens", 4, stdin="two")  # fmt: skip
    assert code == 0, err
    assert out.count("--- sample") == 2
    text = tmp_path / "t.txt"
    text.write_text("\n".join(TEXT[:6]) + "\n", encoding="utf-8")
    code, out, err = run_cli("perplexity", "--model", lm, "--text", text, "--json")
    assert code == 0, err
    assert json.loads(out)["nll"] == pytest.approx(aiayn.load(lm).perplexity(TEXT[:6])["nll"], rel=1e-6)


def test_cli_errors_are_one_line_with_exit_code_2(seq2seq, lm, tokenizer, tmp_path, capsys):
    def error(*args):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        return err

    assert "no such model folder" in error("translate", "--model", tmp_path / "nope")
    broken = tmp_path / "broken"
    write_model(broken, tokenizer)
    (broken / "model.safetensors").unlink()
    assert "incomplete model folder (model.safetensors is missing)" in error("translate", "--model", broken)
    # A tokenizer of another size than the weights were made for.
    other = train_tokenizer(TEXT, vocab_size=280, min_frequency=1)
    mismatch = tmp_path / "mismatch"
    model = write_model(mismatch, tokenizer)
    other.save(tmp_path / "other.json")
    ckpt.save_checkpoint(mismatch, model=model, config={"model": model.config.to_dict()},
                         tokenizer_json=(tmp_path / "other.json").read_bytes())  # fmt: skip
    assert "the tokenizer does not belong to this model" in error("translate", "--model", mismatch)
    # Weights that do not match the config.
    wrong = tmp_path / "wrong"
    model = write_model(wrong, tokenizer)
    config = model.config.to_dict() | {"d_ff": 128}
    ckpt.save_checkpoint(wrong, model=model, config={"model": config},
                         tokenizer_json=(broken / "tokenizer.json").read_bytes())  # fmt: skip
    assert "weights do not match the config" in error("evaluate", "--model", wrong, "--src", "x", "--ref", "y")
    assert "beam_size=0 must be an integer >= 1" in error("translate", "--model", seq2seq, "--beam", "0",
                                                          "--input", tmp_path / "nope.txt")  # fmt: skip
    assert "nope.txt: no such file" in error("translate", "--model", seq2seq, "--input", tmp_path / "nope.txt")
    assert "temperature=-1.0" in error("generate", "--model", lm, "--prompt", "a", "--temperature", "-1")
    assert "cannot generate" in error("generate", "--model", seq2seq, "--prompt", "a")


def test_loading_never_unpickles(seq2seq, tmp_path):
    import shutil

    folder = tmp_path / "m"
    shutil.copytree(seq2seq, folder)
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    torch.save({"x": Evil()}, folder / "trainer_state.pt")  # not in the manifest, and never read by load
    aiayn.load(folder).translate(["two dogs"])
    assert not marker.exists()
    assert PAD_ID == 0


def test_cli_input_errors_name_the_argument_or_line(seq2seq, lm, tmp_path, capsys, monkeypatch):
    import io

    def error(*args):
        code = main([str(a) for a in args])
        err = capsys.readouterr().err
        assert code == 2 and err.startswith("error: ") and err.count("\n") == 1, err
        return err

    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(b"two dogs\n\xff\xfe bad\n")))
    assert "<stdin>: line 2: invalid UTF-8 at byte 0" in error("translate", "--model", seq2seq)
    src, ref = tmp_path / "src", tmp_path / "ref"
    src.write_text("a\nb\n", encoding="utf-8")
    ref.write_text("a\n", encoding="utf-8")
    assert "has 2 lines but --ref" in error("evaluate", "--model", seq2seq, "--src", src, "--ref", ref)
    assert "--num-samples 0" in error("generate", "--model", lm, "--prompt", "a", "--num-samples", "0")
    out = tmp_path / "out.txt"
    out.write_text("kept\n", encoding="utf-8")
    assert "no such file" in error("translate", "--model", seq2seq, "--input", tmp_path / "nope", "--output", out)
    assert out.read_text(encoding="utf-8") == "kept\n"  # nothing already written is lost


@pytest.mark.parametrize("arch", ["seq2seq", "lm"])
def test_inference_layout_keeps_every_value_and_result(tokenizer, tmp_path, arch):
    from aiayn.model import inference_layout

    model = write_model(tmp_path / arch, tokenizer, arch=arch, output_bias=arch == "seq2seq")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    src = torch.tensor([[5, 9, 13, 7, EOS_ID], [8, 6, EOS_ID, PAD_ID, PAD_ID]])
    tgt = torch.tensor([[BOS_ID, 11, 12], [BOS_ID, 4, 9]])
    with torch.no_grad():
        expected = model(src, tgt) if arch == "seq2seq" else model(tgt)
        tokens = beam_search(model, src, beam_size=3, max_len=8) if arch == "seq2seq" else None
        assert inference_layout(model) is model
        after = model(src, tgt) if arch == "seq2seq" else model(tgt)
    linear = [m.weight for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert linear and all(w.stride() == (1, w.shape[0]) for w in linear)  # column-major, same shape
    assert model.output.weight.stride() == (1, model.output.weight.shape[0])
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-5)  # only the summation order may differ
    if arch == "seq2seq":
        assert beam_search(model, src, beam_size=3, max_len=8) == tokens
    # A loaded model has this layout on the CPU, and its weights still save (safetensors wants contiguous data).
    loaded = aiayn.load(tmp_path / arch, device="cpu")
    assert loaded.model.output.weight.stride() == (1, loaded.model.output.weight.shape[0])
    ckpt.save_checkpoint(tmp_path / "again", model=loaded.model, config=loaded.config, tokenizer_json=b"{}")
    ckpt.load_weights(model, tmp_path / "again")
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_load_with_compile_translates_as_eager(model_folders):
    """aiayn.load(..., compile=True): the decoding step is compiled (aiayn.model.compile_decoding) and the
    translations are the eager ones, one sentence at a time (the case compilation is for) and batched."""
    texts = ["two dogs play in the snow", "a man rides a bike", "", "ein mann"]
    eager = aiayn.load(model_folders / "s2s", device="cpu")
    compiled = aiayn.load(model_folders / "s2s", device="cpu", compile=True)
    assert hasattr(compiled.model.decode, "compiled") and not hasattr(eager.model.decode, "compiled")
    want = eager.translate(texts, beam=1, max_len=8)
    assert [compiled.translate(t, beam=1, max_len=8)[0] for t in texts] == want
    assert compiled.translate(texts, beam=1, max_len=8) == want
