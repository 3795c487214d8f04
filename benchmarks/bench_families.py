"""Issue 19's claims about the model families, measured: the Transformer against recurrent encoder-decoders.

1. parallelism:   training target tokens/s of the Transformer, LSTM, GRU and RNN families at ~2.35 M parameters
                  each on Multi30k shapes, and the implied time per Multi30k epoch;
2. bottleneck:    exact match against sequence length on the reverse task, for the LSTM without attention (the
                  fixed vector C), the LSTM with additive attention and the Transformer, equal steps;
3. equal time:    Multi30k val sacreBLEU (beam 4) for each family after the same wall time (`aiayn train`);
4. gradients:     ||d loss / d h_t|| against the distance to the loss, for RNN and LSTM encoders without attention,
                  at initialisation and after training.

Claims 2 and 4 run their own small training loop (the built-in reverse task, torch.optim.Adam, the trainer's
label-smoothed loss `linear_label_smoothed_loss` with smoothing 0, gradient norm clipped to 1); claims 1 and 3 use
what `aiayn train` uses. Every claim prints one JSON object and a verdict; `--out DIR` also writes
DIR/claim<N>.json and the pictures (drawn by aiayn.viz_curves, which redraws them from the JSON as well).

    python benchmarks/bench_families.py --claims 1,2,4 --out bench-families  # ~2 + ~22 + ~3 min on 2 idle cores
    python benchmarks/bench_families.py --claims 3 --out bench-families      # 4 x (20 min + ~2): ~90 min
    python benchmarks/bench_families.py --claims 2 --steps 100 --lengths 8,16     # a smoke test
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from functools import cache
from pathlib import Path

import torch

from aiayn.config import PAD_ID, ModelConfig
from aiayn.data.tasks import FIRST_SYMBOL, symbol_task
from aiayn.decoding import greedy_search
from aiayn.model import build, use_kernels
from aiayn.train.loss import linear_label_smoothed_loss
from aiayn.train.precision import kernels_for

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_model import aiayn_version, busy_cpu_seconds  # noqa: E402  (the same machine-load probe as bench_model)

DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "multi30k"
REPO = Path(__file__).resolve().parents[1]
VOCAB = 8000
MULTI30K_PAIRS = 29_000
CONTENDED = 0.2  # cores kept busy by other processes above which a timed step counts as disturbed (bench_model)

# Claim 1 and 3: the four families at about the Transformer's parameter count. The Transformer is
# configs/multi30k-tiny.yaml (2,349,056 parameters with vocab 8000); each recurrent family is a bidirectional 1+1
# layer encoder-decoder with additive attention, d_model chosen to land within 0.3 % of that (printed).
FAMILIES = {
    "transformer": dict(arch="seq2seq", d_model=128, n_heads=4, n_encoder_layers=4, n_decoder_layers=4, d_ff=256),
    "lstm": dict(arch="rnn", rnn_cell="lstm", d_model=170),
    "gru": dict(arch="rnn", rnn_cell="gru", d_model=184),
    "rnn": dict(arch="rnn", rnn_cell="rnn", d_model=214),
}
# The Transformer's figure that claim 3 is set beside (benchmarks/RESULTS.md, Multi30k run 6).
REFERENCE_90_MIN = {
    "source": "benchmarks/RESULTS.md, Multi30k en->de run 6 (2026-11-27, configs/multi30k-tiny.yaml, fp32)",
    "machine": "the project's 2-core CPU machine of run 6, 2 threads, nothing else running",
    "bleu_beam4_at_81_min": 40.36, "bleu_greedy_at_18_8_min": 32.49, "bleu_greedy_at_25_5_min": 34.69,
}  # fmt: skip
RNN_DEFAULTS = dict(rnn_attention="additive", rnn_bidirectional=True, n_encoder_layers=1, n_decoder_layers=1)

# Claim 2: small models of the reverse task (vocab 4 specials + 10 symbols). Peak learning rates: 1e-3 suits the
# post-LN Transformer after warm-up; the recurrent models learn faster at 2e-3 and are stable there with clipping.
TASK_VOCAB = FIRST_SYMBOL + 10
BOTTLENECK = {
    "lstm, no attention": (dict(arch="rnn", rnn_cell="lstm", rnn_attention="none", d_model=128), 2e-3),
    "lstm, additive": (dict(arch="rnn", rnn_cell="lstm", rnn_attention="additive", d_model=128), 2e-3),
    "transformer": (dict(arch="seq2seq", d_model=128, n_heads=4, n_encoder_layers=2, n_decoder_layers=2,
                         d_ff=256), 1e-3),
}  # fmt: skip


def model_config(spec: dict, vocab: int, dropout: float) -> ModelConfig:
    fields = {**(RNN_DEFAULTS if spec["arch"] == "rnn" else {}), **spec}
    return ModelConfig(vocab_size=vocab, dropout=dropout, max_len=256, **fields)


def n_params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def loss_of(model, src: torch.Tensor, tgt: torch.Tensor, smoothing: float) -> torch.Tensor:
    """Mean label-smoothed loss per target token, as the trainer computes it: tgt (B, T + 1) starts with BOS; the
    decoder reads tgt[:, :-1] and predicts tgt[:, 1:]."""
    hidden = model.hidden(src, tgt[:, :-1])  # (B, T, D)
    loss, _, tokens = linear_label_smoothed_loss(hidden, model.output_weight, model.output_bias, tgt[:, 1:],
                                                 smoothing, PAD_ID)  # fmt: skip
    return loss / max(tokens, 1)


def adam_step(model, optimizer, src, tgt, smoothing: float, clip: float = 0.0) -> float:
    optimizer.zero_grad(set_to_none=True)
    loss = loss_of(model, src, tgt, smoothing)
    loss.backward()
    if clip:
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
    optimizer.step()
    return loss.item()


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------ claim 1: throughput


@cache
def multi30k_tokenizer():
    """An 8,000-token BPE trained on Multi30k train.en + train.de, as configs/multi30k-tiny.yaml trains one."""
    from aiayn.tokenizer_train import train_tokenizer_from_files

    return train_tokenizer_from_files([DATA / "train.en", DATA / "train.de"], VOCAB)


def multi30k_target_tokens() -> tuple[int, str]:
    """Target tokens of one Multi30k epoch (train.de, EOS included) and how the number was found: counted with
    `multi30k_tokenizer`, or, without the data, estimated as 29,000 x 14 (bench_model's Multi30k shape)."""
    if not (DATA / "train.de").exists():
        return MULTI30K_PAIRS * 14, "estimated: 29,000 pairs x 14 target tokens (no ../shared/data/multi30k)"
    tokenizer = multi30k_tokenizer()
    lines = (DATA / "train.de").read_text(encoding="utf-8").splitlines()
    total = sum(len(tokenizer.encode(line)) + 1 for line in lines)  # + EOS, which the decoder predicts too
    return total, f"counted: train.de ({len(lines):,} lines) with an 8,000-token BPE of train.en + train.de, + EOS"


def time_families(args, device: torch.device) -> dict[str, dict]:
    """Build every family with its own Adam and fixed batch; warm up; then time steps family by family in turns,
    so that a change of the machine's speed hits all alike. Returns per family its step times and loads."""
    batch, length = (int(n) for n in args.shape.split("x"))
    generator = torch.Generator().manual_seed(0)
    src = torch.randint(FIRST_SYMBOL, VOCAB, (batch, length), generator=generator).to(device)  # (B, S)
    tgt = torch.randint(FIRST_SYMBOL, VOCAB, (batch, length + 1), generator=generator).to(device)  # (B, T + 1)
    runs = {}
    for name in args.families:
        torch.manual_seed(0)
        model = build(model_config(FAMILIES[name], VOCAB, dropout=0.3)).to(device).train()
        use_kernels(model, kernels_for(device, "fp32", "fp32"))  # what the trainer hands a model in fp32
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
        runs[name] = {"model": model, "optimizer": optimizer, "params": n_params(model), "times": [], "loads": []}
        print(f"claim 1: {name}: {runs[name]['params']:,} parameters", file=sys.stderr)
    for _ in range(args.warmup):
        for run in runs.values():
            adam_step(run["model"], run["optimizer"], src, tgt, 0.1)
    for _ in range(args.rounds):
        for run in runs.values():
            synchronize(device)
            busy, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
            adam_step(run["model"], run["optimizer"], src, tgt, 0.1)
            synchronize(device)
            seconds = time.perf_counter() - start
            run["times"].append(seconds)
            run["loads"].append(max(busy_cpu_seconds() - busy - (time.process_time() - own), 0.0) / seconds)
    return runs


def claim_throughput(args, device: torch.device) -> dict:
    batch, length = (int(n) for n in args.shape.split("x"))
    epoch_tokens, how = multi30k_target_tokens()
    runs = time_families(args, device)
    families = {}
    for name, run in runs.items():
        quiet = [t for t, load in zip(run["times"], run["loads"], strict=True) if load <= CONTENDED]
        median = statistics.median(quiet or run["times"])
        tokens_per_s = batch * length / median
        families[name] = {"params": run["params"], "d_model": FAMILIES[name]["d_model"], "median_step_s": median,
                          "target_tokens_per_s": tokens_per_s, "epoch_minutes": epoch_tokens / tokens_per_s / 60,
                          "quiet_steps": len(quiet), "contended": not quiet, "step_s": run["times"],
                          "others_load": run["loads"]}  # fmt: skip
    return {"claim": 1, "shape": args.shape, "device": str(device), "threads": torch.get_num_threads(),
            "rounds": args.rounds, "epoch_target_tokens": epoch_tokens, "epoch_tokens_how": how,
            "families": families}  # fmt: skip


def verdict_throughput(result: dict) -> str:
    fam = result["families"]
    if "transformer" not in fam:
        return "claim 1: no Transformer measured, no verdict"
    base = fam["transformer"]["target_tokens_per_s"]
    others = {n: base / f["target_tokens_per_s"] for n, f in fam.items() if n != "transformer"}
    held = all(r > 1 for r in others.values())
    ratios = ", ".join(f"{r:.2f}x {n}" for n, r in others.items())
    return (f"claim 1 {'held' if held else 'did not hold'}: the Transformer trains at {base:,.0f} target tokens/s, "
            f"{ratios} (Transformer / family, at equal parameters)")  # fmt: skip


# ------------------------------------------------------------------------------------------ claim 2: bottleneck


def lr_at(step: int, steps: int, peak: float) -> float:
    """Linear warm-up over the first 10 % of the steps, then half a cosine down to peak / 10."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_reverse(model, peak_lr: float, length: int, steps: int, batch: int, seed: int, device) -> set[bytes]:
    """Train on fresh reverse sequences of exactly `length` symbols; returns the training sequences seen (as
    bytes), so that evaluation can use unseen ones only."""
    optimizer = torch.optim.Adam(model.parameters(), lr=peak_lr, betas=(0.9, 0.98), eps=1e-9)
    generator = torch.Generator().manual_seed(seed)
    seen: set[bytes] = set()
    model.train()
    for step in range(steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr)
        src, tgt = symbol_task("reverse", batch, generator, min_len=length, max_len=length)
        seen.update(row.numpy().tobytes() for row in src)
        adam_step(model, optimizer, src.to(device), tgt.to(device), 0.0, clip=1.0)
    return seen


def exact_match(model, length: int, n: int, seen: set[bytes], seed: int, device) -> float:
    """Greedy exact match on n reverse sequences of `length` symbols not among the training ones."""
    generator = torch.Generator().manual_seed(seed)
    src, tgt = symbol_task("reverse", 2 * n, generator, min_len=length, max_len=length)
    unseen = torch.tensor([row.numpy().tobytes() not in seen for row in src])
    src, tgt = src[unseen][:n], tgt[unseen][:n]  # (n, L + 1), (n, L + 2)
    hyps = greedy_search(model, src.to(device), max_len=length + 1)
    answers = tgt[:, 1 : length + 1].tolist()  # the answer without BOS and EOS
    return sum(h.tokens == a for h, a in zip(hyps, answers, strict=True)) / len(answers)


def claim_bottleneck(args, device: torch.device) -> dict:
    lengths = [int(n) for n in args.lengths.split(",")]
    accuracy: dict[str, list[float]] = {name: [] for name in BOTTLENECK}
    seconds: dict[str, list[float]] = {name: [] for name in BOTTLENECK}
    params = {}
    for length in lengths:
        for name, (spec, peak_lr) in BOTTLENECK.items():
            torch.manual_seed(args.seed)
            model = build(model_config(spec, TASK_VOCAB, dropout=0.0)).to(device)
            params[name] = n_params(model)
            start = time.perf_counter()
            seen = train_reverse(model, peak_lr, length, args.steps, args.batch, args.seed, device)
            seconds[name].append(time.perf_counter() - start)
            accuracy[name].append(exact_match(model, length, args.eval_n, seen, args.seed + 1000, device))
            print(f"claim 2: L={length} {name}: exact match {accuracy[name][-1]:.3f} "
                  f"({seconds[name][-1]:.0f} s training)", file=sys.stderr)  # fmt: skip
    return {"claim": 2, "task": "reverse, 10 symbols", "lengths": lengths, "steps": args.steps, "batch": args.batch,
            "eval_sequences": args.eval_n, "params": params, "accuracy": accuracy, "train_seconds": seconds,
            "title": f"reverse task: greedy exact match, {args.steps} steps x {args.batch} sequences"}  # fmt: skip


def verdict_bottleneck(result: dict) -> str:
    acc, lengths = result["accuracy"], result["lengths"]
    fixed, additive, transformer = acc["lstm, no attention"], acc["lstm, additive"], acc["transformer"]
    # The controlled comparison is the same LSTM with and without attention. The claim: the fixed vector falls
    # behind as sequences grow, so the gap at the longest length is large (>= 20 points) and larger than at the
    # shortest. The Transformer is reported beside it.
    gaps = [a - f for f, a in zip(fixed, additive, strict=True)]
    held = gaps[-1] >= 0.2 and gaps[-1] > gaps[0]
    rows = ", ".join(f"L={n}: {100 * f:.0f}/{100 * a:.0f}/{100 * t:.0f}"
                     for n, f, a, t in zip(lengths, fixed, additive, transformer, strict=True))  # fmt: skip
    return (f"claim 2 {'held' if held else 'did not hold'}: exact match % (no attention / additive / Transformer) "
            f"{rows}; the fixed vector trails the LSTM with attention by {100 * gaps[-1]:.0f} points at "
            f"L={lengths[-1]} (vs {100 * gaps[0]:.0f} at L={lengths[0]})")  # fmt: skip


# ----------------------------------------------------------------------------------------- claim 4: gradients


def encoder_state_gradients(model, src: torch.Tensor, tgt: torch.Tensor) -> list[float]:
    """||d loss / d h_t|| for every source position t, averaged over the batch: the encoder (one unidirectional
    layer) is run step by step, so that each h_t is a tensor of the graph whose gradient includes every path
    through later steps; without attention, that is the only way the loss reaches h_t for t < S - 1."""
    rnn = model.encoder.rnn
    x = model.encoder.embed(src)  # (B, S, D)
    state, states = None, []
    for t in range(x.shape[1]):
        _, state = rnn(x[:, t : t + 1], state)  # h (or (h, c)), each (1, B, H)
        h = state[0] if isinstance(state, tuple) else state
        h.retain_grad()
        states.append(h)
    memory = torch.cat([h.transpose(0, 1) for h in states], dim=1)  # S x (1, B, H) -> (B, S, H)
    with torch.no_grad():  # the step-by-step encoder is the model's own: same memory as the fused one
        torch.testing.assert_close(memory, model.encode(src), rtol=1e-4, atol=1e-5)
    logits = model.decode(tgt[:, :-1], memory, src != PAD_ID)  # (B, T, V)
    loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), tgt[:, 1:].flatten(), ignore_index=PAD_ID)
    loss.backward()
    return [h.grad[0].norm(dim=-1).mean().item() for h in states]  # (1, B, H) -> (B,) -> mean


def claim_gradients(args, device: torch.device) -> dict:
    length = args.grad_length
    generator = torch.Generator().manual_seed(args.seed + 2000)
    src, tgt = symbol_task("reverse", args.batch, generator, min_len=length, max_len=length)
    src, tgt = src.to(device), tgt.to(device)
    norms, params, losses = {}, {}, {}
    for cell in ("rnn", "lstm"):
        torch.manual_seed(args.seed)
        spec = dict(arch="rnn", rnn_cell=cell, rnn_attention="none", rnn_bidirectional=False, d_model=128)
        model = build(model_config(spec, TASK_VOCAB, dropout=0.0)).to(device).eval()
        params[cell] = n_params(model)
        norms[cell] = {"init": encoder_state_gradients(model, src, tgt)}
        train_reverse(model, 2e-3, length, args.grad_steps, args.batch, args.seed, device)
        model.eval()
        model.zero_grad(set_to_none=True)
        norms[cell]["trained"] = encoder_state_gradients(model, src, tgt)
        with torch.no_grad():
            losses[cell] = loss_of(model, src, tgt, 0.0).item()
        print(f"claim 4: {cell}: trained {args.grad_steps} steps, loss {losses[cell]:.3f}", file=sys.stderr)
    S = src.shape[1]
    # norms[cell][stage][t] is at source position t; distance S - t counts the steps from h_t to the last state
    # (1 for the last one, which the bridge reads), so the lists are reversed to run from distance 1 to S.
    norms = {c: {s: v[::-1] for s, v in stages.items()} for c, stages in norms.items()}
    return {"claim": 4, "task": f"reverse, length {length}", "source_positions": S, "distance": list(range(1, S + 1)),
            "train_steps": args.grad_steps, "params": params, "trained_loss": losses, "norms": norms,
            "title": f"d loss / d h_t, encoder without attention, reverse length {length}"}  # fmt: skip


def decay(norms: list[float]) -> float:
    """How many times smaller the gradient is at the largest distance than at distance 1 (inf if it vanished)."""
    return norms[0] / norms[-1] if norms[-1] > 0 else math.inf


def verdict_gradients(result: dict) -> str:
    n, far = result["norms"], result["distance"][-1]
    parts, held = [], True
    for stage in ("init", "trained"):
        rnn, lstm = decay(n["rnn"][stage]), decay(n["lstm"][stage])
        held &= rnn > lstm
        parts.append(f"{stage}: RNN {rnn:.2g}x, LSTM {lstm:.2g}x")
    return (
        f"claim 4 {'held' if held else 'did not hold'}: the gradient shrinks from distance 1 to {far} by "
        f"{'; '.join(parts)} (held = the plain RNN's shrinks more, at init and after training)"
    )


# ------------------------------------------------------------------------------------------ claim 3: equal time


def family_command(name: str) -> tuple[list[str], str]:
    """`aiayn train` arguments that pick the family's config: configs/multi30k-<family>.yaml when the repository
    has one (the Transformer's is multi30k-tiny.yaml), else the tiny config with the FAMILIES sizes as overrides."""
    tiny = REPO / "configs" / "multi30k-tiny.yaml"
    own = tiny if name == "transformer" else REPO / "configs" / f"multi30k-{name}.yaml"
    if own.exists():
        return ["--config", str(own)], own.name
    spec = {**RNN_DEFAULTS, **FAMILIES[name]}
    overrides = [f"--model.{k}={str(v).lower() if isinstance(v, bool) else v}" for k, v in spec.items()]
    return ["--config", str(tiny), *overrides], f"{tiny.name} with {' '.join(overrides)}"


def last_step(run: Path) -> int | None:
    """The last training step logged in the run's metrics.jsonl."""
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    steps = [s for s in steps if isinstance(s, int)]
    return max(steps) if steps else None


def val_files(work: Path, n: int) -> tuple[Path, Path]:
    """Multi30k val, or its first n sentences written into the work folder."""
    if not n:
        return DATA / "val.en", DATA / "val.de"
    paths = work / "val.en", work / "val.de"
    for path, lang in zip(paths, ("en", "de"), strict=True):
        path.write_text("\n".join((DATA / f"val.{lang}").read_text(encoding="utf-8").splitlines()[:n]) + "\n")
    return paths


def train_and_score(name: str, args, work: Path, tokenizer: Path, val: tuple[Path, Path]) -> dict:
    """One family: `aiayn train` for args.minutes of wall time (evaluation during training off and its closing
    evaluation loss only: the time goes to training), then `aiayn evaluate --beam 4 --alpha 0.6` of its last
    checkpoint on val."""
    run = work / name
    command, how = family_command(name)
    train = [sys.executable, "-m", "aiayn", "train", *command, f"--train.max_minutes={args.minutes}",
             f"--train.out_dir={run}", f"--tokenizer.path={tokenizer}", f"--train.threads={args.threads}",
             "--train.eval_every=1000000", "--train.save_every=1000000", "--train.eval_bleu_sentences=0"]  # fmt: skip
    start = time.perf_counter()
    subprocess.run(train, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    train_s = time.perf_counter() - start
    evaluate = [sys.executable, "-m", "aiayn", "evaluate", "--model", str(run / "last"), "--src", str(val[0]),
                "--ref", str(val[1]), "--beam", "4", "--alpha", "0.6", "--json"]  # fmt: skip
    done = subprocess.run(evaluate, cwd=REPO, check=True, capture_output=True, text=True)
    scores = json.loads(done.stdout.strip().splitlines()[-1])
    print(f"claim 3: {name}: BLEU {scores['bleu']:.2f} after {train_s / 60:.1f} min", file=sys.stderr)
    return {"config": how, "train_wall_s": train_s, "steps": last_step(run), "bleu": scores["bleu"],
            "bleu_lc": scores["bleu_lc"], "chrf": scores["chrf"], "sentences": scores["sentences"],
            "bleu_signature": scores["bleu_signature"]}  # fmt: skip


def claim_quality(args, device: torch.device) -> dict | None:
    if not (DATA / "train.en").exists():
        print("claim 3 skipped: it needs ../shared/data/multi30k (Multi30k train and val)", file=sys.stderr)
        return None
    work = Path(tempfile.mkdtemp(prefix="bench-families-")) if args.work is None else args.work
    work.mkdir(parents=True, exist_ok=True)
    try:
        # One tokenizer for all families, trained before any clock starts, as configs/multi30k-tiny.yaml would.
        tokenizer = work / "tokenizer.json"
        multi30k_tokenizer().save(tokenizer)
        val = val_files(work, args.val_sentences)
        families = {name: train_and_score(name, args, work, tokenizer, val) for name in args.families}
    finally:
        if args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    return {"claim": 3, "minutes": args.minutes, "threads": args.threads, "families": families,
            "reference": REFERENCE_90_MIN}  # fmt: skip


def verdict_quality(result: dict) -> str:
    bleu = {n: r["bleu"] for n, r in result["families"].items() if r.get("bleu") is not None}
    if "transformer" not in bleu:
        return "claim 3: no Transformer BLEU, no verdict"
    others = {n: b for n, b in bleu.items() if n != "transformer"}
    held = all(bleu["transformer"] > b for b in others.values())
    diffs = ", ".join(f"{bleu['transformer'] - b:+.2f} over {n}" for n, b in others.items())
    return (
        f"claim 3 {'held' if held else 'did not hold'}: after {result['minutes']} minutes each, Transformer "
        f"{bleu['transformer']:.2f} BLEU (beam 4), {diffs}; for scale, RESULTS.md's 90-minute run: "
        f"{REFERENCE_90_MIN['bleu_beam4_at_81_min']} (beam 4, 81 min, {REFERENCE_90_MIN['machine']})"
    )


# ------------------------------------------------------------------------------------------------------ main


CLAIMS = {1: (claim_throughput, verdict_throughput), 2: (claim_bottleneck, verdict_bottleneck),
          3: (claim_quality, verdict_quality), 4: (claim_gradients, verdict_gradients)}  # fmt: skip


def draw(claim: int, result: dict, out: Path) -> None:
    from aiayn import viz_curves

    if claim == 1:
        values = {n: f["target_tokens_per_s"] for n, f in result["families"].items()}
        viz_curves.plot_bars(values, out / "claim1-throughput.png", "target tokens/s",
                             f"training throughput, {result['shape']}, {result['device']}")  # fmt: skip
    elif claim == 2:
        viz_curves.plot_accuracy_by_length(result, out / "claim2-accuracy-by-length.png")
    elif claim == 3:
        values = {n: r["bleu"] for n, r in result["families"].items() if r.get("bleu") is not None}
        viz_curves.plot_bars(values, out / "claim3-bleu.png", "val sacreBLEU (beam 4)",
                             f"Multi30k after {result['minutes']} minutes each")  # fmt: skip
    else:
        viz_curves.plot_gradient_norms(result, out / "claim4-gradient-norms.png")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--claims", default="1,2,3,4", help="which claims to measure, e.g. 1,2,4 (default all)")
    p.add_argument("--out", type=Path, default=None, help="also write claim<N>.json and the pictures here")
    p.add_argument("--device", default="cpu", help="cpu or cuda (claims 1, 2, 4; claim 3 uses aiayn's default)")
    p.add_argument("--threads", type=int, default=2, help="torch CPU threads (default 2)")
    p.add_argument("--seed", type=int, default=0)
    g = p.add_argument_group("claim 1: throughput")
    g.add_argument("--shape", default="290x14", help="BxL: sentences per batch x tokens per source and target")
    g.add_argument("--families", type=lambda s: s.split(","), default=list(FAMILIES), help="default all four")
    g.add_argument("--warmup", type=int, default=3, help="warm-up steps per family (default 3)")
    g.add_argument("--rounds", type=int, default=30, help="timed steps per family, in turns (default 30)")
    g = p.add_argument_group("claim 2: bottleneck")
    g.add_argument("--lengths", default="8,16,32,64,128")
    g.add_argument("--steps", type=int, default=400, help="training steps per model and length (default 400)")
    g.add_argument("--batch", type=int, default=64, help="sequences per step (claims 2 and 4; default 64)")
    g.add_argument("--eval-n", type=int, default=200, help="unseen sequences for exact match (default 200)")
    g = p.add_argument_group("claim 3: quality at equal time")
    g.add_argument("--minutes", type=float, default=20.0, help="training wall time per family (default 20)")
    g.add_argument("--val-sentences", type=int, default=0, help="val sentences to score (default 0 = all 1,014)")
    g.add_argument("--work", type=Path, default=None, help="run folders here (default: a temporary folder, removed)")
    g = p.add_argument_group("claim 4: gradients through time")
    g.add_argument("--grad-length", type=int, default=64, help="reverse sequence length (default 64)")
    g.add_argument("--grad-steps", type=int, default=600, help="training steps before the second measure")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
    for claim in (int(c) for c in args.claims.split(",")):
        measure, verdict = CLAIMS[claim]
        start = time.perf_counter()
        result = measure(args, device)
        if result is None:
            continue
        result.update(aiayn=aiayn_version(), torch=torch.__version__, seconds=round(time.perf_counter() - start, 1))
        result["verdict"] = verdict(result)
        print(json.dumps(result))
        print(result["verdict"], file=sys.stderr)
        if args.out:
            (args.out / f"claim{claim}.json").write_text(json.dumps(result, indent=1) + "\n")
            draw(claim, result, args.out)


if __name__ == "__main__":
    main()
