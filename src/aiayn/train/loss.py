"""The training loss: cross-entropy with label smoothing (paper §5.4, eps_ls = 0.1) that ignores padding.

Shapes: N tokens, V vocab.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def label_smoothed_loss(
    logits: torch.Tensor, target: torch.Tensor, smoothing: float, pad_id: int
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed losses over the non-padding target tokens: (smoothed loss, plain negative log-likelihood, tokens).

    The smoothed target puts 1 - eps on the true token and eps spread evenly over all V tokens (PyTorch's
    definition, as in Szegedy et al. 2016). Sums, not means: the caller divides by the token count of the whole
    accumulated batch, so that every token weighs the same however the batch was split. The log-softmax runs in
    fp32 even under bf16 autocast, so large logits cannot overflow.
    """
    logits = logits.reshape(-1, logits.shape[-1]).float()  # (N, V)
    target = target.reshape(-1)  # (N,)
    keep = target != pad_id
    tokens = int(keep.sum())
    if tokens == 0:  # nothing to learn from: a zero that still has a graph, so backward leaves zero grads
        zero = logits.sum() * 0.0
        return zero, zero.detach(), 0
    logits, target = logits[keep], target[keep]  # (N', V), (N',): drop padding before the big log-softmax
    log_probs = F.log_softmax(logits, dim=-1)
    nll = -log_probs.gather(1, target[:, None]).sum()
    if smoothing == 0.0:
        return nll, nll.detach(), tokens
    uniform = -log_probs.mean(dim=-1).sum()  # cross-entropy against the uniform distribution
    return (1.0 - smoothing) * nll + smoothing * uniform, nll.detach(), tokens
