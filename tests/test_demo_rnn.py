"""`aiayn demo --arch rnn` (the dates task learned by a bidirectional LSTM with additive attention) and the note of
ignored model keys at the head of a run's config.yaml. The full recipe's accuracy (>= 98% exact match) is measured
outside the suite: here a shortened run proves the command writes its run folder, eval.json and attention.png."""

import json

import tiny_run
import yaml
from tiny_run import aiayn

from aiayn.cli import build_parser
from aiayn.config import RunConfig
from aiayn.demo import DATES_CONFIG, RNN_DATES_CONFIG
from aiayn.train.run_folder import RunFolder


def test_arch_flag_defaults_to_the_transformer_and_takes_rnn():
    parser = build_parser()
    assert parser.parse_args(["demo"]).arch == "transformer"
    assert parser.parse_args(["demo", "--arch", "rnn"]).arch == "rnn"
    wrong = aiayn("demo", "--arch", "lstm")
    assert wrong.returncode == 2 and "invalid choice: 'lstm'" in wrong.stderr


def test_arch_rnn_with_task_lm_is_one_line_of_error(tmp_path):
    result = aiayn("demo", "--arch", "rnn", "--task", "lm", "--out", tmp_path / "lm")
    assert result.returncode == 2
    assert result.stderr == "error: --arch rnn --task lm: the language-model demo is a Transformer; drop --arch\n"
    assert not (tmp_path / "lm").exists()  # refused before anything is written


def test_rnn_recipe_is_the_dates_demo_with_a_recurrent_model():
    config = RunConfig.from_dict(RNN_DATES_CONFIG)
    m = config.model
    assert (m.arch, m.rnn_cell, m.rnn_attention, m.rnn_bidirectional) == ("rnn", "lstm", "additive", True)
    assert RNN_DATES_CONFIG["data"] == DATES_CONFIG["data"]  # the same task, so the same held-out dates
    assert RNN_DATES_CONFIG["tokenizer"] == DATES_CONFIG["tokenizer"]
    assert config.train.out_dir == "runs/demo-dates-rnn"
    assert not set(RNN_DATES_CONFIG["model"]) & set(m.ignored_keys)  # no `note:` line for its own recipe


def test_demo_arch_rnn_writes_its_run_folder_eval_json_and_attention_png(tmp_path):
    out = tmp_path / "demo-rnn"
    result = aiayn("demo", "--arch", "rnn", "--out", out, "--steps", "30", "--data.task_train_size", "3000",
                   timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"aiayn demo --arch rnn: teach a small LSTM with attention to read dates; run folder {out}"
    assert any(line.startswith("model: rnn, ") for line in lines)
    assert "note:" not in result.stderr
    data = json.loads((out / "eval.json").read_text(encoding="utf-8"))
    assert (data["arch"], data["n"], data["steps"]) == ("rnn", 1000, 30) and 0.0 <= data["exact_match"] <= 1.0
    assert (out / "attention.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"where each output token looked in the input: {out / 'attention.png'}" in lines
    saved = yaml.safe_load((out / "config.yaml").read_text(encoding="utf-8"))
    assert saved["model"]["arch"] == "rnn" and saved["train"]["max_steps"] == 30


def test_config_yaml_heads_with_the_ignored_keys_and_loads_as_before(tmp_path):
    cases = [
        ("rnn", {}, "model.n_heads, model.d_ff"),
        ("seq2seq", {"n_heads": 2}, "model.rnn_cell, model.rnn_nonlinearity"),
    ]
    for arch, heads, expected in cases:
        config = RunConfig.from_dict({"model": {"arch": arch, "d_model": 16, "vocab_size": 50, **heads}})
        folder = RunFolder(tmp_path / arch)
        folder.root.mkdir()
        folder.write_config(config.to_dict())
        text = (folder.root / "config.yaml").read_text(encoding="utf-8")
        first = text.splitlines()[0]
        assert first.startswith(f"# ignored by model.arch '{arch}' (not read, whatever their values): "), first
        assert expected in first
        assert all(f"model.{key}" in first for key in config.model.ignored_keys)
        assert yaml.safe_load(text) == config.to_dict()  # a comment: the data read back is unchanged
        assert RunConfig.from_dict(yaml.safe_load(text)).to_dict() == config.to_dict()


def test_tiny_rnn_run_names_ignored_keys_and_resumes_auto(tmp_path):
    run = tmp_path / "run"
    args = [*tiny_run.TINY, "--model.arch", "rnn", "--train.out_dir", run]
    first = aiayn("train", *args)
    assert first.returncode == 0, first.stderr
    head = (run / "config.yaml").read_text(encoding="utf-8").splitlines()[0]
    assert head.startswith("# ignored by model.arch 'rnn'") and "model.n_heads" in head and "model.d_ff" in head
    longer = aiayn("train", *args, "--train.max_steps", "16", "--resume", "auto")
    assert longer.returncode == 0, longer.stderr
    assert "resumed from" in longer.stdout
    assert tiny_run.metrics(run)[-1]["step"] == 16
