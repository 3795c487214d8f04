"""Train a small Transformer (the paper's architecture, scaled down) to reverse sequences, on the CPU.

The built-in `reverse` task needs no download: the model must learn to attend to the right source position
at every step, so a model that reverses exactly has working masks, positions and encoder-decoder attention.

    python examples/reverse_task.py [--steps 400] [--seed 0]
"""

from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from aiayn import ModelConfig
from aiayn.config import EOS_ID, PAD_ID
from aiayn.data.tasks import FIRST_SYMBOL, symbol_task
from aiayn.decoding import greedy
from aiayn.model import Transformer


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400, help="training steps (default 400)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    n_symbols = 10
    config = ModelConfig(
        vocab_size=FIRST_SYMBOL + n_symbols, d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
        d_ff=256, dropout=0.0,
    )  # fmt: skip
    model = Transformer(config)
    print(f"model: {sum(p.numel() for p in model.parameters()):,} parameters, {config}")
    optimizer = torch.optim.Adam(model.parameters(), betas=(0.9, 0.98), eps=1e-9)  # paper §5.3
    data = torch.Generator().manual_seed(args.seed)
    start = time.perf_counter()
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:  # §5.3's warmup then inverse-sqrt decay, compressed to 50 steps
            group["lr"] = 1e-3 * min(step / 50, (50 / step) ** 0.5)
        src, tgt = symbol_task("reverse", 128, data, n_symbols=n_symbols)
        logits = model(src, tgt[:, :-1])  # teacher forcing: predict tgt[1:] from tgt[:-1]
        loss = F.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD_ID)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            print(f"step {step:4d}  loss {loss.item():.4f}  ({time.perf_counter() - start:.1f} s)")

    model.eval()
    src, _ = symbol_task("reverse", 500, torch.Generator().manual_seed(10_000 + args.seed), n_symbols=n_symbols)
    out = greedy(model, src, max_len=src.shape[1] + 1)
    sources = [s[(s != PAD_ID) & (s != EOS_ID)].tolist() for s in src]
    exact = sum(o == s[::-1] for o, s in zip(out, sources, strict=True))
    for s, o in list(zip(sources, out, strict=True))[:5]:
        print(f"  {s} -> {o}")
    print(f"exact reversals on 500 new sequences: {exact}/500")


if __name__ == "__main__":
    main()
