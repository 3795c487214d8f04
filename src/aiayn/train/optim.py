"""The optimizer and the learning-rate schedules. Schedules are pure functions of the step (1-based), so a
resumed run needs only the step to continue the schedule exactly.
"""

from __future__ import annotations

import math

import torch

from aiayn.config import OptimConfig


def noam_lr(step: int, d_model: int, warmup: int, scale: float = 1.0) -> float:
    """§5.3: lrate = d_model^-0.5 * min(step^-0.5, step * warmup_steps^-1.5): linear warmup, then 1/sqrt(step)."""
    step = max(step, 1)
    return scale * d_model**-0.5 * min(step**-0.5, step * warmup**-1.5)


def inverse_sqrt_lr(step: int, peak: float, warmup: int) -> float:
    """Linear warmup to `peak` at `warmup`, then peak * sqrt(warmup / step) (fairseq's inverse_sqrt)."""
    step = max(step, 1)
    return peak * min(step / warmup, math.sqrt(warmup / step))


def cosine_lr(step: int, peak: float, warmup: int, total: int, floor: float = 0.0) -> float:
    """Linear warmup to `peak`, then half a cosine down to `floor` at step `total` (and `floor` after it)."""
    step = max(step, 1)
    if step <= warmup:
        return peak * step / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return floor + 0.5 * (peak - floor) * (1.0 + math.cos(math.pi * progress))


def learning_rate(step: int, optim: OptimConfig, d_model: int, max_steps: int) -> float:
    """The learning rate of optimizer step `step` (1-based) under the configured schedule."""
    if optim.schedule == "noam":
        return noam_lr(step, d_model, optim.warmup, optim.lr_scale)
    if optim.schedule == "inverse_sqrt":
        return inverse_sqrt_lr(step, optim.lr, optim.warmup)
    return cosine_lr(step, optim.lr, optim.warmup, max_steps, optim.min_lr)


def make_optimizer(model: torch.nn.Module, optim: OptimConfig) -> torch.optim.Optimizer:
    """§5.3: Adam with beta1 0.9, beta2 0.98, eps 1e-9 (AdamW when weight_decay > 0; norms and biases
    are not decayed). The learning rate is set before every step from `learning_rate`."""
    params = [p for p in model.parameters() if p.requires_grad]
    betas = (optim.beta1, optim.beta2)
    # One fused kernel for all parameters instead of ~10 small ops each: on CPU, 5.3 -> 1.3 ms per step for a
    # 4-layer d_model 128 model (a tenth of its training step).
    fused = all(p.device.type in ("cpu", "cuda") for p in params) or None
    if optim.weight_decay == 0.0:
        return torch.optim.Adam(params, lr=0.0, betas=betas, eps=optim.eps, fused=fused)
    decay = [p for p in params if p.ndim >= 2]
    rest = [p for p in params if p.ndim < 2]
    groups = [{"params": decay, "weight_decay": optim.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=0.0, betas=betas, eps=optim.eps, fused=fused)


def grad_norm(params: list[torch.nn.Parameter]) -> torch.Tensor:
    """The global L2 norm of the gradients (a 0-dim tensor; inf or nan when a gradient is not finite)."""
    return torch.nn.utils.get_total_norm([p.grad for p in params if p.grad is not None])


def norm_value(norm: torch.Tensor) -> float:
    """A norm from `grad_norm` as a float; with FSDP it is a DTensor, its value then the same on every process."""
    return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)


def optimizer_step(optimizer, scaler, lr: float, params: list[torch.nn.Parameter], clip_norm: float,
                   norm: torch.Tensor | None = None) -> None:  # fmt: skip
    """Set the learning rate, unscale (fp16), clip the global gradient norm (when clip_norm > 0; `norm`: that norm,
    computed already), step, zero."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    if scaler is not None:
        scaler.unscale_(optimizer)
    if clip_norm > 0:
        if norm is None:
            torch.nn.utils.clip_grad_norm_(params, clip_norm)
        else:
            torch.nn.utils.clip_grads_with_norm_(params, clip_norm, norm)
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)
