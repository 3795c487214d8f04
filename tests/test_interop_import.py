"""`aiayn import`: Hugging Face Marian and GPT-2 folders (random weights, tokenizers trained here) become aiayn
model folders whose tokens, texts and scores are Hugging Face's own.

The texts have padding (different lengths in one batch), Chinese, curly quotes that Moses normalisation rewrites,
and characters no tokenizer saw (the unknown token for Marian, bytes for GPT-2).
"""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("sentencepiece")
pytest.importorskip("sacremoses")

from hf_models import TEXTS, gpt2_folder, hf_outputs, marian_folder  # noqa: E402
from transformers import GPT2LMHeadModel, GPT2TokenizerFast, MarianMTModel, MarianTokenizer  # noqa: E402

from aiayn.cli import main  # noqa: E402
from aiayn.config import DecodeConfig  # noqa: E402
from aiayn.decoding.texts import translate_texts  # noqa: E402
from aiayn.inference import load  # noqa: E402
from aiayn.interop import import_model  # noqa: E402
from aiayn.modelfile import CheckpointError, verify  # noqa: E402

NEW_TOKENS = 20


@pytest.fixture(scope="module")
def marian(tmp_path_factory):
    """(the Hugging Face folder, the imported aiayn folder)."""
    root = tmp_path_factory.mktemp("marian")
    src = marian_folder(root / "hf")
    return src, import_model(src, root / "aiayn")


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    root = tmp_path_factory.mktemp("gpt2")
    src = gpt2_folder(root / "hf")
    return src, import_model(src, root / "aiayn")


def _hf_marian(src):
    return MarianTokenizer.from_pretrained(src), MarianMTModel.from_pretrained(src).eval()


def test_marian_tokenizer_gives_marians_ids_for_sources_and_targets(marian):
    src, folder = marian
    tok, _ = _hf_marian(src)
    ours = load(folder, device="cpu").tokenizer
    assert ours.kind == "sentencepiece"
    assert [ids + [ours.special_ids.eos] for ids in ours.encode_batch(TEXTS)] == tok(TEXTS).input_ids
    assert [ids + [ours.special_ids.eos] for ids in ours.encode_target_batch(TEXTS)] == tok(text_target=TEXTS).input_ids
    assert ours.special_ids.unk in ours.encode("☃")


def test_marian_ids_are_carried_not_remapped(marian):
    src, folder = marian
    hf_config = json.loads((src / "config.json").read_text())
    model = load(folder, device="cpu").model
    pad = hf_config["pad_token_id"]
    assert (model.config.pad_id, model.config.bos_id, model.config.eos_id) == (pad, pad, hf_config["eos_token_id"])
    # Marian's generation config bans the pad token (bad_words_ids): aiayn's default for pad = start, kept as such.
    assert model.config.special_ids.never_emit == (pad,) and model.config.never_emit_ids is None
    assert verify(folder)["tokenizer"] == "sentencepiece"
    assert sorted(p.name for p in folder.iterdir()) == [
        "config.yaml", "manifest.json", "model.safetensors", "source.spm", "target.spm", "tokenizer_config.json",
        "vocab.json",
    ]  # fmt: skip


def _hf_outputs(hf, batch, beam: int, pad: int, eos: int) -> list[list[int]]:
    return hf_outputs(hf, batch, beam, pad, eos, NEW_TOKENS)


@pytest.mark.parametrize("beam", [1, 4])
def test_imported_marian_translates_as_hugging_face_generates(marian, beam):
    src, folder = marian
    tok, hf = _hf_marian(src)
    translator = load(folder, device="cpu")
    c = translator.model.config
    expected = _hf_outputs(hf, tok(TEXTS, return_tensors="pt", padding=True), beam, c.pad_id, c.eos_id)
    decode = DecodeConfig(beam_size=beam, alpha=0.0, max_len=NEW_TOKENS)
    hyps = translate_texts(translator.model, translator.tokenizer, TEXTS, decode, torch.device("cpu"))
    assert [h[0].tokens for h in hyps] == expected
    assert any(h[0].finished for h in hyps) and len({tuple(e) for e in expected}) > 1
    texts = translator.translate(TEXTS, beam=beam, alpha=0.0, max_len=NEW_TOKENS)
    assert texts == [tok.decode(e, skip_special_tokens=True) for e in expected]


def test_aiayn_import_and_translate_commands(tmp_path, marian, capsys):
    src, _ = marian
    tok, hf = _hf_marian(src)
    assert main(["import", str(src), "--out", str(tmp_path / "model")]) == 0
    (tmp_path / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    args = ["translate", "--model", str(tmp_path / "model"), "--input", str(tmp_path / "in.txt"), "--beam", "1",
            "--max-len", str(NEW_TOKENS), "--output", str(tmp_path / "out.txt")]  # fmt: skip
    assert main(args) == 0
    c = load(tmp_path / "model", device="cpu").model.config
    expected = _hf_outputs(hf, tok(TEXTS, return_tensors="pt", padding=True), 1, c.pad_id, c.eos_id)
    lines = (tmp_path / "out.txt").read_text(encoding="utf-8").splitlines()
    assert lines == [tok.decode(e, skip_special_tokens=True) for e in expected]


@pytest.mark.parametrize("tokenizer_json", [True, False], ids=["tokenizer.json", "vocab+merges"])
def test_imported_gpt2_generates_and_scores_as_hugging_face(tmp_path, tokenizer_json):
    src = gpt2_folder(tmp_path / "hf", tokenizer_json=tokenizer_json)
    folder = import_model(src, tmp_path / "aiayn")
    tok = GPT2TokenizerFast.from_pretrained(gpt2_folder(tmp_path / "ref"))  # the reference tokenizer files
    hf = GPT2LMHeadModel.from_pretrained(src).eval()
    generator = load(folder, device="cpu")
    assert generator.model.config.never_emit_ids == []  # GPT-2 has no pad token: every id may be generated
    for text in TEXTS:
        ids = tok(text).input_ids
        assert generator.tokenizer.encode(text) == ids
        expected = hf.generate(torch.tensor([ids]), do_sample=False, max_new_tokens=NEW_TOKENS,
                               min_new_tokens=NEW_TOKENS, pad_token_id=tok.eos_token_id)[0].tolist()  # fmt: skip
        ours = generator.generate(text, max_new_tokens=NEW_TOKENS, temperature=0.0)
        assert ours == tok.decode(expected[len(ids) :], skip_special_tokens=True)
        with torch.no_grad():
            loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()  # mean NLL of tokens 2..n
        assert generator.score(text)[0] == pytest.approx(-loss * (len(ids) - 1), rel=1e-4, abs=1e-4)


def test_imported_gpt2_perplexity_command(gpt2, tmp_path, capsys):
    src, folder = gpt2
    tok = GPT2TokenizerFast.from_pretrained(src)
    hf = GPT2LMHeadModel.from_pretrained(src).eval()
    (tmp_path / "text.txt").write_text("\n".join(TEXTS[:2]) + "\n", encoding="utf-8")
    assert main(["perplexity", "--model", str(folder), "--text", str(tmp_path / "text.txt")]) == 0
    ids = tok("".join(t + "\n" for t in TEXTS[:2])).input_ids
    assert len(ids) <= 64  # one window: HF's mean loss is the whole text's
    with torch.no_grad():
        loss = hf(torch.tensor([ids]), labels=torch.tensor([ids])).loss.item()
    printed = float(capsys.readouterr().out.split()[1])  # "perplexity 653.3363  (nll ...)"
    assert printed == pytest.approx(math.exp(loss), rel=1e-4)


def test_attention_of_an_imported_marian_is_what_its_forward_computes(marian):
    src, folder = marian
    _, hf = _hf_marian(src)
    translator = load(folder, device="cpu")
    attention = translator.attention(TEXTS[1], beam=1, max_len=NEW_TOKENS)
    source, decoder_in, _, _ = translator.walk_inputs(TEXTS[1], 1, 0.6, NEW_TOKENS)
    with torch.no_grad():
        out = hf(input_ids=torch.tensor([source]), decoder_input_ids=torch.tensor([decoder_in]), output_attentions=True)
    for layer in range(len(out.cross_attentions)):  # each (1, H, T, S)
        for name, theirs in [("encoder.layers.{}.self_attn", out.encoder_attentions),
                             ("decoder.layers.{}.self_attn", out.decoder_attentions),
                             ("decoder.layers.{}.cross_attn", out.cross_attentions)]:  # fmt: skip
            ours = torch.as_tensor(attention.weights[name.format(layer)])  # (H, rows, cols)
            torch.testing.assert_close(ours, theirs[layer][0], atol=1e-5, rtol=1e-4)


def test_unsupported_and_incomplete_sources_are_one_line(tmp_path, marian, capsys):
    src, _ = marian
    bert = tmp_path / "bert"
    bert.mkdir()
    (bert / "config.json").write_text(json.dumps({"model_type": "bert", "architectures": ["BertModel"]}))
    assert main(["import", str(bert), "--out", str(tmp_path / "out")]) == 2
    assert "BertModel is not supported; aiayn imports MarianMTModel, GPT2LMHeadModel" in capsys.readouterr().err
    partial = tmp_path / "partial"
    shutil.copytree(src, partial)
    (partial / "target.spm").unlink()
    assert main(["import", str(partial), "--out", str(tmp_path / "out")]) == 2
    assert "Marian's tokenizer needs target.spm, which the folder lacks" in capsys.readouterr().err
    config = json.loads((partial / "tokenizer_config.json").read_text())
    shutil.copy(src / "target.spm", partial / "target.spm")
    (partial / "tokenizer_config.json").write_text(json.dumps({**config, "separate_vocabs": True}))
    assert main(["import", str(partial), "--out", str(tmp_path / "out")]) == 2
    assert "separate source and target vocabularies (separate_vocabs) are not supported" in capsys.readouterr().err
    assert main(["import", str(tmp_path / "no" / "such"), "--out", str(tmp_path / "out")]) == 2
    assert "no/such: not a folder written by save_pretrained, nor a hub name" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_a_damaged_tokenizer_file_is_caught_when_loading(tmp_path, marian):
    _, folder = marian
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    with (copy / "source.spm").open("r+b") as f:
        f.write(b"\0\0\0\0")
    with pytest.raises(CheckpointError, match="source.spm: sha256 mismatch"):
        load(copy, device="cpu")
