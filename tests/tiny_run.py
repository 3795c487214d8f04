"""What the training tests share: a tiny run of the built-in copy task through the `aiayn` command, and its log."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# A tiny encoder-decoder on the copy task: 12 steps, checkpoints every 4, validation (with BLEU) every 6.
TINY = [
    "--data.task", "copy", "--data.task_train_size", "400", "--data.task_valid_size", "20",
    "--tokenizer.vocab_size", "300",
    "--model.d_model", "32", "--model.n_heads", "2", "--model.n_encoder_layers", "1", "--model.n_decoder_layers", "1",
    "--model.d_ff", "64", "--model.dropout", "0.1",
    "--optim.schedule", "inverse_sqrt", "--optim.lr", "0.003", "--optim.warmup", "4",
    "--train.max_steps", "12", "--train.max_tokens", "256", "--train.save_every", "4",
    "--train.log_every", "1", "--train.eval_every", "6", "--train.eval_bleu_sentences", "10", "--train.seed", "3",
    "--train.threads", "1",
]  # fmt: skip


def aiayn(*args, env=None, timeout=300, input=None) -> subprocess.CompletedProcess:
    """`python -m aiayn ARGS` from the repository root, its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "aiayn", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env={**os.environ, **(env or {})}, input=input,
    )  # fmt: skip


def metrics(run) -> list[dict]:
    """Every logged entry, without the wall-clock figures (the only fields allowed to differ between runs)."""
    entries = [json.loads(line) for line in (Path(run) / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in e.items() if k not in ("tokens_per_s", "seconds")} for e in entries]


def final_weights(run) -> dict:
    """The tensors of the run's `last` checkpoint."""
    from safetensors.torch import load_file

    return load_file(str(Path(run) / "last" / "model.safetensors"))


def assert_same_run(a, b) -> None:
    """Two runs are the same run: every logged loss, nll, lr and validation score (wall-clock fields dropped) and
    the final weights, bit for bit."""
    import torch

    assert metrics(a) == metrics(b)
    wa, wb = final_weights(a), final_weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
