"""Batched generation with the MLA cache: GRPO rollouts and evaluation, optionally self-speculative.

Rollouts dominate RL time (R1 paper), so this is the one sampler everything uses. Per call:

  1. prefill: the distinct prompts, left-padded to a common length P, go through the model once
     (pad_mask False on padding; the model gives every prompt the same positions whatever its
     padding), filling a KVCache (V3 §2.1.1: only the normalised latent and the rotary key);
  2. the cache is copied G = num_samples times per prompt with `KVCache.index_select` (one
     prefill per group, exactly a GRPO rollout);
  3. decode: one forward of [n, 1] per token for the n rows still running, attending over the cache
     through the absorbed MLA path (V2 §2.1.2, App. C: two batched matmuls per layer over the latent
     cache) with the routed experts stacked into two batched matmuls (MoE.grouped_experts). A row stops
     at eos_id or when its generated tokens end with a stop sequence (the stop token is kept); finished
     rows then emit nothing (pad, mask False), and once they are half of the batch the batch and its
     cache are compacted to the live rows (COMPACT_AT), so the step costs what the live rows need.

Sampling (R1 §3, Supp. D.1): logits / temperature, then top-k, then nucleus (top-p); temperature 0 is
argmax. R1 evaluates at temperature 0.6, top-p 0.95 and rolls out at temperature 1. A token is drawn by
inverse CDF from one uniform number per row and step (_uniforms): a row's sample depends only on its
generator and the step, never on which other rows share the batch or when the batch was compacted.

Returned log-probs: log_softmax(logits / T) of each sampled token over the FULL vocabulary, before
top-k / top-p (T = 1 when greedy). That is exactly what the GRPO training forward recomputes as
pi_theta, so at the first inner step the ratio pi_theta / pi_old is 1 (up to float error) even
when sampling was filtered. The filtered distribution is only how tokens are chosen.

Self-speculative decoding (V3 §2.2 and §5.4.3, `speculative=True`): the MTP module (depth 0) drafts one
token beyond the main model's next token, and the main model checks it with one forward of 2
tokens per row. The MTP block keeps its own cache and runs one position behind the main model:
its input at position i is (main hidden h_i after the final norm, embedding of token i+1), so it
can only process position i once token i+1 is known. Rows accept different numbers of tokens; a
rejected draft's cache column is marked invalid for that row (`valid` False, `n_real` - 1), and
the model's masks and rotary positions skip invalid columns, so rows desynchronise freely.
Greedy accepts iff the draft is the main argmax (output identical to plain greedy); sampling
uses the speculative-sampling rule (accept with prob min(1, p/q), else resample from
normalise(max(0, p - q))) with p, q the filtered distributions, so the output distribution is
exactly that of plain sampling.

Shape legend: N rows (= prompts x G, prompt-major), U distinct prompts, P prompt length (after
left padding), L new tokens (max_new_tokens), W vocab, D model dim, S cache columns.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from model import MoE


@dataclass
class Generation:
    prompt: torch.Tensor  # [N, P] left-padded prompt ids (pad_id on padding)
    prompt_mask: torch.Tensor  # [N, P] True on real prompt tokens
    tokens: torch.Tensor  # [N, L] generated ids (pad_id after a row finished)
    mask: torch.Tensor  # [N, L] True on generated tokens (the stop token / EOS included)
    logprobs: torch.Tensor  # [N, L] log softmax(logits / T) of each token, full vocab; 0 where mask is False
    truncated: torch.Tensor  # [N] True where the row hit max_new_tokens without stopping
    proposed: int = 0  # speculative: draft tokens proposed
    accepted: int = 0  # speculative: draft tokens accepted
    # plain decoding: for each decode forward, the output row of each of its batch rows [n_s]
    # (finished rows leave the batch: COMPACT_AT); what routing replay needs to place each step's experts
    step_rows: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Distributions
# --------------------------------------------------------------------------------------------


def sampling_probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """logits [N, W] -> the distribution tokens are drawn from [N, W]: temperature, top-k, top-p.

    Nucleus keeps the smallest set of most likely tokens whose mass reaches top_p: a token stays
    if the mass strictly above it is < top_p, so the top token always stays.
    """
    logits = _wide(logits) / temperature
    if 0 < top_k < logits.shape[-1]:
        top = logits.topk(top_k, dim=-1).indices  # [N, k]
        keep = torch.zeros_like(logits, dtype=torch.bool).scatter(-1, top, True)
        logits = logits.masked_fill(~keep, float("-inf"))
    probs = logits.softmax(-1)
    if top_p < 1.0:
        sorted_p, order = probs.sort(-1, descending=True)  # [N, W] each
        drop_sorted = (sorted_p.cumsum(-1) - sorted_p) >= top_p  # mass above already reaches top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)  # back to vocab order
        probs = probs.masked_fill(drop, 0.0)
        probs = probs / probs.sum(-1, keepdim=True)
    return probs


def token_logprobs(logits: torch.Tensor, tokens: torch.Tensor, temperature: float) -> torch.Tensor:
    """logits [N, W], tokens [N] -> log softmax(logits / T)[token] [N] over the full vocab (T=1 if greedy)."""
    t = temperature if temperature > 0 else 1.0
    return F.log_softmax(_wide(logits) / t, dim=-1).gather(-1, tokens.unsqueeze(-1)).squeeze(-1).float()


def _wide(x: torch.Tensor) -> torch.Tensor:
    """At least fp32 for softmax arithmetic (bf16 logits lose the tail), fp64 stays fp64."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _uniforms(generator, N: int, device) -> torch.Tensor:
    """One uniform number in [0, 1) per output row [N], fresh each step. With a list of generators (one
    per prompt, G rows each), prompt i's rows draw from generator i only. Every row draws every step,
    finished or not, so a row's numbers depend only on its generator and the step: the batch may shrink
    (finished rows compacted away) or hold other prompts without changing any row's sample."""
    if isinstance(generator, (list, tuple)):
        return torch.cat([torch.rand(N // len(generator), generator=g, device=device, dtype=torch.float64)
                          for g in generator])
    return torch.rand(N, generator=generator, device=device, dtype=torch.float64)


def _pick(logits, temperature, top_k, top_p, u):
    """logits [n, W] -> (token [n], its sampling distribution [n, W], or None when greedy). u [n] are the
    rows' uniforms: the token is the first whose cumulative probability exceeds u (inverse CDF), so it is
    drawn with exactly its probability, and a token the filters removed (probability 0) never is."""
    if temperature == 0:
        return logits.argmax(-1), None
    probs = sampling_probs(logits, temperature, top_k, top_p)
    cdf = probs.double().cumsum(-1)  # [n, W], in fp64 so that u * total stays below the last entry
    token = torch.searchsorted(cdf, (u * cdf[:, -1]).unsqueeze(1), right=True).squeeze(1)
    return token.clamp(max=probs.shape[-1] - 1), probs


# --------------------------------------------------------------------------------------------
# Output buffers: rows may hold different numbers of tokens (speculative decoding)
# --------------------------------------------------------------------------------------------


class _Rows:
    """tokens / mask / logprobs [N, L] filled left to right per row, and each row's stop state."""

    def __init__(self, N, L, eos_id, pad_id, stop_sequences, device, on_token=None):
        self.L, self.eos_id, self.on_token = L, eos_id, on_token
        self.tokens = torch.full((N, L), pad_id, dtype=torch.long, device=device)
        self.mask = torch.zeros(N, L, dtype=torch.bool, device=device)
        self.logprobs = torch.zeros(N, L, device=device)
        self.length = torch.zeros(N, dtype=torch.long, device=device)  # tokens emitted per row
        self.finished = torch.zeros(N, dtype=torch.bool, device=device)  # stopped (eos or stop seq)
        self.stops = [torch.tensor(list(s), dtype=torch.long, device=device) for s in stop_sequences if len(s)]

    @property
    def open(self) -> torch.Tensor:
        """[N] rows that still take tokens."""
        return ~self.finished & (self.length < self.L)

    def emit(self, token, logprob, offer, rows=None) -> torch.Tensor:
        """Append token [n] (with logprob [n]) to output row rows[i] for every i where offer [n] and that
        row is still open; rows [n] default to all N rows in order. Returns who took it [n]."""
        rows = torch.arange(len(self.length), device=token.device) if rows is None else rows
        take = offer & self.open[rows]
        r, col = rows[take], self.length[rows[take]]
        self.tokens[r, col] = token[take]
        self.mask[r, col] = True
        self.logprobs[r, col] = logprob[take]
        self.length[r] += 1
        stop = torch.zeros_like(self.finished)
        stop[r] = token[take] == self.eos_id
        for s in self.stops:  # do the generated tokens now end with s?
            m = len(s)
            idx = (self.length.unsqueeze(1) - m + torch.arange(m, device=s.device)).clamp(min=0)  # [N, m]
            stop |= (self.length >= m) & (self.tokens.gather(1, idx) == s).all(1)
        self.finished[r] |= stop[r]
        if self.on_token is not None:
            full_token = torch.zeros_like(self.length).index_put_((rows,), token)
            full_take = torch.zeros_like(self.finished).index_put_((rows,), take)
            self.on_token(full_token, full_take)
        return take


# --------------------------------------------------------------------------------------------
# Generation
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def generate(model, prompts: list[list[int]], *, num_samples: int = 1, max_new_tokens: int = 64,
             temperature: float = 1.0, top_k: int = 0, top_p: float = 1.0, eos_id: int, pad_id: int,
             stop_sequences: Sequence[Sequence[int]] = (),
             generator: torch.Generator | Sequence[torch.Generator] | None = None,
             speculative: bool = False,
             on_token: Callable[[torch.Tensor, torch.Tensor], None] | None = None) -> Generation:
    """Sample num_samples completions of every prompt; rows [i*G, (i+1)*G) belong to prompt i.

    temperature 0 = greedy; top_k 0 and top_p 1.0 = off. A seeded `generator` reproduces a run
    exactly (all randomness goes through it). A list of generators, one per prompt, makes each
    prompt's G samples independent of the other prompts in the batch (GRPO rollouts split over
    ranks; plain decoding only). A negative eos_id never matches (no EOS).
    The model is run in eval mode and its MoE expert-load counters are restored afterwards, so
    rollouts leave no trace in the aux-loss-free balancing statistics.
    `on_token(token [N], took [N])`, if given, is called each time a token is emitted, as it is
    sampled: row r's output grows by token[r] where took[r] (r1.py ask streams one row this way).
    It only watches: the output is the same with or without it.
    """
    cfg = model.cfg
    G, L = num_samples, max_new_tokens
    if not prompts or any(len(p) == 0 for p in prompts):
        raise ValueError("generate needs at least one prompt, and every prompt needs >= 1 token")
    if G < 1 or L < 1:
        raise ValueError(f"num_samples={G} and max_new_tokens={L} must both be >= 1")
    if temperature < 0 or top_k < 0 or not 0 < top_p <= 1:
        raise ValueError(f"need temperature >= 0, top_k >= 0, 0 < top_p <= 1 "
                         f"(got {temperature}, {top_k}, {top_p})")
    P = max(len(p) for p in prompts)
    if P + L > cfg.max_seq_len:
        raise ValueError(f"longest prompt ({P}) + max_new_tokens ({L}) = {P + L} exceeds the model's "
                         f"max_seq_len={cfg.max_seq_len}: shorten the prompts or ask for fewer tokens")
    if isinstance(generator, (list, tuple)) and (speculative or len(generator) != len(prompts)):
        raise ValueError("a list of generators needs one per prompt, and plain (not speculative) decoding")
    if speculative and cfg.mtp_depth < 1:
        raise ValueError("speculative=True drafts with the MTP module, but this model has mtp_depth=0")

    device = next(model.parameters()).device
    # one prefill per distinct prompt; rows[r] is the distinct prompt behind output row r
    distinct: dict[tuple[int, ...], int] = {}
    which = [distinct.setdefault(tuple(p), len(distinct)) for p in prompts]
    ids = torch.full((len(distinct), P), pad_id, dtype=torch.long, device=device)  # [U, P]
    for p, u in distinct.items():
        ids[u, P - len(p):] = torch.tensor(p, dtype=torch.long)
    lengths = torch.tensor([len(p) for p in distinct], device=device)  # [U]
    prompt_mask = torch.arange(P, device=device) >= (P - lengths).unsqueeze(1)  # [U, P]
    rows = torch.tensor(which, device=device).repeat_interleave(G)  # [N]

    was_training = model.training
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    loads = [m.load.clone() for m in moes]
    model.eval()
    for m in moes:  # the experts as batched matmuls while decoding (MoE.grouped_experts)
        m.stacked = m.stack_experts()
    out = _Rows(len(rows), L, eos_id, pad_id, stop_sequences, device, on_token)
    args = (model, ids, prompt_mask, rows, out, temperature, top_k, top_p, generator)
    proposed = accepted = 0
    step_rows = []
    try:
        if speculative:
            proposed, accepted = _speculative(*args)
        else:
            step_rows = _plain(*args)
    finally:
        model.train(was_training)
        for m, saved in zip(moes, loads):
            m.load.copy_(saved)
            m.stacked = None
    return Generation(prompt=ids[rows], prompt_mask=prompt_mask[rows], tokens=out.tokens, mask=out.mask,
                      logprobs=out.logprobs, truncated=~out.finished, proposed=proposed, accepted=accepted,
                      step_rows=step_rows)


def complete(model, tok, prompts: list[str], *, stop: str = "", **kw) -> tuple[Generation, list[str]]:
    """Text in, text out: each prompt encoded (after <bos>), `generate(**kw)` until EOS or the text `stop`
    (the R1 template's "</answer>"), each row's completion decoded. -> (the Generation, one text per
    row: prompt i's samples are rows i*num_samples ... (i+1)*num_samples - 1). Evaluation, rollouts,
    rejection sampling and `r1.py sample` all sample this way."""
    ids = [tok.encode(p, bos=True) for p in prompts]
    out = generate(model, ids, eos_id=tok.eos_id, pad_id=tok.pad_id,
                   stop_sequences=[tok.encode(stop)] if stop else (), **kw)
    return out, [tok.decode(out.tokens[r][out.mask[r]].tolist()) for r in range(out.tokens.shape[0])]


# Finished rows ride along (masked) until they are this share of the batch; then the batch and its cache
# are compacted to the live rows (one copy of the cache), so a decode costs what its live rows need.
COMPACT_AT = 0.5


def _plain(model, ids, prompt_mask, rows, out, temperature, top_k, top_p, generator) -> list[torch.Tensor]:
    """Prefill, copy the cache G times, then one [n, 1] forward per token for the n live rows, filling `out`.
    Returns the output rows of each decode forward's batch (Generation.step_rows)."""
    U, P = ids.shape
    N = len(rows)
    cache = model.new_cache(U, P + out.L)
    logits = model(ids, pad_mask=prompt_mask, cache=cache)[:, -1]  # last column is real in every row [U, W]
    cache, logits = cache.index_select(rows), logits[rows]  # G copies of each prompt [N, ...]
    at = torch.arange(N, device=ids.device)  # the output row of each batch row [n]
    step_rows = []
    while True:
        u = _uniforms(generator, N, ids.device)[at] if temperature > 0 else None  # [n]
        token, _ = _pick(logits, temperature, top_k, top_p, u)  # [n]
        out.emit(token, token_logprobs(logits, token, temperature), torch.ones_like(at, dtype=torch.bool), at)
        live = out.open[at]  # [n]
        if not live.any():
            return step_rows
        if live.sum() <= COMPACT_AT * len(at):  # keep only the live rows
            keep = live.nonzero().squeeze(1)
            cache, token, at, live = cache.index_select(keep), token[keep], at[keep], live[keep]
        # finished rows not yet compacted ride along as invalid columns (pad_mask False): they see only themselves
        step_rows.append(at)
        logits = model(token.unsqueeze(1), pad_mask=live.unsqueeze(1), cache=cache)[:, -1]  # [n, W]


def _speculative(model, ids, prompt_mask, rows, out, temperature, top_k, top_p, generator) -> tuple[int, int]:
    """Self-speculative decoding with MTP depth 0 as the drafter. Returns (proposed, accepted).

    Loop state per row, with n the position of the last emitted token t_n (`nxt`):
      main cache: positions < n;  MTP cache: positions < n-1, plus up to two pending MTP
      columns (h_i, t_{i+1}) whose last valid one, (h_{n-1}, t_n), drafts t_{n+1}.
    Each step writes 2 columns to each cache whatever is accepted, so both hold P + 2L columns.
    """
    U, P = ids.shape
    N = len(rows)
    S = P + 2 * out.L  # physical columns: a rejected draft still occupies one
    cache, mcache = model.new_cache(U, S), model.new_cache(U, S, mtp=True)
    logits, h = model(ids, pad_mask=prompt_mask, cache=cache, return_hidden=True)  # [U, P, W], [U, P, D]
    if P > 1:  # MTP over the prompt: (h_i, x_{i+1}) for i < P-1 needs no sampled token yet
        _mtp(model, mcache, h[:, :-1], ids[:, 1:], prompt_mask[:, :-1])
    cache, mcache = cache.index_select(rows), mcache.index_select(rows)
    first, _ = _pick(logits[rows, -1], temperature, top_k, top_p, _uniforms(generator, N, ids.device))  # t_P [N]
    out.emit(first, token_logprobs(logits[rows, -1], first, temperature), out.open)
    pend_h, pend_t = h[rows, -1:], first.unsqueeze(1)  # the MTP column (h_{P-1}, t_P) [N, 1, D], [N, 1]
    pend_ok = torch.ones(N, 1, dtype=torch.bool, device=ids.device)
    nxt = first  # next main-model input
    arange = torch.arange(N, device=ids.device)
    proposed = accepted = 0
    while (live := out.open).any():
        # 1. draft t_{n+1} from the last valid pending MTP column
        q_logits = _mtp(model, mcache, pend_h, pend_t, pend_ok & live.unsqueeze(1))  # [N, w, W]
        q_logits = q_logits[arange, (pend_ok.sum(1) - 1).clamp(min=0)]  # [N, W]
        draft, q = _pick(q_logits, temperature, top_k, top_p, _uniforms(generator, N, ids.device))  # [N], [N, W] or None
        # 2. verify: the main model reads [t_n, draft] -> its view of t_{n+1} and of t_{n+2}
        both = torch.stack([nxt, draft], 1)  # [N, 2]
        logits, h = model(both, pad_mask=live.unsqueeze(1).expand(N, 2), cache=cache,
                          return_hidden=True)  # [N, 2, W], [N, 2, D]
        if q is None:  # greedy: keep the draft iff it is the main argmax
            token = logits[:, 0].argmax(-1)
            ok = token == draft
            bonus = logits[:, 1].argmax(-1)
        else:  # speculative sampling: accept with prob min(1, p/q), else draw from max(0, p - q)
            p = sampling_probs(logits[:, 0], temperature, top_k, top_p)  # [N, W]
            u = torch.rand(N, generator=generator, device=ids.device, dtype=p.dtype)
            ok = u * q[arange, draft] < p[arange, draft]
            resid = (p - q).clamp(min=0)
            resid = torch.where(resid.sum(-1, keepdim=True) > 0, resid, p)  # p == q: never rejected
            token = torch.where(ok, draft, torch.multinomial(resid, 1, generator=generator).squeeze(1))
            bonus, _ = _pick(logits[:, 1], temperature, top_k, top_p, _uniforms(generator, N, ids.device))
        ok &= live
        proposed, accepted = proposed + int(live.sum()), accepted + int(ok.sum())
        # 3. emit t_{n+1}, then t_{n+2} where the draft held (unless t_{n+1} stopped the row)
        took = out.emit(token, token_logprobs(logits[:, 0], token, temperature), live)
        out.emit(bonus, token_logprobs(logits[:, 1], bonus, temperature), ok & took)
        # 4. a rejected draft's column is not part of that row's sequence
        rejected = live & ~ok
        cache.valid[rejected, cache.len - 1] = False
        cache.n_real -= rejected.long()
        # 5. what the MTP reads next step: (h_n, t_{n+1}) always, (h_{n+1}, t_{n+2}) if accepted
        pend_h, pend_t, pend_ok = h, torch.stack([token, bonus], 1), torch.stack([live, ok], 1)  # [N, 2, ...]
        nxt = torch.where(ok, bonus, token)
    return proposed, accepted


def _mtp(model, mcache, h, next_tokens, valid) -> torch.Tensor:
    """MTP depth 0 over columns (h_i [B, T, D], t_{i+1} [B, T]), valid [B, T]; writes and advances
    its cache. Returns its logits [B, T, W] (the prediction of t_{i+2})."""
    B, T = next_tokens.shape
    # same rotary positions and masks as the main model: count only valid columns
    pos, mask, _ = model.positions_and_mask(B, T, next_tokens.device, valid, mcache)
    hk, _ = model.mtp_forward(0, h, next_tokens, pos, mask, valid, cache=mcache, absorb=True)
    model.advance_cache(mcache, valid)
    return model.mtp_logits(0, hk)
