"""The training loss: cross-entropy with label smoothing (paper §5.4, eps_ls = 0.1) that ignores padding.

Two forms with the same value and gradients: `label_smoothed_loss` over given logits, and
`linear_label_smoothed_loss`, which takes the decoder's last hidden states and the pre-softmax Linear's weight and
never builds the whole (N, V) logits (what the trainer uses). Shapes: N tokens, D d_model, V vocab.
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch
from torch.autograd.function import once_differentiable


def _summed_losses(log_probs, target, keep, smoothing):
    """(smoothed loss, nll) summed over the rows where keep is 1: log_probs (N, V), target (N,), keep (N,)."""
    nll_rows = -log_probs.gather(1, target[:, None]).squeeze(1)  # (N,)
    nll = (nll_rows * keep).sum()
    if smoothing == 0.0:
        return nll.clone(), nll
    uniform_rows = -log_probs.mean(dim=-1)  # (N,): cross-entropy against the uniform distribution
    return ((1.0 - smoothing) * nll_rows + smoothing * uniform_rows).mul(keep).sum(), nll


class _SmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of the rows where keep is 1, with its gradient written by hand.

    The gradient with respect to the logits z is the closed form g * (softmax(z) - (1 - eps) onehot(y) - eps / V)
    for a kept row with upstream gradient g. Written out, the backward is an exp and a multiply over the (N, V)
    logits and a scatter over N; autograd's version of the same loss (logsumexp, gather, mean) made eight passes
    over (N, V) and took a fifth of a Multi30k-tiny training step on CPU (benchmarks/RESULTS.md).
    """

    @staticmethod
    def forward(ctx, logits, target, keep, smoothing):  # (N, V) fp32, (N,), (N,) fp32, float
        log_probs = torch.log_softmax(logits, dim=-1)  # (N, V)
        loss, nll = _summed_losses(log_probs, target, keep, smoothing)
        ctx.save_for_backward(log_probs, target, keep)
        ctx.smoothing = smoothing
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_nll):
        log_probs, target, keep = ctx.saved_tensors
        eps, vocab = ctx.smoothing, log_probs.shape[-1]
        g = grad_loss * keep  # (N,): padding rows get no gradient
        grad = log_probs.exp_()  # (N, V) softmax, in the saved buffer: backward runs once
        if eps:
            grad.sub_(eps / vocab)
        grad.mul_(g[:, None])
        grad.scatter_add_(1, target[:, None], (-(1.0 - eps) * g)[:, None])
        return grad, None, None, None


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed losses over the non-padding target tokens: (smoothed loss, plain negative log-likelihood, tokens).

    The smoothed target puts 1 - eps on the true token and eps spread evenly over all V tokens (PyTorch's
    definition, as in Szegedy et al. 2016). Sums, not means: the caller divides by the token count of the whole
    accumulated batch, so that every token weighs the same however the batch was split. The log-softmax runs in
    fp32 even under bf16 autocast, so large logits cannot overflow.
    """
    logits = logits.reshape(-1, logits.shape[-1])  # (N, V)
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
    target = target.reshape(-1)  # (N,)
    keep_mask = target != pad_id  # (N,)
    tokens = int(keep_mask.sum())
    # Padding rows are zeroed by `keep` instead of being indexed out: boolean indexing of the (N, V) logits, and
    # its index_put backward, took 15% of a CPU training step.
    loss, nll = _SmoothedCrossEntropy.apply(logits, target, keep_mask.to(logits.dtype), float(smoothing))
    return loss, nll, tokens


def chunk_rows(vocab: int, device: torch.device) -> int:
    """Rows of logits per chunk in `linear_label_smoothed_loss`: ~2M values (8 MB in fp32) on a CPU, the fastest
    of the sizes tried (benchmarks/bench_loss.py: 1.15x the whole-batch form for Multi30k-tiny); on a GPU large
    chunks keep its kernels busy (128M values, 512 MB in fp32)."""
    return max(1, (2**27 if device.type == "cuda" else 2**21) // vocab)


class _LinearSmoothedCrossEntropy(torch.autograd.Function):
    """Summed label-smoothed cross-entropy of softmax(hidden @ weight.T + bias), chunk by chunk of rows.

    The loss is the last operation of the graph and its gradient has a closed form, so the gradients with respect
    to hidden, weight and bias are computed in the forward, one chunk at a time, while that chunk's logits are
    still in cache; backward only scales them by the upstream gradient. For a kept row with probabilities p,
    the gradient with respect to its logits is p - (1 - eps) onehot(y) - eps / V; the constant eps / V term is
    applied to the products (through the column sums of weight and hidden) instead of to every logit.
    """

    @staticmethod
    def forward(ctx, hidden, weight, bias, target, keep, smoothing, rows, low):
        # hidden (N, D), weight (V, D), bias (V,) or None, target (N,), keep (N,) 1/0 in the softmax's dtype,
        # smoothing float, rows per chunk, low: the dtype of the matrix products (fp32, or bf16 / fp16 under
        # autocast). The softmax, the sums and the gradients are kept in keep's dtype (fp32, or fp64 for fp64).
        eps, (n_rows, _), vocab, acc = smoothing, hidden.shape, weight.shape[0], keep.dtype
        grads = any(ctx.needs_input_grad[:3])
        w = weight.to(low)  # (V, D)
        new = functools.partial(torch.zeros, dtype=acc, device=hidden.device)
        loss, nll = new(()), new(())
        if grads:
            grad_hidden = torch.empty(hidden.shape, dtype=acc, device=hidden.device)  # (N, D)
            grad_weight = new(weight.shape)  # (V, D)
            grad_bias = new(vocab) if bias is not None else None
            hk_sum = new(weight.shape[1])  # (D,)
        for start in range(0, n_rows, rows):
            h = hidden[start : start + rows]  # (n, D)
            t, k = target[start : start + rows], keep[start : start + rows]  # (n,)
            z = (h.to(low) @ w.t()).to(acc)  # (n, V) logits
            if bias is not None:
                z += bias.to(acc)
            log_probs = torch.log_softmax(z, dim=-1)  # (n, V)
            chunk_loss, chunk_nll = _summed_losses(log_probs, t, k, eps)
            loss += chunk_loss
            nll += chunk_nll
            if not grads:
                continue
            p = log_probs.exp_()  # (n, V) softmax, in place
            p.scatter_add_(1, t[:, None], torch.full_like(k[:, None], eps - 1.0))  # - (1 - eps) onehot(y)
            hk = h.to(acc) * k[:, None]  # (n, D): padding rows contribute nothing to the weight's gradient
            p_low = p.to(low)
            grad_hidden[start : start + rows] = p_low @ w
            grad_weight += p_low.t() @ hk.to(low)
            hk_sum += hk.sum(0)
            if grad_bias is not None:
                grad_bias += k @ p
        if grads:
            w_sum = weight.to(acc).sum(0)  # (D,)
            grad_hidden = grad_hidden.sub_((eps / vocab) * w_sum).mul_(keep[:, None])  # (N, D)
            grad_weight -= (eps / vocab) * hk_sum  # every row of the weight gets - eps / V * sum of kept h
            if grad_bias is not None:
                grad_bias -= (eps / vocab) * keep.sum()
            ctx.save_for_backward(grad_hidden, grad_weight, grad_bias)
            ctx.dtypes = (hidden.dtype, weight.dtype)
        ctx.mark_non_differentiable(nll)
        return loss, nll

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_loss, grad_nll):
        grad_hidden, grad_weight, grad_bias = ctx.saved_tensors
        hidden_dtype, weight_dtype = ctx.dtypes
        grad_hidden = (grad_hidden * grad_loss).to(hidden_dtype)
        grad_weight = (grad_weight * grad_loss).to(weight_dtype)
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_loss).to(weight_dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None, None


def linear_label_smoothed_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    target: torch.Tensor,
    smoothing: float,
    pad_id: int,
    rows: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`label_smoothed_loss(F.linear(hidden, weight, bias), ...)` without the whole (N, V) logits.

    hidden (..., D) are the states before the pre-softmax Linear, weight (V, D) and bias (V,) its parameters,
    target (...) the ids to predict. The logits are built `rows` at a time (default: `chunk_rows`), and the
    gradients are computed as they go, so memory for the logits falls from N * V values to rows * V. Under
    autocast the matrix products run in its dtype and the softmax in fp32, as they would for the two-step form.
    """
    if rows < 0:
        raise ValueError(f"linear_label_smoothed_loss: rows must be >= 0 (0: chunk_rows), got {rows}")
    d_model = hidden.shape[-1]
    hidden = hidden.reshape(-1, d_model)  # (N, D)
    target = target.reshape(-1)  # (N,)
    device = hidden.device
    acc = torch.promote_types(torch.promote_types(hidden.dtype, weight.dtype), torch.float32)  # fp32 or fp64
    low = torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type) else acc
    keep_mask = target != pad_id  # (N,)
    tokens = int(keep_mask.sum())
    rows = rows or chunk_rows(weight.shape[0], device)
    with torch.autocast(device.type, enabled=False):
        loss, nll = _LinearSmoothedCrossEntropy.apply(
            hidden, weight, bias, target, keep_mask.to(acc), float(smoothing), rows, low
        )
    return loss, nll, tokens


class LossModel(torch.nn.Module):
    """The model and its training loss as one module, the unit that DDP wraps: forward(*inputs, target) gives the
    summed (label-smoothed loss, nll) from the model's last hidden states (`hidden`, compiled or not) and its
    pre-softmax Linear, through `linear_label_smoothed_loss`, so no step holds the whole (tokens, V) logits."""

    def __init__(self, model: torch.nn.Module, hidden: Callable[..., torch.Tensor], smoothing: float,
                 pad_id: int) -> None:  # fmt: skip
        super().__init__()
        self.model, self.hidden, self.smoothing, self.pad_id = model, hidden, smoothing, pad_id

    def forward(self, *inputs: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        weight, bias = self.model.output_weight, self.model.output_bias
        loss, nll, _ = linear_label_smoothed_loss(self.hidden(*inputs), weight, bias, target, self.smoothing,
                                                  self.pad_id)  # fmt: skip
        return loss, nll
