"""The training loop: the paper's recipe, exact resume, and torchrun.

Exactness. Every random choice is a function of (seed, index): batch k of the run is fixed by the data order
of (seed, epoch), and dropout in batch k draws from torch's generator reseeded from (seed, k) just before it
(fairseq's `seed + num_updates` idea). So a resumed run, or the same batches split over processes, computes
the same numbers as one uninterrupted process; the RNG snapshots in the checkpoint are kept as well.

Batch k of an optimizer step: with W processes and A accumulation steps, process r's m-th micro-batch of step
s is global batch (batches before s) + m * W + r. One process with A = 2 and two processes with A = 1 thus see
the same batches, and the loss is normalised by the target tokens of all W * A batches of the step.

Shapes: B batch, S source length, T target length, V vocab.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import random
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from aiayn.config import PAD_ID, RunConfig
from aiayn.data.corpus import TokenCorpus, collate, token_batches, token_stream
from aiayn.data.prepare import Prepared, lm_blocks, prepare
from aiayn.data.reader import DataError
from aiayn.evaluate import translation_scores
from aiayn.model import build_model
from aiayn.train import checkpoint as ckpt
from aiayn.train import distributed, memory
from aiayn.train.loss import linear_label_smoothed_loss
from aiayn.train.optim import learning_rate, make_optimizer

EXIT_SIGNAL = {signal.SIGTERM: 143, signal.SIGINT: 130}  # 128 + signal number, as shells report it


class ResumeError(ValueError):
    """A resume that cannot continue (incompatible config or tokenizer); the message lists what differs."""


def micro_seed(seed: int, k: int) -> int:
    """The dropout seed of global batch k: independent streams for every (seed, k)."""
    return int(np.random.SeedSequence([seed, k]).generate_state(1, dtype=np.uint64)[0] >> 1)


def _rng_state() -> dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"key": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    key = state["numpy"]["key"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", key, state["numpy"]["pos"], 0, 0.0))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_differences(old: dict[str, Any], new: dict[str, Any]) -> list[str]:
    """'model.d_model: 64 in the checkpoint, 128 now' for every model key that differs."""
    keys = sorted(set(old) | set(new))
    return [
        f"model.{k}: {old.get(k)!r} in the checkpoint, {new.get(k)!r} now" for k in keys if old.get(k) != new.get(k)
    ]


class LossModel(torch.nn.Module):
    """The model and its training loss as one module, the unit that DDP wraps: forward(*inputs, target) gives the
    summed (label-smoothed loss, nll) from the model's last hidden states (`hidden`, compiled or not) and its
    pre-softmax Linear, through `linear_label_smoothed_loss`, so no step holds the whole (tokens, V) logits."""

    def __init__(self, model: torch.nn.Module, hidden: Callable[..., torch.Tensor], smoothing: float) -> None:
        super().__init__()
        self.model = model
        self.hidden = hidden
        self.smoothing = smoothing

    def forward(self, *inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model.output
        loss, nll, _ = linear_label_smoothed_loss(
            self.hidden(*inputs), out.weight, out.bias, target, self.smoothing, PAD_ID
        )
        return loss, nll


class Trainer:
    """Wires data, model, optimizer, schedule, evaluation and checkpoints for one run folder."""

    def __init__(
        self,
        config: RunConfig,
        resume: str = "none",
        log: Callable[[str], None] | None = None,
        init_from: str | None = None,
    ):
        self.config = config
        self.resume = resume
        self.init_from = init_from  # a model folder whose weights start a new run (fine-tuning); fresh optimizer
        self.dist = distributed.setup(config.train.device)
        self.run_dir = Path(config.train.out_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self._print = log or functools.partial(print, flush=True)  # a log file sees each line as it happens
        self._bar = None  # the progress bar while the loop runs: messages go through it so they don't tear it
        self.stop_signal: int | None = None

    # ----------------------------------------------------------------------------------------------- logging
    def log(self, message: str) -> None:
        if not self.dist.is_main:
            return
        if self._bar is not None and not self._bar.disable:
            self._bar.write(message)
        else:
            self._print(message)

    def _metrics(self, entry: dict[str, Any]) -> None:
        if self.dist.is_main:
            with open(self.run_dir / "metrics.jsonl", "a", encoding="utf-8") as f:
                f.write(json.dumps(entry) + "\n")

    # ----------------------------------------------------------------------------------------------- set-up
    def _prepare_data(self) -> Prepared:
        """Rank 0 trains the tokenizer and builds the caches; the others then open them."""
        cfg = self.config
        prepared: Prepared | None = None
        error: Exception | None = None
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            try:
                prepared = prepare(
                    cfg.data, cfg.tokenizer, cfg.train.seed, self.run_dir, cfg.train.eval_bleu_sentences, self.log
                )
            except (DataError, ValueError) as e:
                error = e
        if not distributed.all_ok(error is None, self.dist):
            if error is not None:
                raise error
            raise SystemExit(2)  # rank 0 reports the data error
        if prepared is None:
            prepared = prepare(
                cfg.data, cfg.tokenizer, cfg.train.seed, self.run_dir, cfg.train.eval_bleu_sentences, lambda _: None
            )
        return prepared

    def _find_resume(self) -> Path | None:
        if self.resume == "none":
            if ckpt.list_checkpoints(self.ckpt_root):
                raise ResumeError(
                    f"{self.run_dir} already holds checkpoints: continue it with --resume auto, "
                    f"or choose another --train.out_dir"
                )
            return None
        if self.resume == "auto":
            removed = ckpt.remove_stale(self.ckpt_root) if self.dist.is_main else []
            for path in removed:
                self.log(f"removed the unfinished checkpoint write {path}")
            distributed.barrier(self.dist)
            return ckpt.latest_valid(self.ckpt_root, self.log)
        path = Path(self.resume)
        ckpt.verify(path, need_state=True)  # an explicit path that is corrupt is an error, not a fallback
        return path

    def _check_compatible(self, path: Path, tokenizer_fingerprint: str) -> None:
        saved = yaml.safe_load((path / "config.yaml").read_text(encoding="utf-8"))
        problems = config_differences(saved.get("model", {}), self.config.model.to_dict())
        from aiayn.tokenizer import Tokenizer

        old = Tokenizer.load(path / "tokenizer.json").fingerprint()
        if old != tokenizer_fingerprint:
            problems.append(f"tokenizer: fingerprint {old[:12]} in the checkpoint, {tokenizer_fingerprint[:12]} now")
        if problems:
            raise ResumeError(f"cannot resume from {path}: the run differs: " + "; ".join(problems))

    # ----------------------------------------------------------------------------------------------- batches
    def _seq2seq_batches(self, corpus: TokenCorpus, epoch: int) -> list[np.ndarray]:
        if self._epoch_cache[0] != epoch:
            batches = token_batches(
                corpus.src_lengths, corpus.tgt_lengths, self.config.train.max_tokens, self.config.train.seed, epoch
            )
            self._epoch_cache = (epoch, batches)
        return self._epoch_cache[1]

    def _batch(self, k: int) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
        """Global batch k: (model inputs, target). A language model reads (ids,); seq2seq (src, tgt[:-1])."""
        train = self.config.train
        if self.data.lm:
            x, y = lm_blocks(self.train_stream, train.block_size, train.batch_size, train.seed, k)
            x = torch.from_numpy(x.astype(np.int64)).to(self.dist.device)  # (B, block)
            y = torch.from_numpy(y.astype(np.int64)).to(self.dist.device)  # (B, block)
            return (x,), y
        n = self.n_batches
        indices = self._seq2seq_batches(self.data.train, k // n)[k % n]
        src, tgt = collate(self.data.train, indices, self.dist.device)  # (B, S), (B, T + 2)
        return (src, tgt[:, :-1]), tgt[:, 1:]  # teacher forcing: predict token t + 1 from tokens <= t

    def _tokens_of(self, k: int) -> int:
        if self.data.lm:
            return self.config.train.batch_size * self.config.train.block_size
        indices = self._seq2seq_batches(self.data.train, k // self.n_batches)[k % self.n_batches]
        return int(self.data.train.tgt_lengths[indices].sum()) + len(indices)  # answer tokens + EOS

    # ----------------------------------------------------------------------------------------------- run
    def run(self) -> int:
        """Train to train.max_steps (or early stop, or a signal). Returns the process exit code."""
        cfg = self.config
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        if self.dist.device.type == "cpu":
            memory.keep_freed_memory()  # no page faults for the step's large tensors (see aiayn.train.memory)
        if self.init_from and not cfg.tokenizer.path:  # fine-tuning keeps the token ids the weights were trained on
            cfg.tokenizer.path = str(ckpt.resolve_model_dir(self.init_from) / "tokenizer.json")
        self.data = self._prepare_data()
        cfg.model.vocab_size = self.data.tokenizer.vocab_size
        cfg.model.arch = "lm" if self.data.lm else cfg.model.arch
        if cfg.model.arch == "lm" and not self.data.lm:
            raise ValueError("model.arch='lm' needs data.train_text (plain text); parallel data trains 'seq2seq'")
        resume_from = self._find_resume()
        if resume_from is not None:
            self._check_compatible(resume_from, self.data.tokenizer.fingerprint())

        self.train_stream = None
        self.valid_stream = None
        if self.data.lm:
            stream = token_stream(self.data.train)
            if self.data.valid is not None:
                self.valid_stream = token_stream(self.data.valid)
            elif cfg.data.valid_fraction > 0:  # nanoGPT: the last 10% of the text validates
                cut = int(len(stream) * (1 - cfg.data.valid_fraction))
                stream, self.valid_stream = stream[:cut], stream[cut:]
            self.train_stream = stream
            self.n_batches = 0
        else:
            self._epoch_cache: tuple[int, list[np.ndarray]] = (-1, [])
            self.n_batches = len(self._seq2seq_batches(self.data.train, 0))

        torch.manual_seed(cfg.train.seed)
        self.model = build_model(cfg.model).to(self.dist.device)  # the plain module: saved without wrappers
        self.log(
            f"model: {cfg.model.arch}, {sum(p.numel() for p in self.model.parameters()):,} parameters; "
            f"device {self.dist.device}, {self.dist.world_size} process(es), precision {cfg.train.precision}"
        )
        self.optimizer = make_optimizer(self.model, cfg.optim)
        use_scaler = cfg.train.precision == "fp16"
        if use_scaler and self.dist.device.type != "cuda":
            raise ValueError("train.precision='fp16' needs a CUDA device; on CPU use 'bf16' or 'fp32'")
        self.scaler = torch.amp.GradScaler("cuda") if use_scaler else None
        self.state: dict[str, Any] = {
            "step": 0,
            "batches_done": 0,
            "tokens": 0,
            "interval": [0.0, 0.0, 0],
            "best": None,
            "best_step": None,
            "bad_evals": 0,
            "seconds": 0.0,  # wall time of the run so far, resumed runs included
        }

        if resume_from is not None:
            self._load(resume_from)
        else:
            if self.init_from:
                source = ckpt.resolve_model_dir(self.init_from)
                ckpt.verify(source)
                ckpt.load_weights(self.model, source)
                self.log(f"weights from {source}; new optimizer and schedule")
            if self.dist.is_main:
                (self.run_dir / "metrics.jsonl").unlink(missing_ok=True)
        if self.dist.is_main:
            self._write_run_config()
            if not (self.run_dir / "tokenizer.json").exists():  # a tokenizer given by path: the run keeps a copy
                self.data.tokenizer.save(self.run_dir / "tokenizer.json")
        self.tokenizer_json = (self.run_dir / "tokenizer.json").read_bytes() if self.dist.is_main else b""

        hidden = self.model.hidden
        if cfg.train.compile:
            # Seq2seq batches change both lengths at every step: compiled for static shapes, each new (S, T) pair
            # would recompile (on an H100 the first 300 Multi30k steps ran at 3-58k tokens/s against 135k eager).
            # Language-model batches are all (batch_size, block_size): static shapes, the fastest kernels.
            # On the CPU, inductor's C++ wrapper calls the generated kernels without the per-operation Python of
            # its default wrapper: a Shakespeare step took 17.2 ms with the Python wrapper, 15.6 with this one.
            options = {"cpp_wrapper": True} if self.dist.device.type == "cpu" else None
            hidden = torch.compile(hidden, dynamic=cfg.model.arch == "seq2seq", options=options)
        forward_model: torch.nn.Module = LossModel(self.model, hidden, cfg.optim.label_smoothing)
        if self.dist.active:
            from torch.nn.parallel import DistributedDataParallel

            forward_model = DistributedDataParallel(forward_model)
        self.forward_model = forward_model
        with distributed.matmul_precision(cfg.train.matmul_precision, self.dist.device):
            return self._loop()

    def _write_run_config(self) -> None:
        text = yaml.safe_dump(self.config.to_dict(), sort_keys=False, allow_unicode=True)
        ckpt.write_atomic(self.run_dir / "config.yaml", text.encode())

    def _load(self, path: Path) -> None:
        ckpt.load_weights(self.model, path)
        state = ckpt.load_trainer_state(path)
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        _set_rng_state(state["rng"])
        self.state = state["trainer"]
        step = self.state["step"]
        self.log(f"resumed from {path} at step {step}")
        if self.dist.is_main:  # the log reads as one uninterrupted run: drop entries written after this checkpoint
            metrics = self.run_dir / "metrics.jsonl"
            if metrics.exists():
                kept = [
                    ln
                    for ln in metrics.read_text(encoding="utf-8").splitlines(keepends=True)
                    if ln.strip() and json.loads(ln)["step"] <= step
                ]
                ckpt.write_atomic(metrics, "".join(kept).encode())

    def _autocast(self):
        precision = self.config.train.precision
        if precision == "fp32":
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if precision == "bf16" else torch.float16
        return torch.autocast(self.dist.device.type, dtype=dtype)

    def _install_signals(self) -> None:
        def handler(signum, frame):  # finish the step, save, exit: see _loop
            self.stop_signal = signum

        for sig in EXIT_SIGNAL:
            signal.signal(sig, handler)

    def _loop(self) -> int:
        from tqdm import tqdm

        cfg, train, d = self.config, self.config.train, self.dist
        self._install_signals()
        per_step = d.world_size * train.grad_accum
        bar = tqdm(
            total=train.max_steps,
            initial=self.state["step"],
            disable=not (d.is_main and sys.stderr.isatty()),
            dynamic_ncols=True,
            leave=False,
        )
        self._bar = bar
        interval_start = run_start = time.perf_counter()
        seconds_before = self.state["seconds"]
        exit_code = 0
        params = [p for p in self.model.parameters() if p.requires_grad]
        while self.state["step"] < train.max_steps:
            step = self.state["step"] + 1
            first = self.state["batches_done"]
            total_tokens = sum(self._tokens_of(first + j) for j in range(per_step))
            self.model.train()
            loss_sum = torch.zeros((), device=d.device)
            nll_sum = torch.zeros((), device=d.device)
            for m in range(train.grad_accum):
                k = first + m * d.world_size + d.rank
                inputs, target = self._batch(k)
                sync = m == train.grad_accum - 1 or not d.active
                with contextlib.nullcontext() if sync else self.forward_model.no_sync(), self._autocast():
                    torch.manual_seed(micro_seed(train.seed, k))
                    loss, nll = self.forward_model(*inputs, target=target)
                    # DDP averages gradients over processes; scaling by W makes the result sum / all tokens.
                    scaled = loss * (d.world_size / max(total_tokens, 1))
                    (self.scaler.scale(scaled) if self.scaler else scaled).backward()
                loss_sum += loss.detach()
                nll_sum += nll
                if m == 0:
                    ckpt.fault(f"step:{step}")  # tests: a kill in the middle of a step (mid accumulation)
            lr = learning_rate(step, cfg.optim, cfg.model.d_model, train.max_steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            if self.scaler is not None:
                self.scaler.unscale_(self.optimizer)
            if cfg.optim.clip_norm > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.clip_norm)
            if self.scaler is not None:
                self.scaler.step(self.optimizer)
                self.scaler.update()
            else:
                self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)

            step_loss, step_nll = distributed.all_sum([loss_sum.item(), nll_sum.item()], d)
            self.state["step"] = step
            self.state["batches_done"] = first + per_step
            self.state["tokens"] += total_tokens
            iv = self.state["interval"]
            self.state["interval"] = [iv[0] + step_loss, iv[1] + step_nll, iv[2] + total_tokens]
            self.state["seconds"] = seconds_before + time.perf_counter() - run_start
            time_up = 0 < train.max_minutes * 60 <= self.state["seconds"]
            if d.active:  # every process stops at the same step
                time_up = not distributed.all_ok(not time_up, d)
            last = step == train.max_steps or time_up
            bar.update(1)
            if step % train.log_every == 0 or last:
                elapsed = time.perf_counter() - interval_start
                loss_v, nll_v, tokens_v = self.state["interval"]
                entry = {
                    "step": step,
                    "loss": loss_v / max(tokens_v, 1),
                    "nll": nll_v / max(tokens_v, 1),
                    "lr": lr,
                    "tokens": self.state["tokens"],
                    "tokens_per_s": tokens_v / max(elapsed, 1e-9),
                    "seconds": round(self.state["seconds"], 3),
                }
                self._metrics(entry)
                self.log(f"step {step:>7}  loss {entry['loss']:.4f}  lr {lr:.3e}  {entry['tokens_per_s']:,.0f} tok/s")
                bar.set_postfix(loss=f"{entry['loss']:.3f}", lr=f"{lr:.2e}", tok_s=f"{entry['tokens_per_s']:,.0f}")
                self.state["interval"] = [0.0, 0.0, 0]
                interval_start = time.perf_counter()

            stop_early = improved = False
            if self._has_valid() and (step % train.eval_every == 0 or last):
                stop_early, improved = self._evaluate(step)
            interrupted = self.stop_signal is not None
            if d.active:
                interrupted = not distributed.all_ok(not interrupted, d)
            if step % train.save_every == 0 or last or stop_early or interrupted or improved:
                self._save(step)
            ckpt.fault(f"after_step:{step}")
            if interrupted:
                self.log(
                    f"stopped by {signal.Signals(self.stop_signal or signal.SIGTERM).name} after step {step}; "
                    f"saved; continue with --resume auto"
                )
                exit_code = EXIT_SIGNAL.get(self.stop_signal or signal.SIGTERM, 143)
                break
            if time_up:
                self.log(f"stopped after step {step}: train.max_minutes={train.max_minutes} reached")
                break
            if stop_early:
                self.log(
                    f"early stop at step {step}: no better validation {train.best_metric} in "
                    f"{train.patience} evaluations (best at step {self.state['best_step']})"
                )
                break
        bar.close()
        self._bar = None
        distributed.teardown(d)
        return exit_code

    # ----------------------------------------------------------------------------------------------- eval/save
    def _has_valid(self) -> bool:
        return (self.valid_stream is not None) if self.data.lm else self.data.valid is not None

    def _loss(self, hidden: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        out = self.model.output
        return linear_label_smoothed_loss(
            hidden, out.weight, out.bias, target, self.config.optim.label_smoothing, PAD_ID
        )

    @torch.no_grad()
    def validation_loss(self) -> tuple[float, float, int]:
        """(label-smoothed loss, nll, tokens) per token over the whole validation set, without dropout."""
        self.model.eval()
        cfg = self.config
        loss_sum = nll_sum = 0.0
        tokens = 0
        if self.data.lm:
            block = cfg.train.block_size
            stream = self.valid_stream
            n_blocks = (len(stream) - 1) // block
            # Batches of train.max_tokens (at least batch_size rows): fewer, larger forward passes than training's
            # batches, for the same sums (shakespeare-char.yaml, under cProfile: 1.16 s with 12 rows, 0.8 s with 64).
            rows_per_batch = max(cfg.train.batch_size, cfg.train.max_tokens // block)
            for start in range(0, n_blocks, rows_per_batch):  # every token of the text, in order
                rows = np.arange(start, min(start + rows_per_batch, n_blocks)) * block
                windows = stream[rows[:, None] + np.arange(block + 1)[None, :]].astype(np.int64)  # (B, block + 1)
                batch = torch.from_numpy(windows).to(self.dist.device)
                with self._autocast():
                    loss, nll, n = self._loss(self.model.hidden(batch[:, :-1]), batch[:, 1:])
                loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + n
        else:
            valid = self.data.valid
            for indices in token_batches(valid.src_lengths, valid.tgt_lengths, cfg.train.max_tokens, 0, 0):
                src, tgt = collate(valid, indices, self.dist.device)
                with self._autocast():
                    loss, nll, n = self._loss(self.model.hidden(src, tgt[:, :-1]), tgt[:, 1:])
                loss_sum, nll_sum, tokens = loss_sum + loss.item(), nll_sum + nll.item(), tokens + n
        return loss_sum / max(tokens, 1), nll_sum / max(tokens, 1), tokens

    @torch.no_grad()
    def translate(self, sources: list[str]) -> list[str]:
        """Greedy translations of `sources` (validation BLEU, the demo), by the batched decoder that `aiayn
        translate` uses, under the run's autocast."""
        from aiayn.inference import Pretrained

        self.model.eval()
        model = Pretrained(self.model, self.data.tokenizer, {"model": self.config.model.to_dict()}, self.run_dir)
        with self._autocast():
            return model.translate(sources, beam=1, batch_tokens=max(self.config.train.max_tokens, 1))

    def _evaluate(self, step: int) -> tuple[bool, bool]:
        """Validation loss (+ BLEU and chrF for seq2seq) on rank 0; updates `best`. Returns (stop early, improved)."""
        cfg = self.config
        stop = better = False
        if self.dist.is_main:
            loss, nll, tokens = self.validation_loss()
            entry: dict[str, Any] = {
                "step": step,
                "split": "valid",
                "seconds": round(self.state["seconds"], 3),
                "loss": loss,
                "nll": nll,
                "ppl": math.exp(min(nll, 50)),
                "tokens": tokens,
            }
            if self.data.valid_pairs:
                sources = [s for s, _ in self.data.valid_pairs]
                refs = [r for _, r in self.data.valid_pairs]
                entry.update(translation_scores(self.translate(sources), refs))
            self._metrics(entry)
            extra = f"  BLEU {entry['bleu']:.2f}  chrF {entry['chrf']:.2f}" if "bleu" in entry else ""
            self.log(f"valid at step {step}: loss {loss:.4f}  nll {nll:.4f}  ppl {entry['ppl']:.2f}{extra}")
            value = entry["bleu"] if cfg.train.best_metric == "bleu" and "bleu" in entry else nll
            better = self.state["best"] is None or (
                value > self.state["best"]
                if cfg.train.best_metric == "bleu" and "bleu" in entry
                else value < self.state["best"]
            )
            if better:
                self.state.update(best=value, best_step=step, bad_evals=0)
            else:
                self.state["bad_evals"] += 1
                stop = cfg.train.patience > 0 and self.state["bad_evals"] >= cfg.train.patience
        stop = not distributed.all_ok(not stop, self.dist)
        return stop, not distributed.all_ok(not better, self.dist)

    def _save(self, step: int) -> None:
        """Rank 0 writes the checkpoint and moves the pointers; the others wait for it."""
        if self.dist.is_main:
            folder = self.ckpt_root / f"step-{step:06d}"
            state = {
                "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict() if self.scaler is not None else {},
                "rng": _rng_state(),
                "trainer": self.state,
                "world_size": self.dist.world_size,
            }
            ckpt.save_checkpoint(
                folder,
                model=self.model,
                config=self.config.to_dict(),
                tokenizer_json=self.tokenizer_json,
                trainer_state=state,
                step=step,
            )
            ckpt.set_pointer(self.run_dir, "last", folder)
            if self.state["best_step"] is not None:
                best = self.ckpt_root / f"step-{self.state['best_step']:06d}"
                if best.exists():
                    ckpt.set_pointer(self.run_dir, "best", best)
            elif not (self.run_dir / "best").exists():
                ckpt.set_pointer(self.run_dir, "best", folder)
            self._prune()
        distributed.barrier(self.dist)

    def _prune(self) -> None:
        """Keep the newest train.keep_last checkpoints and the best; delete older ones (after the new one exists)."""
        keep = {p for _, p in ckpt.list_checkpoints(self.ckpt_root)[-self.config.train.keep_last :]}
        best = self.run_dir / "best"
        if best.exists():
            keep.add(best.resolve())
        for _, path in ckpt.list_checkpoints(self.ckpt_root):
            if path.resolve() not in {p.resolve() for p in keep}:
                shutil.rmtree(path, ignore_errors=True)
