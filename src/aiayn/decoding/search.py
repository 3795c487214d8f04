"""Greedy and beam search with the KV cache, for any sequence-to-sequence model (aiayn.model.protocols.
Seq2SeqModel): they use only `encode`, `decode`, `new_cache` and the model's special ids, with the cache passed
explicitly.

Shapes: B batch, K beam size, S source length, T target length, L length limit, V vocab, D d_model.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from aiayn.config import DECODE_DEFAULTS as D
from aiayn.config import EXTRA_LENGTH, DecodeConfig
from aiayn.model.masks import padding_mask

# Score of a hypothesis that does not exist (the K - 1 copies of the first beam at step 1; empty n-best slots).
NEG = torch.finfo(torch.float32).min
# block_topk's block size: the k best of a row lie in the k blocks with the largest maxima.
TOP_K_BLOCK = 128

StopCheck = Callable[[], bool]  # called once per decoding step; True cancels the search


class Cancelled(Exception):
    """Decoding was stopped by its cancellation check (a server's deadline, a client that went away)."""


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


def block_topk(x: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
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


def length_limits(model, src: torch.Tensor, max_len: int | None) -> torch.Tensor:
    """New tokens allowed per source (B,): source length + 50 by default, or max_len; never more positions
    than the model has (model.config.max_len)."""
    if max_len is None:
        limits = (src != model.config.pad_id).sum(dim=1) + EXTRA_LENGTH
    else:
        limits = torch.full((src.shape[0],), max_len, dtype=torch.long, device=src.device)
    return limits.clamp(max=model.config.max_len)


def _banned(model, eos_id: int, device: torch.device) -> torch.Tensor:
    """The ids decoding never picks: the model's never-emitted ones (padding, the start token), as a tensor."""
    ids = [i for i in model.config.special_ids.never_emit if i != eos_id]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _ban(logp: torch.Tensor, banned: torch.Tensor, step: int, min_len: int, eos_id: int) -> None:
    """In place over the last dimension: banned ids, and EOS before min_len tokens, get NEG."""
    logp.index_fill_(-1, banned, NEG)
    if step <= min_len:
        logp.select(-1, eos_id).fill_(NEG)


def _check(should_stop: StopCheck | None) -> None:
    if should_stop is not None and should_stop():
        raise Cancelled("decoding cancelled")


@torch.inference_mode()
def greedy(model, src: torch.Tensor, max_len: int | None = None, bos_id: int | None = None,
           eos_id: int | None = None) -> list[list[int]]:  # fmt: skip
    """The ids of `greedy_search` (without BOS, cut before EOS), one list per source."""
    return [h.tokens for h in greedy_search(model, src, max_len, bos_id, eos_id)]


@torch.inference_mode()
def greedy_search(
    model,
    src: torch.Tensor,
    max_len: int | None = None,
    bos_id: int | None = None,
    eos_id: int | None = None,
    min_len: int = 0,
    should_stop: StopCheck | None = None,
) -> list[Hypothesis]:
    """Pick the most probable next token at each step, for a batch of sources at once.

    src: (B, S) right-padded ids. A row stops at its EOS or after its length limit (`length_limits`); decoding
    stops when every row has stopped. The encoder runs once; each step feeds only the newest token and reuses
    past keys/values from the cache. Scores use no length penalty (the sum of log-probabilities). EOS cannot be
    chosen before min_len tokens (benchmarks use it to force a fixed output length); the model's never-emitted
    ids (padding, the start token) never are. bos_id / eos_id default to the model's special ids.
    """
    ids = model.config.special_ids
    bos_id, eos_id = ids.bos if bos_id is None else bos_id, ids.eos if eos_id is None else eos_id
    model.eval()
    src_mask = padding_mask(src, ids.pad)  # (B, 1, 1, S)
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
    banned = _banned(model, eos_id, src.device)
    for step in range(1, int(limits.max()) + 1):
        _check(should_stop)
        logp = model.decode(token, memory, src_mask, cache)[:, -1].float().log_softmax(dim=-1)  # (B, V)
        _ban(logp, banned, step, min_len, eos_id)
        best, token = logp.max(dim=-1, keepdim=True)  # (B, 1)
        if any_done:
            token = token.masked_fill(done[:, None], ids.pad)
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
    return _greedy_hypotheses(torch.cat(steps, dim=1).tolist(), score.tolist(), length.tolist(), eos_id)


def _greedy_hypotheses(out: list[list[int]], scores: list[float], lengths: list[int], eos_id: int) -> list[Hypothesis]:
    hyps = []
    for row, s, n in zip(out, scores, lengths, strict=True):
        row = row[:n]
        finished = bool(row) and row[-1] == eos_id
        hyps.append(Hypothesis(row[:-1] if finished else row, s, finished))
    return hyps


@dataclass
class BeamState:
    """Everything beam search carries from step to step, for the n sources still decoding (rows b*K .. b*K + K - 1
    of the per-beam tensors belong to source b): open prefixes and their scores, the K best finished hypotheses
    per source, and the sources' memory. `keep(rows)` drops finished sources from all of them at once."""

    active: torch.Tensor  # (n,) the original index of each source
    limits: torch.Tensor  # (n,) new tokens allowed
    memory: torch.Tensor  # (n*K, S, D)
    src_mask: torch.Tensor  # (n*K, 1, 1, S)
    seqs: torch.Tensor  # (n*K, t) BOS + tokens so far
    scores: torch.Tensor  # (n, K) total log-probability of each open prefix
    fin_score: torch.Tensor  # (n, K) finished hypotheses, best first: score / length penalty
    fin_len: torch.Tensor  # (n, K) their lengths, EOS included
    fin_tokens: torch.Tensor  # (n, K, L)
    fin_eos: torch.Tensor  # (n, K) whether each ended with EOS
    pad_id: int  # fills fin_tokens past each hypothesis's end

    @classmethod
    def start(cls, memory, src_mask, limits, K: int, bos_id: int, pad_id: int) -> BeamState:
        B, device, L = memory.shape[0], memory.device, int(limits.max())
        scores = torch.full((B, K), NEG, device=device)
        scores[:, 0] = 0.0  # at the start the K beams are the same prefix: keep one
        return cls(
            active=torch.arange(B, device=device),
            limits=limits,
            memory=memory.repeat_interleave(K, dim=0),  # (B*K, S, D): each source repeated K times
            src_mask=src_mask.repeat_interleave(K, dim=0),  # (B*K, 1, 1, S)
            seqs=torch.full((B * K, 1), bos_id, dtype=torch.long, device=device),
            scores=scores,
            fin_score=torch.full((B, K), NEG, device=device),
            fin_len=torch.zeros(B, K, dtype=torch.long, device=device),
            fin_tokens=torch.full((B, K, L), pad_id, dtype=torch.long, device=device),
            fin_eos=torch.zeros(B, K, dtype=torch.bool, device=device),
            pad_id=pad_id,
        )

    def keep(self, rows: torch.Tensor, K: int) -> None:
        """Keep the sources where `rows` (n,) is True."""
        n = rows.shape[0]
        S = self.memory.shape[1]
        self.memory = self.memory.view(n, K, S, -1)[rows].flatten(0, 1)  # (m*K, S, D)
        self.src_mask = self.src_mask.view(n, K, 1, 1, S)[rows].flatten(0, 1)  # (m*K, 1, 1, S)
        for name in ("active", "limits", "fin_score", "fin_len", "fin_tokens", "fin_eos"):
            setattr(self, name, getattr(self, name)[rows])



@torch.inference_mode()
def beam_search(
    model,
    src: torch.Tensor,
    beam_size: int = D.beam_size,
    alpha: float = D.alpha,
    max_len: int | None = None,
    n_best: int = 1,
    bos_id: int | None = None,
    eos_id: int | None = None,
    min_len: int = 0,
    should_stop: StopCheck | None = None,
) -> list[list[Hypothesis]]:
    """Beam search (paper §6.1: beam 4, length penalty alpha 0.6) for a batch of sources at once.

    Keeps the `beam_size` best prefixes per source. At each step the 2K best (prefix, token) extensions are
    ranked by total log-probability; those among the first K that end in EOS become finished hypotheses, scored
    by log-probability / length_penalty(length, alpha); the K best that do not end in EOS carry on. A source is
    done when K hypotheses have finished, or at its length limit, where its open prefixes are kept as unfinished
    hypotheses. Finished sources leave the batch, and decoding stops when none is left. Returns, per source, its
    `n_best` hypotheses, best first. EOS cannot be chosen before min_len tokens; the model's never-emitted ids
    never are.
    """
    DecodeConfig(beam_size=beam_size, alpha=alpha, max_len=max_len, n_best=n_best)  # validates them
    return _beam_search(model, src, beam_size, alpha, max_len, n_best, bos_id, eos_id, min_len, should_stop)


def _beam_search(model, src, K, alpha, max_len, n_best, bos_id, eos_id, min_len, should_stop):
    ids = model.config.special_ids
    bos_id, eos_id = ids.bos if bos_id is None else bos_id, ids.eos if eos_id is None else eos_id
    model.eval()
    src_mask = padding_mask(src, ids.pad)  # (B, 1, 1, S)
    limits = length_limits(model, src, max_len)  # (B,)
    state = BeamState.start(model.encode(src, src_mask), src_mask, limits, K, bos_id, ids.pad)
    cache = model.new_cache(int(limits.max()))
    results: list[list[Hypothesis]] = [[] for _ in range(src.shape[0])]
    banned = _banned(model, eos_id, src.device)
    for step in range(1, int(limits.max()) + 1):
        _check(should_stop)
        n = state.active.shape[0]
        logits = model.decode(state.seqs[:, -1:], state.memory, state.src_mask, cache)[:, -1]  # (n*K, V)
        V = logits.shape[-1]
        logp = logits.float().log_softmax(dim=-1).view(n, K, V)  # (n, K, V)
        _ban(logp, banned, step, min_len, eos_id)
        top, flat = block_topk((state.scores[:, :, None] + logp).view(n, K * V), min(2 * K, K * V))  # (n, 2K)
        beam, token = flat // V, flat % V  # (n, 2K) which prefix each extension continues, and with what
        go_on, keep = _finish(state, results, top, beam, token, step, K, alpha, n_best, eos_id)
        if keep is not None and not bool(keep.any()):
            break
        _advance(state, cache, top, beam, token, go_on, keep, K)
    # Always n_best per source, so that callers never index an empty list: a model whose scores are not finite (or
    # a source with fewer open prefixes than n_best) gets empty unfinished hypotheses at the lowest score (NEG).
    return [row + [Hypothesis([], NEG, False)] * (n_best - len(row)) for row in results]


def _finish(state: BeamState, results, top, beam, token, step, K, alpha, n_best, eos_id):
    """Move the hypotheses that finish at this step into each source's K best finished ones and collect the
    sources that are done. Returns (go_on (n, 2K): the extensions that carry on, or None when they are simply
    the K best; keep (n,): the sources still decoding, or None when all are)."""
    is_eos = token == eos_id
    at_limit = state.limits <= step  # (n,)
    if not bool(is_eos[:, :K].any() | at_limit.any()):
        # Most steps: no EOS among the K best and no source at its limit, so nothing finishes and the K best
        # extensions carry on as they are (one check instead of the bookkeeping below).
        return None, None
    # The K best extensions that do not end in EOS carry on (there are >= K: at most K of 2K end in EOS).
    go_on = ~is_eos & ((~is_eos).cumsum(dim=1) <= K)  # (n, 2K)
    rank = torch.arange(top.shape[1], device=top.device)  # (2K,)
    finish = (is_eos & (rank < K)) | (go_on & at_limit[:, None])  # (n, 2K)
    finish &= top > NEG / 2  # never a copy of the first beam that was dropped at step 1
    if not bool(finish.any()):
        return go_on, None
    n, L = top.shape[0], state.fin_tokens.shape[2]
    prefix = state.seqs.view(n, K, step)[:, :, 1:].gather(1, beam[:, :, None].expand(-1, -1, step - 1))
    new_tokens = torch.cat([prefix, token[:, :, None]], dim=2)  # (n, 2K, step)
    new_tokens = torch.nn.functional.pad(new_tokens, (0, L - step), value=state.pad_id)
    new_score = torch.where(finish, top / length_penalty(step, alpha), NEG)  # (n, 2K)
    state.fin_score, pick = torch.cat([state.fin_score, new_score], dim=1).topk(K, dim=1)  # (n, K), best first
    state.fin_len = torch.cat([state.fin_len, torch.full_like(token, step)], dim=1).gather(1, pick)
    state.fin_eos = torch.cat([state.fin_eos, is_eos & finish], dim=1).gather(1, pick)
    all_tokens = torch.cat([state.fin_tokens, new_tokens], dim=1)  # (n, 3K, L)
    state.fin_tokens = all_tokens.gather(1, pick[:, :, None].expand(-1, -1, L))  # (n, K, L)
    # A source is done with K finished hypotheses (or at its limit, where its open prefixes just finished).
    done = at_limit | (state.fin_score[:, K - 1] > NEG)  # (n,)
    if not bool(done.any()):
        return go_on, None
    _collect(results, state.active[done], state.fin_score[done], state.fin_len[done], state.fin_tokens[done],
             state.fin_eos[done], n_best)  # fmt: skip
    return go_on, ~done


def _advance(state: BeamState, cache, top, beam, token, go_on, keep, K) -> None:
    """Carry on with the K best open prefixes of the sources still decoding (keep None: all of them)."""
    if go_on is None:
        scores, next_token, from_beam = top[:, :K], token[:, :K], beam[:, :K]  # (n, K)
    else:
        order = (~go_on).to(torch.uint8).argsort(dim=1, stable=True)[:, :K]  # (n, K): positions of go_on
        scores, next_token, from_beam = top.gather(1, order), token.gather(1, order), beam.gather(1, order)
    n = top.shape[0]
    rows = torch.arange(n, device=top.device)[:, None] * K + from_beam  # (n, K)
    shrink = keep is not None
    if shrink:
        scores, next_token, rows = scores[keep], next_token[keep], rows[keep]  # (m, K)
    rows = rows.view(-1)  # (m*K,)
    cache.reorder(rows, cross=shrink)
    state.seqs = torch.cat([state.seqs.index_select(0, rows), next_token.reshape(-1, 1)], dim=1)  # (m*K, step+1)
    state.scores = scores
    if shrink:
        state.keep(keep, K)


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


@torch.inference_mode()
def search(model, src: torch.Tensor, decode: DecodeConfig, should_stop: StopCheck | None = None,
           min_len: int = 0) -> list[list[Hypothesis]]:  # fmt: skip
    """The n-best hypotheses of each source under `decode`: greedy search when decode.greedy (beam size 1),
    beam search otherwise. `decode` is validated already (a DecodeConfig always is)."""
    if decode.greedy:
        return [[h] for h in greedy_search(model, src, decode.max_len, min_len=min_len, should_stop=should_stop)]
    return _beam_search(model, src, decode.beam_size, decode.alpha, decode.max_len, decode.n_best, None, None,
                        min_len, should_stop)  # fmt: skip
