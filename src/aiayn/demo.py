"""`aiayn demo`: the main job. Trains a small model on built-in data (no download, no network) and shows what it
learned: dates written the many ways people write them -> ISO dates (encoder-decoder), or, with `--task lm`,
a character-level language model of Python's own standard library source, sampled at two temperatures.
"""

from __future__ import annotations

import json
import sysconfig
import time
from pathlib import Path
from typing import Any

from aiayn.config import RunConfig, merge, parse_overrides
from aiayn.errors import UserError
from aiayn.inference import load

# configs/demo-dates.yaml holds the same settings (a test keeps them equal).
DATES_CONFIG: dict[str, Any] = {
    "model": {
        "d_model": 128,
        "n_heads": 4,
        "n_encoder_layers": 2,
        "n_decoder_layers": 2,
        "d_ff": 512,
        "dropout": 0.0,  # 60,000 generated pairs do not overfit in 800 steps; CPU dropout costs ~20% of a step
    },
    "data": {"task": "dates", "task_train_size": 60000, "task_valid_size": 500, "max_example_tokens": 64},
    "tokenizer": {"kind": "bpe", "vocab_size": 600},
    "optim": {"schedule": "inverse_sqrt", "lr": 0.002, "warmup": 200, "label_smoothing": 0.1},
    "train": {
        "out_dir": "runs/demo-dates",
        "max_steps": 800,
        "max_tokens": 2048,
        "log_every": 100,
        "eval_every": 800,
        "save_every": 400,
        "eval_bleu_sentences": 500,
        "seed": 1,
    },
}

# `--arch rnn`: the same task, data, tokenizer and evaluation, learned by a bidirectional LSTM encoder and an LSTM
# decoder with additive (Bahdanau) attention. Only the keys this family reads are set, so no `note:` line.
RNN_DATES_CONFIG: dict[str, Any] = {
    "model": {
        "arch": "rnn",
        "rnn_cell": "lstm",
        "rnn_attention": "additive",
        "rnn_bidirectional": True,
        "d_model": 128,
        "n_encoder_layers": 1,
        "n_decoder_layers": 1,
        "dropout": 0.0,
    },
    "data": dict(DATES_CONFIG["data"]),
    "tokenizer": dict(DATES_CONFIG["tokenizer"]),
    "optim": {
        "schedule": "cosine",
        "lr": 0.003,
        "min_lr": 0.0003,
        "warmup": 50,
        "clip_norm": 1.0,
        "label_smoothing": 0.1,
    },
    # 400 steps: 99.6% exact match (800: 100%); the LSTM's loss is at its floor by step ~350. No train.max_minutes:
    # on a busy machine a 2.5-minute limit stopped at step 66 with 0% exact match, a worse demo than a slow one.
    "train": {
        **DATES_CONFIG["train"],
        "out_dir": "runs/demo-dates-rnn",
        "max_steps": 400,
        "eval_every": 400,
        "save_every": 200,
    },
}

LM_CONFIG: dict[str, Any] = {
    "model": {
        "arch": "lm",
        "d_model": 128,
        "n_heads": 4,
        "n_decoder_layers": 4,
        "d_ff": 512,
        "dropout": 0.0,
        "max_len": 128,
    },
    "data": {"train_text": "", "valid_fraction": 0.1},
    "tokenizer": {"kind": "char", "vocab_size": 512},
    "optim": {"schedule": "cosine", "lr": 0.002, "min_lr": 0.0002, "warmup": 100, "label_smoothing": 0.0},
    "train": {
        "out_dir": "runs/demo-lm",
        "max_steps": 1000,
        "batch_size": 16,
        "block_size": 128,
        "log_every": 100,
        "eval_every": 1000,
        "save_every": 500,
        "seed": 1,
    },
}

EVAL_SIZE = 1000
EVAL_SEED = 20261122  # held-out dates: another seed than training's, and any date text seen in training removed


def stdlib_text(limit_bytes: int = 1_500_000) -> str:
    """Text every Python installation has: its standard library's source, files in sorted order up to a limit."""
    root = Path(sysconfig.get_paths()["stdlib"])
    parts, size = [], 0
    for path in sorted(root.glob("*.py")):
        text = path.read_text(encoding="utf-8", errors="replace")
        parts.append(text)
        size += len(text.encode("utf-8"))
        if size >= limit_bytes:
            break
    return "".join(parts)


def _config(base: dict[str, Any], out_dir: str | None, steps: int | None, overrides: list[str]) -> RunConfig:
    data = merge(base, parse_overrides(overrides))
    if out_dir:
        data["train"]["out_dir"] = out_dir
    if steps:
        data["train"]["max_steps"] = steps
        data["train"]["eval_every"] = steps
        data["train"]["save_every"] = min(data["train"]["save_every"], steps)
    return RunConfig.from_dict(data)


def run_demo(
    task: str = "dates", out_dir: str | None = None, steps: int | None = None, overrides=(), arch: str = "transformer"
) -> int:
    start = time.perf_counter()
    if task == "lm":
        if arch != "transformer":
            raise UserError(f"--arch {arch} --task lm: the language-model demo is a Transformer; drop --arch")
        return _run_lm(out_dir, steps, list(overrides), start)
    if arch == "rnn":
        config = _config(RNN_DATES_CONFIG, out_dir, steps, list(overrides))
        print(f"aiayn demo --arch rnn: teach a small LSTM with attention to read dates; "
              f"run folder {config.train.out_dir}")  # fmt: skip
    else:
        config = _config(DATES_CONFIG, out_dir, steps, list(overrides))
        print(f"aiayn demo: teach a small Transformer to read dates; run folder {config.train.out_dir}")
    return _run_dates(config, start)


def _run_dates(config: RunConfig, start: float) -> int:
    from aiayn.train.trainer import Trainer

    run_dir = Path(config.train.out_dir)
    trainer = Trainer(config, resume="auto")  # running the demo again continues (or just re-evaluates) the run
    code = trainer.run()
    if code != 0:
        return code
    from aiayn.data.tasks import task_pairs

    seen = {s for s, _ in task_pairs("dates", config.data.task_train_size, config.train.seed)}
    held_out = [p for p in task_pairs("dates", EVAL_SIZE * 2, EVAL_SEED) if p[0] not in seen][:EVAL_SIZE]
    sources = [s for s, _ in held_out]
    # The trained model as a user loads it (its best checkpoint), translated greedily in the run's batch size.
    model = load(run_dir, device="cpu" if config.train.device == "cpu" else "auto")
    outputs = model.translate(sources, beam=1, batch_tokens=config.train.max_tokens)
    correct = [o == t for o, (_, t) in zip(outputs, held_out, strict=True)]
    print("\nheld-out dates it never saw:")
    for (src, tgt), out, ok in list(zip(held_out, outputs, correct, strict=True))[:8]:
        print(f"  {'✓' if ok else '✗'} {src!r:48} -> {out}" + ("" if ok else f"   (expected {tgt})"))
    exact = sum(correct) / len(correct)
    elapsed = time.perf_counter() - start
    result = {
        "task": "dates",
        "arch": config.model.arch,
        "exact_match": exact,
        "correct": sum(correct),
        "n": len(correct),
        "steps": trainer.state.step,
        "seconds": round(elapsed, 1),
        "errors": [{"source": s, "expected": t, "output": o} for (s, t), o, ok in zip(held_out, outputs, correct,
                                                                                      strict=True) if not ok][:50],
    }  # fmt: skip
    _write_json(run_dir / "eval.json", result)
    picture = _attention_picture(run_dir, sources[:4])
    print(f"\nexact match on {len(correct):,} held-out dates: {exact:.1%} ({sum(correct)}/{len(correct)})")
    print(f"time: {elapsed:.0f} s; model and results in {run_dir} (eval.json, metrics.jsonl, checkpoints/)")
    if picture:
        print(f"where each output token looked in the input: {picture}")
    return 0


def _run_lm(out_dir: str | None, steps: int | None, overrides: list[str], start: float) -> int:
    from aiayn.train.trainer import Trainer

    config = _config(LM_CONFIG, out_dir, steps, overrides)
    run_dir = Path(config.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    text_file = run_dir / "stdlib.txt"
    if not text_file.exists():
        from aiayn.files import write_atomic

        write_atomic(text_file, stdlib_text().encode())
    config.data.train_text = str(text_file)
    print(f"aiayn demo --task lm: a character-level language model of Python's standard library; run folder {run_dir}")
    trainer = Trainer(config, resume="auto")
    code = trainer.run()
    if code != 0:
        return code
    model = load(run_dir, device="cpu" if config.train.device == "cpu" else "auto")
    prompt = "def "
    samples = {}
    for temperature in (0.5, 1.0):
        samples[str(temperature)] = prompt + model.generate(prompt, 300, temperature=temperature, seed=0)
        print(f"\n--- sample at temperature {temperature} ---\n{samples[str(temperature)]}")
    _, nll, _ = trainer.validation_loss()
    elapsed = time.perf_counter() - start
    _write_json(run_dir / "eval.json", {"task": "lm", "valid_nll": nll, "seconds": round(elapsed, 1),
                                        "samples": samples})  # fmt: skip
    print(f"\nvalidation loss {nll:.4f} nats/char; time {elapsed:.0f} s; run folder {run_dir}")
    return 0


def _attention_picture(run_dir: Path, sources: list[str]) -> Path | None:
    """attention.png in the run folder: the encoder-decoder attention of the last decoder layer (mean over heads)
    for a few held-out dates; a date's digits light up where the ISO output copies them. Dates in Chinese are left
    out (with a note) when no installed font has their glyphs."""
    from aiayn import viz

    model = load(run_dir, device="cpu")
    config = model.model.config
    # A recurrent decoder has one attention module over the encoder's states, not one per layer.
    last = "decoder.cross_attn" if config.arch == "rnn" else f"decoder.layers.{config.n_decoder_layers - 1}.cross_attn"
    items = []
    for text in sources:
        attn = model.attention(text)
        if last not in attn.weights:  # e.g. --model.rnn_attention none: the decoder reads one fixed vector
            print(f"note: the model has no {last} attention; no attention.png")
            return None
        items.append((attn.weights[last].mean(axis=0), attn.output, attn.source, f"{text} -> {attn.text}"))
    title = (f"encoder-decoder attention ({config.rnn_attention}, one head)" if config.arch == "rnn"
             else "encoder-decoder attention, last layer, mean of the heads")  # fmt: skip
    try:
        return viz.plot_alignments(items, run_dir / "attention.png", title)
    except viz.VizError as e:
        drawable = [item for item in items if item[3].isascii()]
        print(f"note: {e}; drawing {len(drawable)} of {len(items)} dates")
        return viz.plot_alignments(drawable, run_dir / "attention.png", title) if drawable else None


def _write_json(path: Path, data: dict[str, Any]) -> None:
    from aiayn.files import write_atomic

    write_atomic(path, (json.dumps(data, indent=1, ensure_ascii=False) + "\n").encode())
