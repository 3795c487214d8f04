"""Hugging Face Marian trained beside aiayn on equal terms: the same data, tokenizer, batches and time budget.

Reads an aiayn config (the model's shape, dropout, data files, optim and train settings) and the tokenizer an aiayn
run of that config trained, builds aiayn's model of that config and converts it with `aiayn.interop.hf.to_marian` into
`transformers.MarianMTModel` (the same shape and the same initial weights),
and trains it with aiayn's token-budget batches (`aiayn.data.batching`), Adam(0.9, 0.98, 1e-9), aiayn's learning
rate function and label-smoothed cross-entropy, in the config's precision, for `--minutes` of training: the steps
are planned from the measured time of steps 11-50, as `train.max_steps 0` plans aiayn's, so the schedule ends with
the budget. Then it decodes the validation set with `generate` (greedy and beam) and scores it with aiayn's metric
code (sacreBLEU, the zh tokenizer for Chinese).

    pip install transformers     # only this benchmark needs it
    python benchmarks/bench_marian_train.py --config configs/tatoeba-en-zh.yaml \
        --tokenizer runs/tatoeba-en-zh/tokenizer.json --minutes 60 --json benchmarks/out/marian-tatoeba.json
"""

from __future__ import annotations

import argparse
import json
import math
import time
from contextlib import nullcontext

import numpy as np
import torch
import torch.nn.functional as F

from aiayn.config.run import RunConfig, load_yaml, merge, parse_overrides
from aiayn.data.batching import AIAYN_IDS, TokenRows, collate, token_batches
from aiayn.evaluate import translation_scores
from aiayn.machine import recommended_precision
from aiayn.tokenizer import Tokenizer
from aiayn.train.optim import learning_rate

PAD, BOS, EOS = AIAYN_IDS.pad, AIAYN_IDS.bos, AIAYN_IDS.eos
WARM, TIMED, MARGIN = 10, 40, 0.97  # as aiayn.train.budget


def read_pairs(src_path: str, tgt_path: str, tok: Tokenizer, longest: int) -> TokenRows:
    """The pairs of two line-aligned files, encoded, without the empty or over-long ones (aiayn's filter)."""
    with open(src_path, encoding="utf-8") as f:
        src_lines = f.read().splitlines()
    with open(tgt_path, encoding="utf-8") as f:
        tgt_lines = f.read().splitlines()
    src, tgt = tok.encode_batch(src_lines), tok.encode_batch(tgt_lines)
    # specials counted, as aiayn counts them: src + EOS, BOS + tgt + EOS
    keep = [
        i for i in range(len(src)) if src[i] and tgt[i] and len(src[i]) + 1 <= longest and len(tgt[i]) + 2 <= longest
    ]
    return TokenRows([src[i] for i in keep], [tgt[i] for i in keep])


def precision(cfg: RunConfig) -> str:
    """The config's train.precision, "auto" resolved as aiayn resolves it on this CPU."""
    return recommended_precision("cpu") if cfg.train.precision == "auto" else cfg.train.precision


def build_marian(cfg: RunConfig) -> torch.nn.Module:
    """aiayn's model of this config, initialised as aiayn initialises it, converted by aiayn.interop.to_marian:
    both engines start from the same weights and the same shape (cfg.model, its vocab_size set)."""
    from aiayn.interop.hf import to_marian
    from aiayn.model import Transformer

    return to_marian(Transformer(cfg.model))


def train(model, cfg: RunConfig, pairs: TokenRows, minutes: float, log) -> dict:
    """Train for `minutes` of wall time; returns the steps, the minutes and the target tokens a second."""
    optimizer = torch.optim.Adam(
        model.parameters(), lr=0.0, betas=(cfg.optim.beta1, cfg.optim.beta2), eps=cfg.optim.eps
    )
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if precision(cfg) == "bf16" else nullcontext()
    src_lengths, tgt_lengths = pairs.src_lengths, pairs.tgt_lengths
    max_steps, step, epoch, start, timing, loss_sum, tokens = 0, 0, 0, time.perf_counter(), None, 0.0, 0
    model.train()
    while True:
        for indices in token_batches(src_lengths, tgt_lengths, cfg.train.max_tokens, cfg.train.seed, epoch):
            src, tgt = collate(pairs, indices)  # src (B, S): ids + EOS; tgt (B, T): BOS + ids + EOS
            lr = learning_rate(step + 1, cfg.optim, cfg.model.d_model, max(max_steps, step + 1))
            for group in optimizer.param_groups:
                group["lr"] = lr
            with autocast:
                logits = model(
                    input_ids=src,
                    attention_mask=src != PAD,
                    decoder_input_ids=tgt[:, :-1],
                    decoder_attention_mask=tgt[:, :-1] != PAD,
                ).logits  # (B, T-1, vocab)
            loss = F.cross_entropy(
                logits.float().flatten(0, 1),
                tgt[:, 1:].flatten(),
                ignore_index=PAD,
                label_smoothing=cfg.optim.label_smoothing,
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_norm or math.inf)
            optimizer.step()
            step += 1
            loss_sum, tokens = loss_sum + loss.item(), tokens + int((tgt[:, 1:] != PAD).sum())
            seconds = time.perf_counter() - start
            if step == WARM:
                timing = seconds
            elif step == WARM + TIMED:  # plan the steps that fill the budget, as aiayn's train.max_steps 0
                per_step = (seconds - timing) / TIMED
                max_steps = step + int(MARGIN * max(minutes * 60 - seconds, 0) / per_step)
                log(f"max_steps {max_steps:,} (steps {WARM + 1}-{step} took {per_step:.3f} s each)")
            if step % cfg.train.log_every == 0:
                log(
                    f"step {step:7d}  loss {loss_sum / cfg.train.log_every:.4f}  lr {lr:.3e}  "
                    f"{tokens / seconds:,.0f} target tok/s (mean)"
                )
                loss_sum = 0.0
            if (max_steps and step >= max_steps) or seconds >= minutes * 60:
                return {"steps": step, "minutes": seconds / 60, "target_tokens_per_s": tokens / seconds}
        epoch += 1


@torch.no_grad()
def decode(model, tok: Tokenizer, sources: list[str], beam: int) -> list[str]:
    """Translations of `sources` with `generate`, 64 sentences a batch, at most source length + 50 new tokens."""
    model.eval()
    out: list[str] = []
    for i in range(0, len(sources), 64):
        rows = [ids + [EOS] for ids in tok.encode_batch(sources[i : i + 64])]
        width = max(map(len, rows))
        src = torch.tensor([r + [PAD] * (width - len(r)) for r in rows])  # (B, S)
        ids = model.generate(
            input_ids=src,
            attention_mask=src != PAD,
            num_beams=beam,
            do_sample=False,
            max_new_tokens=width + 50,
            decoder_start_token_id=BOS,
            eos_token_id=EOS,
            pad_token_id=PAD,
            suppress_tokens=[PAD, BOS],
            use_cache=True,
        )
        out.extend(tok.decode_batch(ids.tolist()))
    return out


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", required=True, help="an aiayn seq2seq config (YAML)")
    p.add_argument("--tokenizer", required=True, help="the tokenizer.json an aiayn run of that config trained")
    p.add_argument("--minutes", type=float, required=True, help="training wall time")
    p.add_argument("--beam", type=int, default=4)
    p.add_argument("--json", help="also write the results here")
    args, extra = p.parse_known_args(argv)  # the rest: config overrides, --section.key value, as aiayn train takes
    tok = Tokenizer.load(args.tokenizer)
    cfg = RunConfig.from_dict(merge(load_yaml(args.config), parse_overrides(extra)), vocab_size=tok.vocab_size)
    torch.manual_seed(cfg.train.seed)
    np.random.seed(cfg.train.seed)
    pairs = read_pairs(cfg.data.train_src, cfg.data.train_tgt, tok, cfg.data.max_example_tokens)
    model = build_marian(cfg)
    params = sum(p.numel() for p in model.parameters())
    print(f"Marian: {params:,} parameters; {len(pairs):,} training pairs; precision {precision(cfg)}", flush=True)
    result = {
        "engine": "hf-marian",
        "parameters": params,
        "config": args.config,
        "torch": torch.__version__,
        **train(model, cfg, pairs, args.minutes, lambda line: print(line, flush=True)),
    }
    with open(cfg.data.valid_src, encoding="utf-8") as f:
        sources = f.read().splitlines()
    with open(cfg.data.valid_tgt, encoding="utf-8") as f:
        references = f.read().splitlines()
    for beam in sorted({1, args.beam}):
        started = time.perf_counter()
        scores = translation_scores(decode(model, tok, sources, beam), references)
        result[f"beam{beam}"] = {**scores, "seconds": round(time.perf_counter() - started, 2)}
        print(
            f"beam {beam}: BLEU {scores['bleu']:.2f}  chrF {scores['chrf']:.2f}  ({scores['bleu_signature']})",
            flush=True,
        )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
