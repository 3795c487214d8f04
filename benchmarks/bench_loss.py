"""The training loss over a Multi30k-tiny-sized batch: logits + `label_smoothed_loss` against the chunked
`linear_label_smoothed_loss`, forward and backward, in ms (freed memory kept in the process, as the trainer does).

    python benchmarks/bench_loss.py [--rows 4096] [--d-model 128] [--vocab 8000]
"""

from __future__ import annotations

import argparse
import time

import torch

from aiayn.train.loss import label_smoothed_loss, linear_label_smoothed_loss
from aiayn.train.memory import keep_freed_memory


def bench(fn, repeats: int = 10) -> float:
    for _ in range(3):
        fn()
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    return (time.perf_counter() - start) / repeats * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=4096)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--vocab", type=int, default=8000)
    args = parser.parse_args()
    print("freed memory kept:", keep_freed_memory())
    torch.manual_seed(0)
    n, d, v = args.rows, args.d_model, args.vocab
    hidden = torch.randn(n, d, requires_grad=True)
    weight = (torch.randn(v, d) * 0.05).requires_grad_(True)
    target = torch.randint(4, v, (n,))
    target[-n // 14 :] = 0  # some padding, as in a token-bucketed batch

    def two_step() -> None:
        loss, _, _ = label_smoothed_loss(hidden @ weight.t(), target, 0.1, 0)
        loss.backward()
        hidden.grad = weight.grad = None

    def chunked(rows: int) -> None:
        loss, _, _ = linear_label_smoothed_loss(hidden, weight, None, target, 0.1, 0, rows=rows)
        loss.backward()
        hidden.grad = weight.grad = None

    for _ in range(2):
        print(f"logits + loss: {bench(two_step):.1f} ms")
        for rows in (128, 0, 512, 1024, n):
            print(f"chunked, rows {rows or 'default'}: {bench(lambda r=rows: chunked(r)):.1f} ms")


if __name__ == "__main__":
    main()
