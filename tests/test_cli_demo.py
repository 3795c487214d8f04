"""The `aiayn` command's other subcommands and the main job (`aiayn demo`), as a user runs them."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from aiayn.config import RunConfig, load_yaml
from aiayn.decoding import filter_logits, sample

ROOT = Path(__file__).resolve().parents[1]


def aiayn(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "aiayn", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=ROOT)  # fmt: skip


def test_demo_config_file_is_what_the_demo_trains():
    from aiayn.demo import DATES_CONFIG

    assert load_yaml(str(ROOT / "configs" / "demo-dates.yaml")) == DATES_CONFIG


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_every_ready_config_is_valid(name):
    data = load_yaml(str(ROOT / "configs" / name))
    config = RunConfig.from_dict(data)
    if "shared/data" in json.dumps(data):
        assert "../shared/data" in (ROOT / "configs" / name).read_text().splitlines()[0]  # said at the top
    assert config.model.to_dict()  # builds


def test_paper_base_config_is_the_paper():
    config = RunConfig.from_dict(load_yaml(str(ROOT / "configs" / "paper-base.yaml")))
    m, o = config.model, config.optim
    assert (m.d_model, m.n_heads, m.n_encoder_layers, m.n_decoder_layers, m.d_ff, m.dropout) == (
        512,
        8,
        6,
        6,
        2048,
        0.1,
    )
    assert (o.schedule, o.warmup, o.beta1, o.beta2, o.eps, o.label_smoothing) == ("noam", 4000, 0.9, 0.98, 1e-9, 0.1)
    assert config.tokenizer.vocab_size == 37000 and config.train.max_steps == 100_000
    big = RunConfig.from_dict(load_yaml(str(ROOT / "configs" / "paper-big.yaml")))
    assert (big.model.d_model, big.model.n_heads, big.model.d_ff, big.model.dropout) == (1024, 16, 4096, 0.3)
    assert big.train.max_steps == 300_000


def test_demo_runs_end_to_end_and_writes_eval_json(tmp_path):
    """The README's first command, shortened (the full demo's accuracy is measured in benchmarks/RESULTS.md)."""
    out = tmp_path / "demo"
    result = aiayn("demo", "--out", out, "--steps", "40", "--data.task_train_size", "4000")
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("model: seq2seq") for line in lines)
    assert "held-out dates it never saw:" in lines
    summary = [line for line in lines if line.startswith("exact match on 1,000 held-out dates: ")]
    assert len(summary) == 1
    result_json = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert result_json["n"] == 1000 and 0.0 <= result_json["exact_match"] <= 1.0
    assert f"({result_json['correct']}/1000)" in summary[0]
    assert (out / "best" / "model.safetensors").exists() and (out / "metrics.jsonl").exists()
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"where each output token looked in the input: {out / 'attention.png'}" in lines
    saved = yaml.safe_load((out / "config.yaml").read_text())
    assert saved["data"]["task"] == "dates" and saved["train"]["max_steps"] == 40


def test_demo_lm_trains_and_samples(tmp_path):
    out = tmp_path / "lm"
    result = aiayn("demo", "--task", "lm", "--out", out, "--steps", "20")
    assert result.returncode == 0, result.stderr
    assert "--- sample at temperature 0.5 ---" in result.stdout and "--- sample at temperature 1.0 ---" in result.stdout
    data = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert set(data["samples"]) == {"0.5", "1.0"} and all(s.startswith("def ") for s in data["samples"].values())
    assert data["valid_nll"] > 0


def test_tokenizer_train_command(tmp_path):
    text = tmp_path / "a.txt"
    text.write_text("Grüße aus Köln\n你好，世界\n" * 50, encoding="utf-8")
    out = tmp_path / "tok.json"
    result = aiayn("tokenizer", "train", "--input", text, "--vocab-size", "300", "--out", out)
    assert result.returncode == 0, result.stderr
    from aiayn.tokenizer import Tokenizer

    tok = Tokenizer.load(out)
    assert result.stdout.strip() == f"tokenizer: {tok.vocab_size} tokens (bpe), saved to {out}"
    assert tok.decode(tok.encode("Grüße 你好")) == "Grüße 你好"
    missing = aiayn("tokenizer", "train", "--input", tmp_path / "nope.txt", "--vocab-size", "300", "--out", out)
    assert missing.returncode == 2 and missing.stderr == f"error: {tmp_path / 'nope.txt'}: no such file\n"


def test_unknown_override_is_one_line_with_a_hint(tmp_path):
    result = aiayn("train", "--train.max_step", "5", "--train.out_dir", tmp_path / "r")
    assert result.returncode == 2
    assert result.stderr == "error: unknown key 'train.max_step' in TrainConfig; did you mean 'max_steps'?\n"


def test_filter_logits_top_k_and_top_p_worked_example():
    logits = torch.log(torch.tensor([[0.5, 0.2, 0.15, 0.1, 0.05]]))
    low = torch.finfo(torch.float32).min
    kept = filter_logits(logits, top_k=2)
    assert torch.equal(kept[0, 2:], torch.full((3,), low)) and torch.equal(kept[0, :2], logits[0, :2])
    # top_p 0.8: 0.5 + 0.2 = 0.7 < 0.8, so 0.15 is needed too; 0.1 and 0.05 go.
    kept = filter_logits(logits, top_p=0.8)
    assert torch.equal(kept[0, :3], logits[0, :3]) and torch.equal(kept[0, 3:], torch.full((2,), low))
    assert torch.equal(filter_logits(logits, top_p=0.3)[0, 1:], torch.full((4,), low))  # the top token always stays


def test_sample_is_reproducible_and_temperature_zero_is_greedy():
    from aiayn import ModelConfig
    from aiayn.model import LanguageModel

    torch.manual_seed(0)
    model = LanguageModel(ModelConfig(arch="lm", vocab_size=30, d_model=16, n_heads=2, n_decoder_layers=1, d_ff=32,
                                      max_len=40)).eval()  # fmt: skip
    prompt = torch.tensor([[5, 6, 7]])
    a = sample(model, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    b = sample(model, prompt, 10, temperature=1.0, generator=torch.Generator().manual_seed(1))
    assert a == b and len(a[0]) == 10
    greedy = sample(model, prompt, 10, temperature=0)
    ids = prompt
    for _ in range(10):  # uncached greedy reference
        ids = torch.cat([ids, model(ids)[:, -1].argmax(-1, keepdim=True)], dim=1)
    assert greedy[0] == ids[0, 3:].tolist()
    assert len(sample(model, prompt, 100, temperature=0)[0]) == 37  # stops at max_len positions
    with pytest.raises(ValueError, match="temperature=-1 must be a finite number >= 0"):
        sample(model, prompt, 5, temperature=-1)
