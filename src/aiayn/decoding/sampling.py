"""Sampling from a causal language model (aiayn.model.protocols.CausalLM) with the KV cache: temperature,
top-k and nucleus (top-p) filters. Uses only the model's forward with an explicit cache.

Shapes: B batch, P prompt length, V vocab.
"""

from __future__ import annotations

import torch

from aiayn.config import DecodeConfig
from aiayn.decoding.search import StopCheck, _check


def filter_logits(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """Keep the top_k most probable tokens (0 = all) and the smallest set whose probability reaches top_p
    (nucleus sampling, Holtzman et al. 2020); the rest get the lowest finite logit, so softmax gives them 0.
    logits: (B, V)."""
    if top_k > 0:
        kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, torch.finfo(logits.dtype).min)
    if top_p < 1.0:
        sorted_logits, order = logits.sort(dim=-1, descending=True)  # (B, V)
        probs = sorted_logits.softmax(dim=-1)
        # A token is dropped when the tokens before it already reach top_p: the first token always stays.
        drop_sorted = probs.cumsum(dim=-1) - probs >= top_p
        drop = drop_sorted.scatter(1, order, drop_sorted)  # back to vocabulary order
        logits = logits.masked_fill(drop, torch.finfo(logits.dtype).min)
    return logits


def _next_token(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator) -> torch.Tensor:
    """One token per row (B, 1): the argmax at temperature 0, else a draw from the filtered softmax."""
    if temperature < torch.finfo(torch.float32).tiny:  # 0, or so small that fp32 cannot divide by it: the limit
        return logits.argmax(dim=-1, keepdim=True)
    # Shifted so that the largest logit is 0 before dividing: however small the temperature, the scaled logits are
    # <= 0 and at worst -inf (probability exactly 0), never an overflow to +inf and a NaN softmax.
    logits = logits.float()
    scaled = (logits - logits.amax(dim=-1, keepdim=True)) / temperature
    probs = filter_logits(scaled, top_k, top_p).softmax(dim=-1)
    return torch.multinomial(probs, 1, generator=generator)


@torch.inference_mode()
def sample(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
    slide: bool = False,
    should_stop: StopCheck | None = None,
) -> list[list[int]]:
    """Continue each row of `prompt` (B, P) of a language model, drawing from softmax(logits / temperature),
    after the top-k / top-p filters. Temperature 0 is greedy.

    Returns the new ids per row (cut before EOS when eos_id is given; generation stops once every row has one).
    The prompt runs once through the model; then each step feeds only the newest token, reusing the KV cache.
    A prompt longer than the model's positions keeps its last max_len - 1 tokens. At max_len positions
    generation stops, unless slide=True: then the context is re-read from its last 3/4 (a fresh cache, positions
    from 0 again) and generation goes on, so the model always sees between 3/4 and all of its context.
    """
    DecodeConfig(temperature=temperature, top_k=top_k, top_p=top_p)  # validates them
    model.eval()
    max_len = model.config.max_len
    context = prompt[:, -(max_len - 1) :]  # (B, P') the tokens the model can see
    if not slide:
        max_new_tokens = min(max_new_tokens, max_len - context.shape[1])
    cache = model.new_cache(min(context.shape[1] + max(max_new_tokens, 0), max_len))
    logits = model(context, cache=cache)[:, -1]  # (B, V)
    steps: list[torch.Tensor] = []
    done = torch.zeros(prompt.shape[0], dtype=torch.bool, device=prompt.device)
    for i in range(max(max_new_tokens, 0)):
        _check(should_stop)
        token = _next_token(logits, temperature, top_k, top_p, generator)  # (B, 1)
        steps.append(token)
        if eos_id is not None:
            done |= token[:, 0] == eos_id
            if bool(done.all()):
                break
        if i == max_new_tokens - 1:
            break
        if cache.length >= max_len:  # only with slide: re-read the last 3/4 of the context
            keep = torch.cat([context, *steps], dim=1)[:, -(3 * max_len // 4) :]  # (B, 3/4 max_len)
            cache = model.new_cache(max_len)
            logits = model(keep, cache=cache)[:, -1]
        else:
            logits = model(token, cache=cache)[:, -1]
    out = torch.cat(steps, dim=1).tolist() if steps else [[] for _ in range(prompt.shape[0])]
    return [row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row for row in out]
