"""Training-step throughput of aiayn's Transformer against two independent implementations of the same model.

One training step = forward + label-smoothed cross-entropy + backward + Adam step, timed for three engines with
identical shapes:

- aiayn:  aiayn.model.Transformer(ModelConfig(...)), the model under test;
- torch:  `TorchTransformer` below, the same model built on torch.nn.Transformer (PyTorch's own layers);
- hf:     transformers.MarianMTModel, a widely used post-LN encoder-decoder with the paper's shape.

Each (engine, config, shape, precision) cell runs in a fresh spawned process, so that cells cannot warm each
other's caches or allocators, and so that the process's peak RSS (getrusage ru_maxrss) measures that cell alone.
Peak memory is reported as peak RSS minus the RSS just before the model is built: parameters, gradients, Adam
state, activations and whatever the allocator keeps.

Every engine gets what a real training loop would pass it: padding masks of the source and target (all True here,
as random ids 1..V-1 contain no padding id 0) and a causal decoder. The loss is computed in fp32 from the logits.

The machine may be shared. Steps during which other processes kept more than CONTENDED cores busy are left out
of the figures (more steps are run instead, see run_cell); a figure with no undisturbed step is marked with *.

    python benchmarks/bench_model.py --configs small --shapes 290x14 --steps 3
    python benchmarks/bench_model.py --configs small --shapes 290x14 --precisions fp32 --profile aiayn

Linux only (peak memory is read from /proc and getrusage).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from multiprocessing import get_context

import torch
import torch.nn.functional as F
from torch import nn

VOCAB = 8000
PAD = 0
THREADS = 2
SEED = 0

# Shapes of the two configurations compared: "base" is the paper's base model (Table 3), "small" half as wide
# and half as deep.
CONFIGS: dict[str, dict[str, int]] = {
    "small": {"d_model": 256, "n_layers": 3, "n_heads": 4, "d_ff": 1024},
    "base": {"d_model": 512, "n_layers": 6, "n_heads": 8, "d_ff": 2048},
}
# Warm-up and timed steps per config when --warmup / --steps are not given: enough for a stable median, few
# enough that the default run (both configs, shapes and precisions, three engines: 24 cells) takes about 11
# minutes on 2 quiet cores, where a small step takes ~2 s and a base step 5-14 s.
DEFAULT_STEPS = {"small": 5, "base": 2}
DEFAULT_WARMUP = {"small": 2, "base": 1}
ENGINES = ("aiayn", "torch", "hf")
PRECISIONS = ("fp32", "bf16")
# Cores kept busy by other processes above which a step counts as disturbed. On 2 cores with 2 OpenMP threads a
# busy neighbour costs far more than its share: every parallel region waits for the descheduled thread (we saw
# steps 2-5x slower with one foreign core busy), so disturbed steps are left out of the figures (see run_cell).
CONTENDED = 0.2
MAX_STEPS_FACTOR = 3


@dataclass(frozen=True)
class Cell:
    """One measurement: an engine training one config on one batch shape at one precision."""

    engine: str
    config: str
    batch: int  # sentence pairs per step
    length: int  # tokens per source and per target sentence
    precision: str
    steps: int  # undisturbed timed steps wanted
    warmup: int

    @property
    def shape(self) -> str:
        return f"{self.batch}x{self.length}"


# ----------------------------------------------------------------------------------------------- the three engines


def sinusoidal_table(max_len: int, d_model: int) -> torch.Tensor:
    """The paper's positional encoding (§3.5): sin on even dimensions, cos on odd ones, (max_len, D)."""
    pos = torch.arange(max_len, dtype=torch.float64)[:, None]
    angle = pos / torch.pow(10000.0, torch.arange(0, d_model, 2, dtype=torch.float64) / d_model)
    table = torch.stack((angle.sin(), angle.cos()), dim=-1).flatten(1)  # interleave: sin, cos, sin, cos, ...
    return table.float()


class TorchTransformer(nn.Module):
    """The paper's model on torch.nn.Transformer: scaled shared embedding + sinusoidal positions + dropout,
    post-LN nn.Transformer, and a pre-softmax Linear tied to the embedding.

    Note: nn.Transformer always adds a final LayerNorm after its encoder and its decoder stacks (two LayerNorms
    that aiayn and Marian do not have; a negligible share of the work).
    """

    def __init__(self, d_model: int, n_heads: int, n_layers: int, d_ff: int, max_len: int = 1024) -> None:
        super().__init__()
        self.embed = nn.Embedding(VOCAB, d_model)
        nn.init.normal_(self.embed.weight, std=d_model**-0.5)
        self.scale = math.sqrt(d_model)
        self.register_buffer("pe", sinusoidal_table(max_len, d_model), persistent=False)
        self.dropout = nn.Dropout(0.1)
        self.transformer = nn.Transformer(
            d_model,
            n_heads,
            n_layers,
            n_layers,
            d_ff,
            dropout=0.1,
            activation="relu",
            batch_first=True,
            norm_first=False,
        )

    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.dropout(self.embed(ids) * self.scale + self.pe[: ids.shape[1]])

    def forward(self, src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
        """src (B, S), tgt (B, T) -> logits (B, T, V)."""
        t = tgt.shape[1]
        future = torch.ones(t, t, dtype=torch.bool, device=tgt.device).triu(1)  # True = may NOT attend
        src_pad, tgt_pad = src == PAD, tgt == PAD  # True = padding (nn.Transformer's convention)
        h = self.transformer(
            self._embed(src),
            self._embed(tgt),
            tgt_mask=future,
            src_key_padding_mask=src_pad,
            tgt_key_padding_mask=tgt_pad,
            memory_key_padding_mask=src_pad,
            tgt_is_causal=True,
        )
        return F.linear(h, self.embed.weight)


def build_engine(cell: Cell) -> tuple[nn.Module, Callable[[torch.Tensor, torch.Tensor], torch.Tensor]]:
    """The model of `cell.engine` with the shape of `cell.config`, and a function (src, tgt) -> logits (B, T, V)."""
    c = CONFIGS[cell.config]
    if cell.engine == "aiayn":
        from aiayn.config import ModelConfig
        from aiayn.model import Transformer, use_kernels
        from aiayn.train.linear_path import resolve_gemm, use_onednn_linears
        from aiayn.train.precision import kernels_for

        model = Transformer(
            ModelConfig(
                vocab_size=VOCAB,
                d_model=c["d_model"],
                n_heads=c["n_heads"],
                n_encoder_layers=c["n_layers"],
                n_decoder_layers=c["n_layers"],
                d_ff=c["d_ff"],
                pad_id=PAD,
            )
        )
        # The kernels aiayn's trainer hands a model training on the CPU at this precision (aiayn.train.precision),
        # and its GEMM path (train.gemm auto: oneDNN on AMD CPUs; AIAYN_BENCH_GEMM=mkl|onednn overrides).
        use_kernels(model, kernels_for(torch.device("cpu"), cell.precision, "fp32"))
        if resolve_gemm(os.environ.get("AIAYN_BENCH_GEMM", "auto"), torch.device("cpu"), None) == "onednn":
            use_onednn_linears(model)
        return model, model
    if cell.engine == "torch":
        model = TorchTransformer(c["d_model"], c["n_heads"], c["n_layers"], c["d_ff"])
        return model, model
    if cell.engine == "hf":
        from transformers import MarianConfig, MarianMTModel

        config = MarianConfig(
            vocab_size=VOCAB,
            d_model=c["d_model"],
            encoder_layers=c["n_layers"],
            decoder_layers=c["n_layers"],
            encoder_attention_heads=c["n_heads"],
            decoder_attention_heads=c["n_heads"],
            encoder_ffn_dim=c["d_ff"],
            decoder_ffn_dim=c["d_ff"],
            max_position_embeddings=1024,
            activation_function="relu",
            dropout=0.1,
            attention_dropout=0.0,
            activation_dropout=0.0,
            scale_embedding=True,
            tie_word_embeddings=True,
            share_encoder_decoder_embeddings=True,
            pad_token_id=PAD,
            decoder_start_token_id=PAD,
            use_cache=False,  # no KV cache in training (aiayn and torch build none either)
        )
        model = MarianMTModel._from_config(config, attn_implementation="sdpa")

        def forward(src: torch.Tensor, tgt: torch.Tensor) -> torch.Tensor:
            return model(
                input_ids=src, attention_mask=src != PAD, decoder_input_ids=tgt, decoder_attention_mask=tgt != PAD
            ).logits

        return model, forward
    raise ValueError(f"unknown engine {cell.engine!r}; choose from {', '.join(ENGINES)}")


# ------------------------------------------------------------------------------------------------ one training step


def make_training_step(cell: Cell) -> Callable[[], float]:
    """Build the engine, a fixed random batch and Adam; return a function that runs one training step and
    returns its loss. Seeded, so every engine sees the same token ids."""
    torch.manual_seed(SEED)
    model, forward = build_engine(cell)
    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, betas=(0.9, 0.98), eps=1e-9)
    generator = torch.Generator().manual_seed(SEED)
    src, tgt, labels = (torch.randint(1, VOCAB, (cell.batch, cell.length), generator=generator) for _ in range(3))
    autocast = torch.autocast("cpu", dtype=torch.bfloat16) if cell.precision == "bf16" else nullcontext()

    def step() -> float:
        optimizer.zero_grad(set_to_none=True)
        with autocast:
            logits = forward(src, tgt)
        loss = F.cross_entropy(logits.float().flatten(0, 1), labels.flatten(), ignore_index=PAD, label_smoothing=0.1)
        loss.backward()
        optimizer.step()
        return loss.item()

    return step


def current_rss() -> int:
    """Resident set size of this process now, in bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent busy since boot, from /proc/stat: user, nice, system, irq,
    softirq and steal (the hypervisor giving our cores to someone else); idle and iowait are not busy."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_cell(cell: Cell) -> dict:
    """Warm up, then time training steps one by one until `cell.steps` of them ran undisturbed. Meant to run in
    a fresh process (see main).

    Measures, per step, how many cores other processes kept busy ("others_load"); a step is quiet when that is at
    most CONTENDED. On a busy machine it keeps stepping, up to MAX_STEPS_FACTOR x `cell.steps` steps in all. The
    figures are the median of the quiet steps, or of all steps, flagged "contended", if none was quiet.
    """
    torch.set_num_threads(THREADS)
    rss_before = current_rss()
    step = make_training_step(cell)
    for _ in range(cell.warmup):
        step()
    times, loads, losses, quiet = [], [], [], []
    while len(quiet) < cell.steps and len(times) < MAX_STEPS_FACTOR * cell.steps:
        busy, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
        losses.append(step())
        times.append(time.perf_counter() - start)
        loads.append(max(busy_cpu_seconds() - busy - (time.process_time() - own), 0.0) / times[-1])
        if loads[-1] <= CONTENDED:
            quiet.append(times[-1])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB
    median = statistics.median(quiet or times)
    tokens = cell.batch * cell.length
    return {
        **asdict(cell),
        "step_s": times,
        "others_load": loads,
        "quiet_steps": len(quiet),
        "contended": not quiet,
        "median_step_s": median,
        "tokens_per_s": tokens / median,
        "gflop_per_s": training_flops(cell) / median / 1e9,
        "peak_mib": (peak - rss_before) / 2**20,
        "last_loss": losses[-1],
    }


def training_flops(cell: Cell) -> float:
    """Model FLOPs of one training step, counted analytically (the same number for every engine).

    Counts the matrix multiplications only (2 FLOPs per multiply-add), forward x 3 for forward + backward (the
    backward computes the gradients of both operands of every product). Per layer and token, a Linear of n x m
    weights costs 2nm; attention costs 2 x length x D for QK^T and as much for the weighted sum of V. Causal
    self-attention is counted in full (no halving for the masked half), as is the usual convention. Embeddings,
    norms, softmax, dropout and the optimizer are left out; they are small against the matmuls.
    """
    c = CONFIGS[cell.config]
    d, f, n = c["d_model"], c["d_ff"], c["n_layers"]
    b, s, t = cell.batch, cell.length, cell.length
    encoder_layer = 2 * b * s * (4 * d * d + 2 * d * f) + 4 * b * s * s * d  # Q,K,V,O + FFN; QK^T and AV
    decoder_layer = (
        2 * b * t * (4 * d * d + 2 * d * d + 2 * d * f)  # self-attn Q,K,V,O; cross-attn Q,O; FFN
        + 2 * b * s * 2 * d * d  # cross-attn K,V of the encoder output
        + 4 * b * t * t * d  # causal self-attention
        + 4 * b * t * s * d  # encoder-decoder attention
    )
    output = 2 * b * t * d * VOCAB  # pre-softmax projection
    return 3 * (n * encoder_layer + n * decoder_layer + output)


# ---------------------------------------------------------------------------------------------------- the report


def aiayn_version() -> str:
    """The commit of the aiayn checkout measured, "-dirty" if it has uncommitted changes: the model is being
    optimised while it is benchmarked, so a number means little without it."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=os.path.dirname(os.path.abspath(__file__)),
            capture_output=True,
            text=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return described.stdout.strip()


def markdown_table(results: list[dict], engines: list[str]) -> str:
    """One row per config x shape x precision: tokens/s per engine, aiayn's ratios, GFLOP/s and peak memory.
    A figure measured while other processes kept the machine busy (no quiet step) is marked with *."""
    rows: dict[tuple, dict[str, dict]] = {}
    for r in results:
        rows.setdefault((r["config"], f"{r['batch']}x{r['length']}", r["precision"]), {})[r["engine"]] = r

    def mark(*runs: dict) -> str:
        return "*" if any(r["contended"] for r in runs) else ""

    def tokens(cell: dict[str, dict], engine: str) -> str:
        return f"{cell[engine]['tokens_per_s']:,.0f}{mark(cell[engine])}" if engine in cell else "-"

    def ratio(cell: dict[str, dict], other: str) -> str:
        if "aiayn" not in cell or other not in cell:
            return "-"
        return f"{cell['aiayn']['tokens_per_s'] / cell[other]['tokens_per_s']:.2f}{mark(cell['aiayn'], cell[other])}"

    header = (
        ["config", "shape", "precision"]
        + [f"{e} tok/s" for e in engines]
        + ["aiayn/hf", "aiayn/torch", "aiayn GFLOP/s"]
        + [f"{e} peak MiB" for e in engines]
    )
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for (config, shape, precision), cell in rows.items():
        gflops = f"{cell['aiayn']['gflop_per_s']:.0f}{mark(cell['aiayn'])}" if "aiayn" in cell else "-"
        memory = [f"{cell[e]['peak_mib']:.0f}" if e in cell else "-" for e in engines]
        row = (
            [config, shape, precision]
            + [tokens(cell, e) for e in engines]
            + [ratio(cell, "hf"), ratio(cell, "torch"), gflops]
            + memory
        )
        lines.append("| " + " | ".join(row) + " |")
    if any(r["contended"] for r in results):
        lines.append(
            f"\n\\* every timed step shared the machine with other processes (> {CONTENDED} cores busy): "
            "pessimistic, do not compare"
        )
    return "\n".join(lines)


def profile(cell: Cell, rows: int) -> None:
    """Run `cell` under torch.profiler for `cell.steps` steps (after warm-up) and print the top ops by self CPU
    time: where a training step spends its time, op by op."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    torch.set_num_threads(THREADS)
    step = make_training_step(cell)
    for _ in range(cell.warmup):
        step()
    busy, own, start = busy_cpu_seconds(), time.process_time(), time.perf_counter()
    with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(cell.steps):
            step()
    others_load = (busy_cpu_seconds() - busy - (time.process_time() - own)) / (time.perf_counter() - start)
    print(
        f"## profile: {cell.engine} {cell.config} {cell.shape} {cell.precision}, {cell.steps} steps "
        f"(other processes kept {max(others_load, 0.0):.2f} cores busy meanwhile)"
    )
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=rows, max_name_column_width=60))


# -------------------------------------------------------------------------------------------------------- the CLI


def parse_list(text: str, allowed: tuple[str, ...] | None = None) -> list[str]:
    items = [x.strip() for x in text.split(",") if x.strip()]
    if allowed is not None:
        for x in items:
            if x not in allowed:
                raise argparse.ArgumentTypeError(f"{x!r} is not one of {', '.join(allowed)}")
    return items


def parse_shape(text: str) -> tuple[int, int]:
    try:
        batch, length = (int(x) for x in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shape {text!r} is not BATCHxLENGTH, e.g. 290x14") from None
    return batch, length


def measure(cell: Cell) -> dict:
    """Run one cell in a fresh process (isolated caches and allocator, and a peak RSS that belongs to this cell
    alone) and log its result to stderr."""
    with ProcessPoolExecutor(max_workers=1, mp_context=get_context("spawn")) as pool:
        result = pool.submit(run_cell, cell).result()
    print(
        f"{cell.engine:>5} {cell.config} {cell.shape:>6} {cell.precision}: "
        f"{result['tokens_per_s']:>8,.0f} tok/s, median step {result['median_step_s'] * 1e3:,.0f} ms, "
        f"peak {result['peak_mib']:,.0f} MiB, loss {result['last_loss']:.3f}, "
        f"quiet steps {result['quiet_steps']}/{len(result['step_s'])} "
        f"(others' load per step: {', '.join(f'{load:.2f}' for load in result['others_load'])})",
        file=sys.stderr,
        flush=True,
    )
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--configs", type=lambda s: parse_list(s, tuple(CONFIGS)), default=list(CONFIGS))
    parser.add_argument(
        "--shapes",
        type=lambda s: [parse_shape(x) for x in parse_list(s)],
        default=[(290, 14), (16, 256)],
        help="BATCHxLENGTH pairs: sentence pairs per step x tokens per sentence (default 290x14,16x256)",
    )
    parser.add_argument("--precisions", type=lambda s: parse_list(s, PRECISIONS), default=list(PRECISIONS))
    parser.add_argument("--engines", type=lambda s: parse_list(s, ENGINES), default=list(ENGINES))
    parser.add_argument(
        "--steps", type=int, help=f"undisturbed timed steps per cell (default per config: {DEFAULT_STEPS})"
    )
    parser.add_argument(
        "--warmup", type=int, help=f"untimed steps before timing (default per config: {DEFAULT_WARMUP})"
    )
    parser.add_argument("--json", help="also write every measurement (with per-step times) to this file")
    parser.add_argument(
        "--profile",
        choices=ENGINES,
        help="instead of benchmarking, profile this engine on the single config/shape/precision given",
    )
    parser.add_argument("--top", type=int, default=15, help="rows of the --profile table (default 15)")
    args = parser.parse_args(argv)

    def cells(engine: str) -> list[Cell]:
        return [
            Cell(
                engine,
                config,
                batch,
                length,
                precision,
                steps=DEFAULT_STEPS[config] if args.steps is None else args.steps,
                warmup=DEFAULT_WARMUP[config] if args.warmup is None else args.warmup,
            )
            for config in args.configs
            for batch, length in args.shapes
            for precision in args.precisions
        ]

    if args.profile:
        profile_cells = cells(args.profile)
        if len(profile_cells) != 1:
            parser.error("--profile needs exactly one config, one shape and one precision")
        profile(profile_cells[0], args.top)
        return

    version = aiayn_version()
    runs = []
    started = time.perf_counter()
    for row in zip(*(cells(e) for e in args.engines), strict=True):
        runs.extend(measure(cell) for cell in row)
    print(f"total {time.perf_counter() - started:.0f} s", file=sys.stderr)
    print(markdown_table(runs, args.engines))
    print(f"\naiayn {version}, torch {torch.__version__}, {THREADS} threads")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"aiayn": version, "torch": torch.__version__, "threads": THREADS, "runs": runs}, f, indent=1)


if __name__ == "__main__":
    main()
