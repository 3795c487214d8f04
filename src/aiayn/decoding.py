"""Decoding with the KV cache: greedy, beam search and sampling. Uses only `model.encode` / `model.decode`
(or a language model's forward) and an explicit cache.

Shapes: B batch, K beam size, S source length, T target length, V vocab, D d_model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from aiayn.config import BOS_ID, EOS_ID, PAD_ID
from aiayn.model.masks import padding_mask

# Score of a hypothesis that does not exist (the K - 1 copies of the first beam at step 1; empty n-best slots).
NEG = torch.finfo(torch.float32).min
# Paper §6.1: "maximum output length ... input length + 50".
EXTRA_LENGTH = 50


@dataclass(frozen=True)
class Hypothesis:
    """One output of the decoder.

    tokens: the generated ids, without BOS and without the final EOS. score: the sum of the token
    log-probabilities (the EOS included) divided by the length penalty. finished: True when the hypothesis ended
    with EOS, False when it was stopped by the length limit.
    """

    tokens: list[int]
    score: float
    finished: bool


# top_k's block size: the k best of a row lie in the k blocks with the largest maxima.
TOP_K_BLOCK = 128


def top_k(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The k largest values of each row of x (R, N) and their column indices, largest first: x.topk(k, dim=1).

    For long rows and small k (beam search ranks K * V extensions for 2K of them) it first takes the maximum of
    each block of TOP_K_BLOCK columns and then ranks only the columns of the k blocks with the largest maxima: an
    element among the k largest has at most k - 1 larger elements, so at most k - 1 other blocks have a larger
    maximum than its own. On a 2-core CPU this is ~1.7x faster for one row of 32,000 and ~2.8x for 64 rows
    (benchmarks/RESULTS.md). Values equal x.topk's; among equal values the chosen indices may differ.
    """
    R, N = x.shape
    if N < 32 * TOP_K_BLOCK or k > N // (4 * TOP_K_BLOCK):
        return x.topk(k, dim=1)
    blocks, B = N // TOP_K_BLOCK, TOP_K_BLOCK
    full = x[:, : blocks * B].view(R, blocks, B)  # (R, blocks, B); the last N % B columns stay candidates as they are
    best_blocks = full.amax(dim=2).topk(k, dim=1).indices  # (R, k)
    inside = full.gather(1, best_blocks[:, :, None].expand(-1, -1, B)).view(R, k * B)  # (R, k * B)
    if blocks * B == N:
        values, at = inside.topk(k, dim=1)  # (R, k)
        return values, best_blocks.gather(1, at // B) * B + at % B
    values, at = torch.cat([inside, x[:, blocks * B :]], dim=1).topk(k, dim=1)  # (R, k)
    in_block = best_blocks.gather(1, (at // B).clamp(max=k - 1)) * B + at % B  # a column of a chosen block
    return values, torch.where(at < k * B, in_block, at - k * B + blocks * B)  # or one of the last columns


def length_penalty(length: int | torch.Tensor, alpha: float) -> float | torch.Tensor:
    """((5 + length) / 6) ** alpha (Wu et al. 2016; the paper uses alpha 0.6). length counts the EOS."""
    return ((5 + length) / 6) ** alpha


def check_options(
    beam_size: int = 1,
    alpha: float = 0.0,
    n_best: int = 1,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    max_len: int | None = None,
) -> None:
    """Raise ValueError naming the first invalid decoding option and its allowed range."""
    if not isinstance(beam_size, int) or beam_size < 1:
        raise ValueError(f"beam_size={beam_size!r} must be an integer >= 1")
    if not (isinstance(alpha, int | float) and alpha >= 0 and math.isfinite(alpha)):
        raise ValueError(f"alpha={alpha!r} must be a finite number >= 0")
    if not isinstance(n_best, int) or not 1 <= n_best <= beam_size:
        raise ValueError(f"n_best={n_best!r} must be an integer between 1 and beam_size ({beam_size})")
    if not (isinstance(temperature, int | float) and temperature >= 0 and math.isfinite(temperature)):
        raise ValueError(f"temperature={temperature!r} must be a finite number >= 0 (0 = greedy)")
    if not isinstance(top_k, int) or top_k < 0:
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0 (0 = no top-k filter)")
    if not (isinstance(top_p, int | float) and 0 < top_p <= 1):
        raise ValueError(f"top_p={top_p!r} must be in (0, 1] (1 = no nucleus filter)")
    if max_len is not None and (not isinstance(max_len, int) or max_len < 1):
        raise ValueError(f"max_len={max_len!r} must be an integer >= 1 (or None: source length + {EXTRA_LENGTH})")


def length_limits(model, src: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """New tokens allowed per source (B,): source length + 50 by default, or max_len; never more positions
    than the model has (model.config.max_len)."""
    if max_len is None:
        limits = (src != model.config.pad_id).sum(dim=1) + EXTRA_LENGTH
    else:
        limits = torch.full((src.shape[0],), max_len, dtype=torch.long, device=src.device)
    return limits.clamp(max=model.config.max_len)


@torch.inference_mode()
def greedy(
    model, src: torch.Tensor, max_len: int | None = None, bos_id: int = BOS_ID, eos_id: int = EOS_ID
) -> list[list[int]]:
    """The ids of `greedy_search` (without BOS, cut before EOS), one list per source."""
    return [h.tokens for h in greedy_search(model, src, max_len, bos_id, eos_id)]


@torch.inference_mode()
def greedy_search(
    model,
    src: torch.Tensor,
    max_len: int | None = None,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    min_len: int = 0,
) -> list[Hypothesis]:
    """Pick the most probable next token at each step, for a batch of sources at once.

    src: (B, S) right-padded ids. A row stops at its EOS or after its length limit (`length_limits`); decoding
    stops when every row has stopped. The encoder runs once; each step feeds only the newest token and reuses
    past keys/values from the cache. Scores use no length penalty (the sum of log-probabilities). EOS cannot be
    chosen before min_len tokens (benchmarks use it to force a fixed output length).
    """
    model.eval()
    src_mask = padding_mask(src, model.config.pad_id)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D)
    limits = length_limits(model, src, max_len)  # (B,)
    cache = model.new_cache(int(limits.max()))
    B = src.shape[0]
    token = torch.full((B, 1), bos_id, dtype=torch.long, device=src.device)  # (B, 1)
    done = torch.zeros(B, dtype=torch.bool, device=src.device)
    score = torch.zeros(B, device=src.device)
    length = torch.zeros(B, dtype=torch.long, device=src.device)  # tokens produced, EOS included
    steps = []
    # At batch 1 a compiled step takes ~1 ms, and each small bookkeeping operation here ~5-10 us: the masks are
    # applied only once some row has finished, and the length limits checked only from the shortest one on.
    any_done, first_limit = False, int(limits.min())
    for step in range(1, int(limits.max()) + 1):
        logp = model.decode(token, memory, src_mask, cache)[:, -1].float().log_softmax(dim=-1)  # (B, V)
        if step <= min_len:
            logp.select(1, eos_id).fill_(NEG)
        best, token = logp.max(dim=-1, keepdim=True)  # (B, 1)
        if any_done:
            token = token.masked_fill(done[:, None], PAD_ID)
            score += best[:, 0].masked_fill(done, 0.0)
            length += ~done
        else:
            score += best[:, 0]
            length += 1
        steps.append(token)
        done |= token[:, 0] == eos_id
        if step >= first_limit:
            done |= limits <= step
        n_done = int(done.sum())
        if n_done == B:
            break
        any_done = n_done > 0
    out = torch.cat(steps, dim=1).tolist()  # (B, steps)
    hyps = []
    for row, s, n in zip(out, score.tolist(), length.tolist(), strict=True):
        row = row[:n]
        finished = bool(row) and row[-1] == eos_id
        hyps.append(Hypothesis(row[:-1] if finished else row, s, finished))
    return hyps


@torch.inference_mode()
def beam_search(
    model,
    src: torch.Tensor,
    beam_size: int = 4,
    alpha: float = 0.6,
    max_len: int | None = None,
    n_best: int = 1,
    bos_id: int = BOS_ID,
    eos_id: int = EOS_ID,
    min_len: int = 0,
) -> list[list[Hypothesis]]:
    """Beam search (paper §6.1: beam 4, length penalty alpha 0.6) for a batch of sources at once.

    Keeps the `beam_size` best prefixes per source. At each step the 2K best (prefix, token) extensions are
    ranked by total log-probability; those among the first K that end in EOS become finished hypotheses, scored
    by log-probability / length_penalty(length, alpha); the K best that do not end in EOS carry on. A source is
    done when K hypotheses have finished, or at its length limit, where its open prefixes are kept as unfinished
    hypotheses. Finished sources leave the batch, and decoding stops when none is left. Returns, per source, its
    `n_best` hypotheses, best first. EOS cannot be chosen before min_len tokens.
    """
    check_options(beam_size=beam_size, alpha=alpha, n_best=n_best, max_len=max_len)
    model.eval()
    K, device = beam_size, src.device
    B, S = src.shape
    src_mask = padding_mask(src, model.config.pad_id)  # (B, 1, 1, S)
    memory = model.encode(src, src_mask)  # (B, S, D)
    limits = length_limits(model, src, max_len)  # (B,)
    L = int(limits.max())
    # Each source is repeated K times: rows b*K ... b*K + K - 1 hold its beams.
    memory = memory.repeat_interleave(K, dim=0)  # (B*K, S, D)
    src_mask = src_mask.repeat_interleave(K, dim=0)  # (B*K, 1, 1, S)
    cache = model.new_cache(L)
    seqs = torch.full((B * K, 1), bos_id, dtype=torch.long, device=device)  # (B*K, t): BOS + tokens so far
    scores = torch.full((B, K), NEG, device=device)  # total log-probability of each open prefix
    scores[:, 0] = 0.0  # at the start the K beams are the same prefix: keep one
    # Finished hypotheses per source, best first: score, length (EOS included), tokens, ended with EOS.
    fin_score = torch.full((B, K), NEG, device=device)
    fin_len = torch.zeros(B, K, dtype=torch.long, device=device)
    fin_tokens = torch.full((B, K, L), PAD_ID, dtype=torch.long, device=device)
    fin_eos = torch.zeros(B, K, dtype=torch.bool, device=device)
    active = torch.arange(B, device=device)  # the original index of each source still decoding
    results: list[list[Hypothesis]] = [[] for _ in range(B)]
    rank = torch.arange(2 * K, device=device)  # (2K,)

    for step in range(1, L + 1):
        n = active.shape[0]
        logits = model.decode(seqs[:, -1:], memory, src_mask, cache)[:, -1]  # (n*K, V)
        V = logits.shape[-1]
        logp = logits.float().log_softmax(dim=-1).view(n, K, V)  # (n, K, V)
        if step <= min_len:
            logp[:, :, eos_id] = NEG
        top, flat = top_k((scores[:, :, None] + logp).view(n, K * V), min(2 * K, K * V))  # (n, 2K)
        beam, token = flat // V, flat % V  # (n, 2K) which prefix each extension continues, and with what
        is_eos = token == eos_id
        at_limit = limits[active] <= step  # (n,)
        keep = None
        if not bool(is_eos[:, :K].any() | at_limit.any()):
            # Most steps: no EOS among the K best and no source at its limit, so nothing finishes and the K best
            # extensions carry on as they are (one check instead of the bookkeeping below).
            scores, next_token, from_beam = top[:, :K], token[:, :K], beam[:, :K]  # (n, K)
        else:
            # The K best extensions that do not end in EOS carry on (there are >= K: at most K of 2K end in EOS).
            go_on = ~is_eos & ((~is_eos).cumsum(dim=1) <= K)  # (n, 2K)
            finish = (is_eos & (rank[: top.shape[1]] < K)) | (go_on & at_limit[:, None])  # (n, 2K)
            finish &= top > NEG / 2  # never a copy of the first beam that was dropped at step 1
            if bool(finish.any()):
                # Merge the hypotheses finishing now into each source's K best finished ones.
                prefix = seqs.view(n, K, step)[:, :, 1:].gather(1, beam[:, :, None].expand(-1, -1, step - 1))
                new_tokens = torch.cat([prefix, token[:, :, None]], dim=2)  # (n, 2K, step)
                new_tokens = torch.nn.functional.pad(new_tokens, (0, L - step), value=PAD_ID)  # (n, 2K, L)
                new_score = torch.where(finish, top / length_penalty(step, alpha), NEG)  # (n, 2K)
                all_score = torch.cat([fin_score, new_score], dim=1)  # (n, 3K)
                fin_score, pick = all_score.topk(K, dim=1)  # (n, K), best first
                fin_len = torch.cat([fin_len, torch.full_like(token, step)], dim=1).gather(1, pick)
                fin_eos = torch.cat([fin_eos, is_eos & finish], dim=1).gather(1, pick)
                fin_tokens = torch.cat([fin_tokens, new_tokens], dim=1)  # (n, 3K, L)
                fin_tokens = fin_tokens.gather(1, pick[:, :, None].expand(-1, -1, L))  # (n, K, L)

                # A source is done with K finished hypotheses (or at its limit, where its open prefixes just
                # finished).
                done = at_limit | (fin_score[:, K - 1] > NEG)  # (n,)
                if bool(done.any()):
                    _collect(
                        results, active[done], fin_score[done], fin_len[done], fin_tokens[done], fin_eos[done], n_best
                    )
                    keep = ~done
                    if not bool(keep.any()):
                        break
            order = (~go_on).to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (n, K): positions of go_on
            scores, next_token, from_beam = top.gather(1, order), token.gather(1, order), beam.gather(1, order)

        # Carry on with the K best open prefixes of the remaining sources (keep None: all of them).
        rows = torch.arange(n, device=device)[:, None] * K + from_beam  # (n, K)
        shrink = keep is not None
        if shrink:
            scores, next_token, rows = scores[keep], next_token[keep], rows[keep]  # (m, K)
        rows = rows.view(-1)  # (m*K,)
        cache.reorder(rows, cross=shrink)
        seqs = torch.cat([seqs.index_select(0, rows), next_token.reshape(-1, 1)], dim=1)  # (m*K, step+1)
        if shrink:
            memory = memory.view(n, K, S, -1)[keep].flatten(0, 1)  # (m*K, S, D)
            src_mask = src_mask.view(n, K, 1, 1, S)[keep].flatten(0, 1)  # (m*K, 1, 1, S)
            active = active[keep]
            fin_score, fin_len, fin_tokens, fin_eos = fin_score[keep], fin_len[keep], fin_tokens[keep], fin_eos[keep]
    return results


def _collect(
    results: list[list[Hypothesis]],
    index: torch.Tensor,
    score: torch.Tensor,
    length: torch.Tensor,
    tokens: torch.Tensor,
    eos: torch.Tensor,
    n_best: int,
) -> None:
    """Store the n_best finished hypotheses of the sources `index` (their rows of the finished tensors)."""
    for b, s_row, n_row, t_row, e_row in zip(
        index.tolist(), score.tolist(), length.tolist(), tokens.tolist(), eos.tolist(), strict=True
    ):
        for s, n, t, e in list(zip(s_row, n_row, t_row, e_row, strict=True))[:n_best]:
            if s > NEG:
                results[b].append(Hypothesis(t[: n - 1] if e else t[:n], s, e))


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
) -> list[list[int]]:
    """Continue each row of `prompt` (B, P) of a language model, drawing from softmax(logits / temperature),
    after the top-k / top-p filters. Temperature 0 is greedy.

    Returns the new ids per row (cut before EOS when eos_id is given; generation stops once every row has one).
    The prompt runs once through the model; then each step feeds only the newest token, reusing the KV cache.
    A prompt longer than the model's positions keeps its last max_len - 1 tokens. At max_len positions
    generation stops, unless slide=True: then the context is re-read from its last 3/4 (a fresh cache, positions
    from 0 again) and generation goes on, so the model always sees between 3/4 and all of its context.
    """
    check_options(temperature=temperature, top_k=top_k, top_p=top_p)
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
        if temperature == 0:
            token = logits.argmax(dim=-1, keepdim=True)  # (B, 1)
        else:
            probs = filter_logits(logits.float() / temperature, top_k, top_p).softmax(dim=-1)
            token = torch.multinomial(probs, 1, generator=generator)  # (B, 1)
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
