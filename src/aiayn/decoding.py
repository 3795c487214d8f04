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
