"""The training loss: cross-entropy with label smoothing (paper §5.4, eps_ls = 0.1) that ignores padding.

Shapes: N tokens, V vocab.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


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
        nll_rows = -log_probs.gather(1, target[:, None]).squeeze(1)  # (N,)
        nll = (nll_rows * keep).sum()
        if smoothing == 0.0:
            loss = nll.clone()
        else:
            uniform_rows = -log_probs.mean(dim=-1)  # (N,): cross-entropy against the uniform distribution
            loss = ((1.0 - smoothing) * nll_rows + smoothing * uniform_rows).mul(keep).sum()
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
