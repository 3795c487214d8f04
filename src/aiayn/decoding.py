"""Decoding with the KV cache. Uses only `model.encode` / `model.decode` and an explicit cache.

Shapes: B batch, S source length, T target length, V vocab.
"""

from __future__ import annotations

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.model.masks import padding_mask


@torch.no_grad()
def greedy(model, src: torch.Tensor, max_len: int, bos_id: int = BOS_ID, eos_id: int = EOS_ID) -> list[list[int]]:
    """Pick the most probable next token at each step, for a batch of sources at once.

    src: (B, S) right-padded ids. Returns one list of ids per source, without BOS, cut before its EOS.
    Decoding stops when every sequence has produced EOS or after max_len new tokens. The encoder runs once;
    each step feeds only the newest token and reuses past keys/values from the cache.
    """
    src_mask = padding_mask(src, model.config.pad_id)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D)
    cache = model.new_cache()
    B = src.shape[0]
    token = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    finished = torch.zeros(B, dtype=torch.bool, device=src.device)
    steps = []
    for _ in range(max_len):
        logits = model.decode(token, memory, src_mask, cache)  # (B, 1, V)
        token = logits[:, -1].argmax(dim=-1, keepdim=True).masked_fill(finished[:, None], PAD_ID)  # (B, 1)
        steps.append(token)
        finished |= token[:, 0] == eos_id
        if finished.all():
            break
    out = torch.cat(steps, dim=1).tolist()  # (B, steps)
    return [row[: row.index(eos_id)] if eos_id in row else row for row in out]


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


@torch.no_grad()
def sample(
    model,
    prompt: torch.Tensor,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
    eos_id: int | None = None,
) -> list[list[int]]:
    """Continue each row of `prompt` (B, P) of a language model, drawing from softmax(logits / temperature).

    Temperature 0 is greedy. Returns the new ids per row (cut before EOS when eos_id is given). The prompt runs
    once through the model; then each step feeds only the newest token, reusing the KV cache. Generation stops
    at model.config.max_len positions.
    """
    if not temperature >= 0:
        raise ValueError(f"temperature={temperature} must be >= 0 (0 = greedy)")
    max_new_tokens = min(max_new_tokens, model.config.max_len - prompt.shape[1])
    model.eval()
    cache = model.new_cache()
    logits = model(prompt, cache=cache)[:, -1]  # (B, V)
    steps = []
    for _ in range(max(max_new_tokens, 0)):
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
        steps.append(token)
        if eos_id is not None and bool((torch.cat(steps, 1) == eos_id).any(1).all()):
            break
        logits = model(token, cache=cache)[:, -1]
    out = torch.cat(steps, dim=1).tolist() if steps else [[] for _ in range(prompt.shape[0])]
    return [row[: row.index(eos_id)] if eos_id is not None and eos_id in row else row for row in out]
