"""The training loop: the paper's recipe, exact resume, and torchrun.

Exactness. Every random choice is a function of (seed, index): batch k of the run is fixed by the data order
of (seed, epoch), and dropout in batch k draws from torch's generator reseeded from (seed, k) just before it
(fairseq's `seed + num_updates` idea). So a resumed run, or the same batches split over processes, computes
the same numbers as one uninterrupted process; the RNG snapshots in the checkpoint are kept as well.

Batch k of an optimizer step: with W processes and A accumulation steps, process r's m-th micro-batch of step
s is global batch (batches before s) + m * W + r. One process with A = 2 and two processes with A = 1 thus see
the same batches, and the loss is normalised by the target tokens of all W * A batches of the step.

The trainer keeps the loop (step, accumulation, clipping, schedule, checkpoints, signals, early stop); batches
come from aiayn.data.loaders, validation from aiayn.train.evaluator, the folder layout from
aiayn.train.run_folder. It works on a resolved copy of the user's config, starts nothing until `run()`, and
restores the process-wide settings it changes (threads, malloc, signal handlers, the process group) on return.

Shapes: B batch, S source length, T target length, V vocab.
"""

from __future__ import annotations

import functools
import math
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from aiayn.config import RunConfig, TaskKind
from aiayn.data.loaders import text_streams, train_batches
from aiayn.data.prepare import Prepared, prepare
from aiayn.data.reader import DataError
from aiayn.errors import ConfigError
from aiayn.files import fault, write_atomic
from aiayn.model import build, use_kernels
from aiayn.modelfile import load_weights
from aiayn.tokenizer_pretrained import FILES as PRETRAINED_FILES
from aiayn.train import distributed
from aiayn.train.budget import StepPlan
from aiayn.train.compile_step import check_static_shapes, compile_hidden
from aiayn.train.evaluator import Evaluator, loss_pad_id
from aiayn.train.init_from import StartingPoint, starting_point
from aiayn.train.linear_path import resolve_gemm, use_onednn_linears
from aiayn.train.loss import LossModel
from aiayn.train.optim import grad_norm, learning_rate, make_optimizer, norm_value, optimizer_step
from aiayn.train.parallel import Parallel, eval_model, recompute_layers, state_line, wrap
from aiayn.train.precision import autocast, kernels_for, matmul_precision, recorded, resolve_precision
from aiayn.train.process import process_settings
from aiayn.train.reproducible import micro_seed
from aiayn.train.resolve_model import resolve_model
from aiayn.train.run_folder import ResumeError, RunFolder, config_differences
from aiayn.train.saving import Saver
from aiayn.train.state import Clock, TrainState

__all__ = ["EXIT_SIGNAL", "LossModel", "ResumeError", "Trainer", "config_differences", "micro_seed", "resolved"]

EXIT_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as shells report it
EXIT_DIVERGED = 3  # more than train.max_bad_steps steps in a row with a non-finite loss or gradient norm


def resolved(config: RunConfig) -> RunConfig:
    """A copy of `config` the run may complete (vocabulary size, tokenizer path) without touching the user's."""
    return RunConfig.from_dict(config.to_dict())


class Trainer:
    """One training run into one run folder. `Trainer(config).run()` returns the process exit code.

    After `run()`: `model` (the plain module, trained), `state` (TrainState), `data` (the prepared data),
    `evaluator`, `folder` (RunFolder) and `config` (the resolved copy actually run).
    """

    def __init__(self, config: RunConfig, resume: str = "none", log: Callable[[str], None] | None = None,
                 init_from: str | None = None):  # fmt: skip
        self.config = resolved(config)
        self.resume = resume
        self.init_from = init_from  # a model folder whose weights start a new run (fine-tuning); fresh optimizer
        self.start: StartingPoint | None = None  # what init_from gives: architecture, tokenizer (train.init_from)
        self.folder = RunFolder(self.config.train.out_dir)
        self.state = TrainState()
        self.stop_signal: int | None = None
        self._print = log or functools.partial(print, flush=True)  # a log file sees each line as it happens
        self._bar = None  # the progress bar while the loop runs: messages go through it so they don't tear it
        self.dist = distributed.Dist()
        self._state_logged = False

    @property
    def run_dir(self) -> Path:
        return self.folder.root

    def log(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message)
        else:
            self._print(message)

    def run(self) -> int:
        """Train to train.max_steps (or early stop, or a signal). Returns the process exit code."""
        train = self.config.train
        # Entered in order: the device is known before the matmul precision is checked for it, and a precision this
        # machine would ignore is refused before any data is read.
        with (
            process_settings(train, list(EXIT_SIGNAL), self._on_signal) as self.dist,
            matmul_precision(train.matmul_precision, self.dist.device),
        ):
            self._setup()
            return self._loop()

    def _on_signal(self, signum, frame) -> None:
        self.stop_signal = signum

    # ----------------------------------------------------------------------------------------------- set-up
    def _prepare_data(self) -> Prepared:
        """Rank 0 trains the tokenizer and builds the caches; the others then open them."""
        cfg, prepared, error = self.config, None, None
        args = (cfg.data, cfg.tokenizer, cfg.train.seed, self.run_dir, cfg.train.eval_bleu_sentences)
        given = self.start.tokenizer if self.start is not None else None  # an imported model's, when fine-tuning
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                prepared = prepare(*args, self.log, tokenizer=given)
            except (DataError, ValueError) as e:
                error = e
        if not distributed.all_ok(error is None, self.dist):
            if error is not None:
                raise error
            raise SystemExit(2)  # rank 0 reports the data error
        return prepared if prepared is not None else prepare(*args, lambda _: None, tokenizer=given)

    def _setup(self) -> None:
        cfg, d = self.config, self.dist
        if self.run_dir.exists() and not self.run_dir.is_dir():
            raise ConfigError(f"train.out_dir {self.run_dir} is a file; expected a folder for the run")
        if self.init_from:  # the folder's architecture and tokenizer, the config's training settings
            self.start = starting_point(self.init_from, cfg)
            cfg.model = self.start.model
        self.data = self._prepare_data()
        resolve_model(cfg, self.data, ids_from_tokenizer=self.start is None or self.start.tokenizer is None)
        resume_from = self.folder.find_resume(self.resume, self.log, d.is_main, lambda: distributed.barrier(d))
        if resume_from is not None:
            self.folder.check_compatible(resume_from, cfg.model.to_dict(), self.data.tokenizer.fingerprint())
        cfg.train.precision, why = resolve_precision(cfg.train.precision, d.device, recorded(resume_from, "precision"))
        cfg.train.gemm = resolve_gemm(cfg.train.gemm, d.device, recorded(resume_from, "gemm"))
        cfg.train.max_steps = cfg.train.max_steps or int(recorded(resume_from, "max_steps") or 0)  # 0: set in the loop
        self.plan = StepPlan(cfg.train)  # train.max_steps 0: from the step time and train.max_minutes (budget.py)
        self.task = self.data.task
        check_static_shapes(cfg.train, self.task, d.device)
        if self.task is TaskKind.TEXT:
            train, valid = text_streams(self.data.train, self.data.valid, cfg.data.valid_fraction)
        else:
            train, valid = self.data.train, self.data.valid
        torch.manual_seed(cfg.train.seed)
        self.model = build(cfg.model).to(d.device)  # the plain module: saved without wrappers
        use_kernels(self.model, kernels_for(d.device, cfg.train.precision, cfg.train.matmul_precision))
        if cfg.train.gemm == "onednn":
            use_onednn_linears(self.model)  # same parameters, state_dict() and checkpoints
        if cfg.train.activation_checkpointing:
            recompute_layers(self.model)
        self.batches = train_batches(self.task, train, cfg.train, d.device, cfg.model.special_ids)
        self.eval_model = eval_model(self.model, cfg, d)  # FSDP: rank 0's plain copy (aiayn.train.parallel)
        self.evaluator = Evaluator(self.eval_model, self.task, valid, self.data.valid_pairs, self.data.tokenizer,
                                   cfg.train, cfg.optim.label_smoothing, d.device, self._autocast)  # fmt: skip
        self.log(f"model: {cfg.model.arch}, {sum(p.numel() for p in self.model.parameters()):,} parameters; "
                 f"device {d.device}, {d.world_size} process(es), precision {cfg.train.precision}{why}, "
                 f"gemm {cfg.train.gemm}")  # fmt: skip
        if resume_from is None and self.start is not None:  # fine-tuning: the weights, before any sharding
            load_weights(self.model, self.start.folder)
        self.parallel = self._parallel()
        self._setup_optimizer()
        self.saver = Saver(self.folder, self.model, self.optimizer, self.scaler, d, self.parallel.kind == "fsdp",
                           self.log)  # fmt: skip
        self._start_from(resume_from)

    def _setup_optimizer(self) -> None:
        self.optimizer = make_optimizer(self.model, self.config.optim)
        use_scaler = self.config.train.precision == "fp16"
        if use_scaler and self.dist.device.type != "cuda":
            raise ConfigError("train.precision='fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None

    def _start_from(self, resume_from: Path | None) -> None:
        """Resume, or start fresh (from init_from's weights when given); then write the run's config and tokenizer."""
        if resume_from is not None:
            self._load(resume_from)
        else:
            if self.start is not None:
                self.log(f"weights from {self.start.folder}; new optimizer and schedule")
                if self.start.ignored:
                    self.log("its architecture, not the config's: " + ", ".join(self.start.ignored))
            if self.dist.is_main:
                self.folder.metrics.unlink(missing_ok=True)
        tokenizer = self.data.tokenizer  # aiayn's own (tokenizer.json), or a SentencePiece / imported one's files
        kind = tokenizer.kind if tokenizer.kind in PRETRAINED_FILES else "bpe"
        files = tokenizer.files() if kind in PRETRAINED_FILES else None
        if self.dist.is_main:
            self.folder.write_config(self.config.to_dict())
            for name, data in (files or {}).items():
                write_atomic(self.run_dir / name, data)
            if files is None and not (self.run_dir / "tokenizer.json").exists():  # given by path: the run keeps a copy
                self.data.tokenizer.save(self.run_dir / "tokenizer.json")
        if files is not None:
            self.tokenizer_save = {"tokenizer_files": files, "tokenizer_kind": kind}
        else:
            self.tokenizer_save = {"tokenizer_json": (self.run_dir / "tokenizer.json").read_bytes()
                                   if self.dist.is_main else b""}  # fmt: skip

    def _parallel(self) -> Parallel:
        """The model and its loss (LossModel), compiled when asked, in DDP or sharded by FSDP for several processes
        (aiayn.train.parallel)."""
        cfg = self.config
        hidden = self.model.hidden
        if cfg.train.compile:  # aiayn.train.compile_step: for which shapes, in which mode
            hidden = compile_hidden(hidden, cfg.train, self.task, self.dist.device, self.data.train)
        pad = loss_pad_id(self.task, self.model)
        return wrap(LossModel(self.model, hidden, cfg.optim.label_smoothing, pad), cfg.train, self.dist)

    def _load(self, path: Path) -> None:
        self.state = self.saver.load(path)
        self.log(f"resumed from {path} at step {self.state.step}")
        if self.dist.is_main:  # the log reads as one uninterrupted run: drop entries written after this checkpoint
            self.folder.truncate_metrics(self.state.step, self.log)

    def _autocast(self):
        return autocast(self.config.train.precision, self.dist.device)

    # ----------------------------------------------------------------------------------------------- the loop
    def _loop(self) -> int:
        from tqdm import tqdm

        train = self.config.train
        self._bar = bar = tqdm(total=train.max_steps, initial=self.state.step, dynamic_ncols=True, leave=False,
                               disable=not (self.dist.is_main and sys.stderr.isatty()))  # fmt: skip
        clock = Clock(self.state.seconds)
        params = [p for p in self.model.parameters() if p.requires_grad]
        exit_code, per_step = 0, self.dist.world_size * train.grad_accum
        try:
            while self.state.step < (train.max_steps or sys.maxsize):
                step = self.state.step + 1
                lr = self._step(step, params)
                self.state.seconds = clock.seconds()
                if self.plan.after_step(step, self.state.seconds, self.dist, self.config, self.log, self.folder):
                    bar.total = train.max_steps  # set now: train.max_steps was 0
                time_up = self._agree(0 < train.max_minutes * 60 <= self.state.seconds)  # all stop at one step
                last = step == train.max_steps or time_up
                bar.update(1)
                if step % train.log_every == 0 or last:
                    self._log_interval(step, lr, clock)
                evaluate = self.evaluator.has_valid and (step % train.eval_every == 0 or last)
                stop_early, improved = self._evaluate(step) if evaluate else (False, False)
                interrupted = self._agree(self.stop_signal is not None)
                epoch_end = train.save_every_epoch and self.batches.ended_epoch(self.state.batches_done, per_step)
                if step % train.save_every == 0 or last or stop_early or interrupted or improved or epoch_end:
                    self._save(step)
                fault(f"after_step:{step}")
                exit_code = self._stop(step, interrupted, time_up, stop_early)
                if exit_code is not None:
                    break
        finally:
            bar.close()
            self._bar = None
        return exit_code or 0

    def _agree(self, flag: bool) -> bool:
        """True on every process when it is True on any (so that all stop at the same step)."""
        return not distributed.all_ok(not flag, self.dist) if self.dist.active else flag

    def _step(self, step: int, params: list[torch.nn.Parameter]) -> float:
        """One optimizer step over world_size x grad_accum global batches; returns its learning rate."""
        cfg, train, d = self.config, self.config.train, self.dist
        first = self.state.batches_done
        per_step = d.world_size * train.grad_accum
        total_tokens = sum(self.batches.tokens(first + j) for j in range(per_step))
        self.model.train()
        loss_sum = torch.zeros((), device=d.device)
        nll_sum = torch.zeros((), device=d.device)
        for m in range(train.grad_accum):
            k = first + m * d.world_size + d.rank
            inputs, target = self.batches.batch(k)
            with self.parallel.sync(m == train.grad_accum - 1), self._autocast():
                torch.manual_seed(micro_seed(train.seed, k))
                if train.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # this batch's graph replay may reuse the last's memory
                loss, nll = self.parallel.module(*inputs, target=target)
                # Gradients summed over processes, divided by all the step's tokens (loss_scale undoes DDP's mean).
                scaled = loss * (self.parallel.loss_scale / max(total_tokens, 1))
                (self.scaler.scale(scaled) if self.scaler else scaled).backward()
            loss_sum += loss.detach()
            nll_sum += nll
            if m == 0:
                fault(f"step:{step}")  # tests: a kill in the middle of a step (mid accumulation)
        if fault(f"loss:{step}"):  # tests: one step whose loss is NaN (AIAYN_FAULT=loss:N:nan)
            loss_sum = loss_sum * float("nan")
        lr = learning_rate(step, cfg.optim, cfg.model.d_model, train.max_steps)
        # A non-finite loss or gradient norm skips the update; the step still counts (schedule and data advance),
        # and every process decides alike through the same all-reduce. fp16's GradScaler skips its own steps.
        norm = grad_norm(params) if self.scaler is None else None
        finite = math.isfinite(loss_sum.item()) and (norm is None or math.isfinite(norm_value(norm)))
        step_loss, step_nll, n_bad = distributed.all_sum([loss_sum.item(), nll_sum.item(), float(not finite)], d)
        if n_bad:
            self.optimizer.zero_grad(set_to_none=True)
        else:
            grads = [p.grad for p in params]  # kept for the state line: the update sets them to None
            optimizer_step(self.optimizer, self.scaler, lr, params, cfg.optim.clip_norm, norm)
            if not self._state_logged:  # once a run: what this process holds (README: FSDP's memory)
                self.log(state_line(params, grads, self.optimizer, d.rank))
                self._state_logged = True
        self.state.record(step, first + per_step, total_tokens, step_loss, step_nll, skipped=bool(n_bad))
        return lr

    def _log_interval(self, step: int, lr: float, clock: Clock) -> None:
        iv = self.state.interval
        entry = {
            "step": step,
            "loss": iv.loss / max(iv.tokens, 1),
            "nll": iv.nll / max(iv.tokens, 1),
            "lr": lr,
            "tokens": self.state.tokens,
            "tokens_per_s": iv.tokens / max(clock.interval(), 1e-9),
            "seconds": round(self.state.seconds, 3),
        }
        if iv.skipped:  # steps without an update since the last log line (non-finite loss or gradient norm)
            entry["skipped_steps"] = iv.skipped
        if self.dist.is_main:
            self.folder.append_metrics(entry)
        skipped = f"  ({iv.skipped} step(s) skipped: loss or gradient not finite)" if iv.skipped else ""
        self.log(f"step {step:>7}  loss {entry['loss']:.4f}  lr {lr:.3e}  {entry['tokens_per_s']:,.0f} tok/s{skipped}")
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{entry['tokens_per_s']:,.0f}")
        self.state.interval = type(iv)()
        clock.start_interval()

    def _stop(self, step: int, interrupted: bool, time_up: bool, stop_early: bool) -> int | None:
        """The exit code when the run stops after this step (with the line saying why), else None."""
        train = self.config.train
        if self.state.bad_in_a_row > train.max_bad_steps:
            self.log(
                f"stopped at step {step}: the loss or gradient norm was not finite in {self.state.bad_in_a_row} steps "
                f"in a row (train.max_bad_steps={train.max_bad_steps}); lower optim.lr or set optim.clip_norm"
            )
            return EXIT_DIVERGED
        if interrupted:
            sig = signal.Signals(self.stop_signal or signal.SIGTERM)
            self.log(f"stopped by {sig.name} after step {step}; saved; continue with --resume auto")
            return EXIT_SIGNAL.get(sig, 143)
        if time_up:
            self.log(f"stopped after step {step}: train.max_minutes={train.max_minutes} reached")
            return 0
        if stop_early:
            self.log(
                f"early stop at step {step}: no better validation {train.best_metric} in "
                f"{train.patience} evaluations (best at step {self.state.best_step})"
            )
            return 0
        return None

    # ----------------------------------------------------------------------------------------------- eval/save
    def validation_loss(self) -> tuple[float, float, int]:
        """(label-smoothed loss, nll, tokens) per token over the whole validation set, without dropout."""
        sums = self.evaluator.validation_loss()
        return sums.mean_loss, sums.mean_nll, sums.tokens

    def translate(self, sources: list[str]) -> list[str]:
        """Greedy translations of `sources` by the model being trained, under the run's autocast."""
        return self.evaluator.translate(sources)

    def _evaluate(self, step: int) -> tuple[bool, bool]:
        """Validation on rank 0 (loss, + BLEU and chrF for pairs); updates `best`. Returns (stop early, improved)."""
        train = self.config.train
        stop = better = False
        self.parallel.gather(self.eval_model)  # FSDP: the shards gathered into rank 0's plain copy
        if self.dist.is_main:
            entry = self.evaluator.evaluate(step, self.state.seconds)
            self.folder.append_metrics(entry)
            extra = f"  BLEU {entry['bleu']:.2f}  chrF {entry['chrf']:.2f}" if "bleu" in entry else ""
            self.log(f"valid at step {step}: loss {entry['loss']:.4f}  nll {entry['nll']:.4f}  "
                     f"ppl {entry['ppl']:.2f}{extra}")  # fmt: skip
            by_bleu = train.best_metric == "bleu" and "bleu" in entry
            value = entry["bleu"] if by_bleu else entry["nll"]
            better = self.state.improved(value, higher_is_better=by_bleu)
            if better:
                self.state.best, self.state.best_step, self.state.bad_evals = value, step, 0
            else:
                self.state.bad_evals += 1
                stop = train.patience > 0 and self.state.bad_evals >= train.patience
        return self._agree(stop), self._agree(better)

    def _save(self, step: int) -> None:
        self.saver.save(step, self.state, self.config.train.keep_last, config=self.config.to_dict(),
                        **self.tokenizer_save)  # fmt: skip
