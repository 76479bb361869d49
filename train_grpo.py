"""GRPO and the R1-Zero run (R1 §2.2; DeepSeekMath §4.1).

The objective, per token t of completion i in a group of G completions of one prompt:

    ratio   rho_it = pi_theta(o_it) / pi_old(o_it)          pi_old: the sampler's log-probs
    adv     A_i    = (r_i - mean(r)) / std(r)                 (scale_rewards="group"; "none" = Dr. GRPO)
    term    l_it   = min(rho_it A_i, clip(rho_it, 1 - eps, 1 + eps_high) A_i) - beta * KL_it
    KL      KL_it  = pi_ref/pi_theta - log(pi_ref/pi_theta) - 1   (k3, >= 0; beta = 0 skips pi_ref)

and the loss aggregates -l_it in one of three ways (`loss_type`, named as in TRL):

    grpo     -(1/G) sum_i (1/|o_i|) sum_t l_it       DeepSeekMath / R1 (length-normalised per sequence)
    dapo     -(1 / sum_i |o_i|) sum_i sum_t l_it     token-level (every token counts the same)
    dr_grpo  -(1 / (G * L_max)) sum_i sum_t l_it     Dr. GRPO (a constant normaliser: no length bias)

Probabilities are those of the temperature-scaled distribution softmax(logits / T), both at sampling
time and in the training forward, so the ratio is exactly 1 at the first inner step.

One step, always in this order: sample B prompts x G completions -> score with rewards.py ->
advantages -> mu epochs over mini-batches (loss, backward, clip, AdamW) -> MoE bias update from the
rollout's expert loads -> reference reset every N steps -> log -> eval -> checkpoint.

    python r1.py grpo --init runs/base --run runs/zero
    python r1.py                         (pretrain + GRPO + report, the R1-Zero story)

How this differs from the paper's setup, in four points:
  1. rewards are rule-based exactly as in R1 (accuracy + format, plus the language-consistency reward
     with --consistency-weight 1 for R1's reasoning RL), but on toy arithmetic;
  2. defaults follow what works at toy scale: token-level loss, beta = 0, groups with equal rewards
     dropped (DAPO's dynamic sampling; --refill-rounds N samples more prompts, as DAPO does, until B
     groups carry signal, at most N more rounds), lr 5e-5 instead of 3e-6; DAPO's soft overlong
     punishment is there too (--overlong-cache, off by default);
  3. one mini-batch and one inner epoch per rollout by default (R1 used 16 mini-batches);
  4. the reference model (when beta > 0) is reset to the policy every `ref_reset_every` steps, as R1 did.

Routing replay (`--routing-replay`, off by default). In an MoE the training forward re-routes every
token, and tiny numeric differences from the sampling pass (other batch shapes, kernels, precision; or
weights that moved since the rollout, from the second mini-batch on) send some tokens to other experts:
pi_theta is then evaluated on a different network than the one that sampled, which muddies the ratio
and is what the `routing_mismatch` log counts. With replay on, the sampler's expert choices for every
prompt and completion position (RoutingRecorder, by hooks) travel with the rollout, and the training
forward (and the reference's) uses exactly those experts; the gate weights still come from the current
router's scores at them, so the router keeps learning. Large MoE RL runs adopted it after runs without
it collapsed; here it sets the mismatch to 0 for the price of one [N, P+L, K] index tensor per MoE layer.

On several processes (scale/launch.py) every rank runs this loop with a `World` (runs.py): it takes
a contiguous slice of the step's B prompts, so each group's G samples stay on one rank (the group
statistics need no communication); each prompt's samples come from a generator seeded by (seed,
step, prompt index), so a rollout is the same whatever the number of ranks; the loss is weighted
by this rank's share of the global normaliser (tokens for dapo, sequences for grpo / dr_grpo); the
expert loads are summed over ranks before the bias update; logged statistics are rank means.
"""

from __future__ import annotations

import contextlib
import copy
import random
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

import rewards
from data import countdown, eval_problems, prompt, sample_problem
from evaluate import evaluate, guesses, reflection_count, thinking_tokens
from model import MoE, Transformer
from runs import (MAX_EVAL_K, MAX_EVAL_N, Metrics, Progress, R1Error, World, autocast, check_numbers, cut_samples_after, rng_state, seed_everything,
                  set_rng_state)
from sampler import complete


@dataclass
class GRPOConfig:
    """Names follow TRL's GRPOConfig where the concept exists there."""

    steps: int = 80
    prompts_per_step: int = 16  # B questions per step
    num_generations: int = 8  # G completions per question
    learning_rate: float = 5e-5
    beta: float = 0.0  # KL coefficient (R1: 0.001); 0 = no reference model at all
    epsilon: float = 0.2  # lower clip (1 - epsilon)
    epsilon_high: float = 0.0  # upper clip (1 + epsilon_high); 0 = same as epsilon (DAPO: 0.28)
    loss_type: str = "dapo"  # "grpo", "dapo" (token-level) or "dr_grpo"
    scale_rewards: str = "group"  # "group" (divide by the group's std) or "none" (Dr. GRPO)
    num_iterations: int = 1  # mu: inner epochs over each rollout
    num_minibatches: int = 1  # mini-batches per epoch (R1: 16)
    microbatch_size: int = 32  # rows per training forward (all ranks together); gradients are accumulated
    temperature: float = 1.0  # rollout temperature (R1: 1.0)
    top_p: float = 1.0
    max_completion_length: int = 80
    format_weight: float = 1.0  # R1: accuracy + format, equal weights; 0 = Dr. GRPO (no format reward)
    consistency_weight: float = 0.0  # R1's language-consistency reward (toy: readable steps); 0 = R1-Zero
    reward: str = "rules"  # "rules" (the rewards above); controls: "format" (format only), "random" (a coin flip)
    dynamic_sampling: bool = True  # DAPO: drop groups whose rewards are all equal (no signal)
    refill_rounds: int = 0  # DAPO: up to N more rounds of B prompts while fewer than B groups have signal
    mask_truncated_completions: bool = False  # DAPO overlong filtering: no loss on truncated samples
    overlong_cache: int = 0  # DAPO soft overlong punishment over the last N tokens before the limit; 0 = off
    ref_reset_every: int = 400  # R1: the reference becomes the current policy every 400 steps
    grad_clip: float = 1.0
    weight_decay: float = 0.0
    seed: int = 0
    tasks: tuple[str, ...] = ("add",)
    difficulty: int | None = None
    eval_every: int = 10  # 0 = only at the end
    eval_n: int = 100  # held-out problems per task at each evaluation
    eval_k: int = 4  # samples per problem at each evaluation (T=0.6, top-p 0.95)
    ckpt_every: int = 10
    dump_every: int = 10  # text dump of a few rollouts to samples.txt
    routing_replay: bool = False  # MoE: train on the experts chosen while sampling; a dense model is an error

    def __post_init__(self):
        check_numbers(self)
        checks = [
            (self.steps > 0, "--steps must be > 0"),
            (self.prompts_per_step > 0, "--prompts-per-step must be > 0"),
            (self.num_generations >= 2, "--num-generations must be >= 2: a group of one has no baseline"),
            (self.learning_rate > 0, "--learning-rate must be > 0"),
            (self.consistency_weight >= 0, "--consistency-weight must be >= 0"),
            (self.beta >= 0, "--beta must be >= 0"),
            (self.epsilon > 0 and self.epsilon_high >= 0, "--epsilon must be > 0 and --epsilon-high >= 0"),
            (self.loss_type in ("grpo", "dapo", "dr_grpo"), "--loss-type must be grpo, dapo or dr_grpo"),
            (self.scale_rewards in ("group", "none"), "--scale-rewards must be group or none"),
            (self.reward in ("rules", "format", "random"), "--reward must be rules, format or random"),
            (self.num_iterations >= 1 and self.num_minibatches >= 1, "--num-iterations and --num-minibatches must be >= 1"),
            (self.microbatch_size >= 1, "--microbatch-size must be >= 1"),
            (self.temperature > 0, "--temperature must be > 0 for RL rollouts"),
            (0 < self.top_p <= 1, "--top-p must be in (0, 1]"),
            (self.max_completion_length > 0, "--max-completion-length must be > 0"),
            (0 <= self.refill_rounds <= 16, "--refill-rounds must be in 0..16"),
            (0 <= self.overlong_cache < self.max_completion_length,
             "--overlong-cache must be >= 0 and below --max-completion-length"),
            (0 < self.eval_n <= MAX_EVAL_N and 0 < self.eval_k <= MAX_EVAL_K,
             f"--eval-n must be in 1..{MAX_EVAL_N} and --eval-k in 1..{MAX_EVAL_K}"),
            (self.prompts_per_step * self.num_generations >= self.num_minibatches,
             "--num-minibatches exceeds the rollout size"),
        ]
        for ok, msg in checks:
            if not ok:
                raise R1Error(msg)
        self.tasks = tuple(self.tasks)
        try:  # tasks and difficulty, checked before anything is written
            eval_problems(self.tasks, self.eval_n, self.difficulty)
            sample_problem(self.tasks[0], random.Random(0), difficulty=self.difficulty)
        except (ValueError, IndexError) as e:
            raise R1Error(str(e) or "--tasks is empty") from None

    def check_fits(self, model_cfg):
        """The rollouts must fit the model's context (prompts take up to ~64 tokens here)."""
        if self.max_completion_length + 64 > model_cfg.max_seq_len:
            raise R1Error(f"--max-completion-length {self.max_completion_length} plus a prompt does not fit the "
                          f"model's context of {model_cfg.max_seq_len} tokens")
        if self.routing_replay and not model_cfg.is_moe:
            raise R1Error("--routing-replay replays MoE expert choices, but this model has no MoE layer")


# --------------------------------------------------------------------------------------------
# Pure tensor functions: advantages and the loss (tested against hand-computed numbers)
# --------------------------------------------------------------------------------------------


def group_advantages(rewards_: torch.Tensor, G: int, scale: str = "group", eps: float = 1e-4) -> torch.Tensor:
    """rewards [B*G] (prompt-major) -> advantages [B*G]: reward minus its group mean, divided by
    the group std (unbiased, as torch.std) when scale == "group". Equal rewards give exactly 0."""
    r = rewards_.view(-1, G)  # [B, G]
    a = r - r.mean(1, keepdim=True)
    if scale == "group":
        a = a / (r.std(1, keepdim=True) + eps)
    return a.flatten()


def grpo_loss(logp, old_logp, adv, mask, *, ref_logp=None, beta=0.0, epsilon=0.2, epsilon_high=0.0,
              loss_type="dapo", max_len: int = 1) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate with an optional k3 KL penalty, aggregated per loss_type.

    logp, old_logp, ref_logp [N, L] per-token log-probs; adv [N]; mask [N, L] (1 = a completion token
    that counts). Returns (loss, stats) with stats: clip fraction, mean ratio, mean KL (None if no ref).
    """
    mask = mask.float()
    eps_high = epsilon_high or epsilon
    ratio = torch.exp(logp - old_logp)  # [N, L]
    a = adv.unsqueeze(1)  # [N, 1]
    unclipped = ratio * a
    clipped = ratio.clamp(1 - epsilon, 1 + eps_high) * a
    per_token = torch.minimum(unclipped, clipped)  # [N, L]
    kl = None
    if ref_logp is not None and beta > 0:
        d = ref_logp - logp
        kl = torch.exp(d) - d - 1  # k3 estimator, >= 0
        per_token = per_token - beta * kl
    if loss_type == "grpo":
        loss = -((per_token * mask).sum(1) / mask.sum(1).clamp(min=1)).mean()
    elif loss_type == "dapo":
        loss = -(per_token * mask).sum() / mask.sum().clamp(min=1)
    elif loss_type == "dr_grpo":
        loss = -(per_token * mask).sum() / (mask.shape[0] * max_len)
    else:
        raise ValueError(f"unknown loss_type {loss_type!r}")
    n = mask.sum().clamp(min=1)
    with torch.no_grad():
        is_clipped = (unclipped > clipped).float()  # the clip bound was the one taken
        stats = {"clip_frac": float((is_clipped * mask).sum() / n), "ratio": float((ratio * mask).sum() / n),
                 "kl": None if kl is None else float((kl * mask).sum() / n)}
    return loss, stats


# --------------------------------------------------------------------------------------------
# Rollouts
# --------------------------------------------------------------------------------------------


@dataclass
class Rollout:
    """One step's samples. N = B*G rows, prompt-major; P prompt columns, L completion columns."""

    tokens: torch.Tensor  # [N, P+L] left-padded prompt then completion
    pad_mask: torch.Tensor  # [N, P+L] False on prompt padding
    completion_mask: torch.Tensor  # [N, L] True on generated tokens
    old_logp: torch.Tensor  # [N, L] sampler log-probs (pi_old)
    rewards: torch.Tensor  # [N]
    advantages: torch.Tensor  # [N]
    truncated: torch.Tensor  # [N] bool
    texts: list[str]
    prompt_len: int  # P
    routes: list[torch.Tensor] | None = None  # per main MoE layer [N, P+L, K]: the experts sampling used


def trained_columns(ro: Rollout, rows) -> slice:
    """The columns of ro.tokens a training forward on `rows` needs: the prompt and the completion up to
    the end of their longest completion (the right padding all of them share is cut; causal attention
    makes the cut exact). The prompt columns stay whole, so every forward of a rollout sees its
    prompts at the same columns whichever rows it holds (the ranks of a sharded run included)."""
    return slice(0, ro.prompt_len + int(ro.completion_mask[rows].sum(1).max()))


def completion_logprobs(model: Transformer, ro: Rollout, rows, temperature: float, routes=None):
    """Training forward on rows of a rollout -> (logp [n, L], entropy [n, L]), 0 after each row's
    completion. Only trained_columns(ro, rows) go through the model. routes (ro.routes: per main MoE
    layer [N, P+L, K]), if given, are replayed instead of the routers' own choices."""
    cols = trained_columns(ro, rows)
    P, L = ro.prompt_len, ro.completion_mask.shape[1]
    routes = None if routes is None else [r[rows, cols] for r in routes]  # [n, P+L', K] each
    tokens = ro.tokens[rows, cols]  # [n, P+L']
    # the expert loads count real tokens only: the prompt's and the completion's, not the padding after it
    real = torch.cat([ro.pad_mask[rows, :P], ro.completion_mask[rows]], 1)[:, cols]  # [n, P+L']
    logits = model(tokens, pad_mask=ro.pad_mask[rows, cols], routes=routes, moe_mask=real)  # [n, P+L', W]
    logits = logits[:, P - 1:-1].float() / temperature  # position t predicts token t+1 [n, L', W]
    logp_all = F.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, tokens[:, P:].unsqueeze(-1)).squeeze(-1)  # [n, L']
    entropy = -(logp_all.exp() * logp_all).sum(-1)  # [n, L']
    pad = (0, L - logp.shape[1])  # back to the rollout's L columns
    return F.pad(logp, pad), F.pad(entropy, pad)


class RoutingRecorder:
    """The experts each main-layer MoE picked, read by forward hooks on the gates (the model itself
    keeps nothing for this diagnostic). In sampling (`decode`): the [U, P, K] experts of the prompt
    prefill (the first forward: one row per distinct prompt, `prompt_ids` [U, P]) and the [N, K] experts
    of each decode step's token; in a training forward, `last`: the [M, K] experts of every token of the
    last forward."""

    def __init__(self, model: Transformer, decode: bool = True):
        self.model, self.decode, self.handles = model, decode, []
        self.steps: list[list[torch.Tensor]] = []
        self.prefill: list[torch.Tensor | None] = []
        self.prompt_ids: torch.Tensor | None = None
        self.last: list[torch.Tensor | None] = []

    def __enter__(self):
        moes = [b.ffn for b in self.model.layers if isinstance(b.ffn, MoE)]  # main layers only (not MTP)
        self.steps, self.prefill, self.last = [[] for _ in moes], [None for _ in moes], [None for _ in moes]

        def on_gate(i):
            def fn(mod, inp, out):  # Gate.forward -> (gates, idx [M, K], scores)
                self.last[i] = out[1]
            return fn

        def on_moe(i):
            def fn(mod, inp, out):
                x = inp[0]  # [N, T, D]
                if self.prefill[i] is None:  # the first forward of a sampling call is the prefill
                    self.prefill[i] = self.last[i].view(x.shape[0], x.shape[1], -1)  # [U, P, K]
                else:
                    self.steps[i].append(self.last[i].view(x.shape[0], -1))  # [n, K]: the batch's live rows
            return fn

        def on_model(mod, args):  # the prefill's tokens: which prompt each prefill row is
            if self.prompt_ids is None:
                self.prompt_ids = args[0]  # [U, P]
        for i, m in enumerate(moes):
            self.handles.append(m.gate.register_forward_hook(on_gate(i)))
            if self.decode:
                self.handles.append(m.register_forward_hook(on_moe(i)))
        if self.decode:
            self.handles.append(self.model.register_forward_pre_hook(on_model))
        return self

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()
        self.handles = []

    def per_step(self, gen) -> list[torch.Tensor]:
        """Per MoE layer: [N, s, K] the experts of decode step s's input token in every output row (the
        sampler drops finished rows from its batch, gen.step_rows says which rows each step held; a row
        absent from a step gets expert 0 there: no token of it is read at that step)."""
        N, out = gen.tokens.shape[0], []
        for pre, steps in zip(self.prefill, self.steps):
            full = [s.new_zeros(N, s.shape[1]).index_copy_(0, rows, s) for s, rows in zip(steps, gen.step_rows)]
            out.append(torch.stack(full, 1) if full else pre.new_zeros(N, 0, pre.shape[-1]))  # [N, s, K]
        return out

    def per_token(self, gen) -> list[torch.Tensor]:
        """Per MoE layer: [N, steps, K] sorted expert ids of decode step s's input token."""
        return [s.sort(-1).values for s in self.per_step(gen) if s.shape[1]]

    def routes(self, gen) -> list[torch.Tensor]:
        """What routing replay feeds the training forward: per main MoE layer, the experts sampling used
        at each column of the rollout's tokens [N, P+L] (gen.prompt then gen.tokens) -> [N, P+L, K].
        Decode step s read completion token s; the columns no sampling forward read (each row's last
        token, the padding after it) hold expert 0: they predict nothing that is scored."""
        # the prefill row of each output row: the distinct prompt with the same (left-padded) tokens
        same = (gen.prompt.unsqueeze(1) == self.prompt_ids.unsqueeze(0)).all(-1)  # [N, U]
        u = same.long().argmax(1)  # [N]
        N, L = gen.tokens.shape
        out = []
        for pre, read in zip(self.prefill, self.per_step(gen)):  # read [N, s, K], s < L
            unread = pre.new_zeros(N, L - read.shape[1], pre.shape[-1])  # [N, L-s, K]
            out.append(torch.cat([pre[u], read, unread], 1))  # [N, P+L, K]
        return out


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


def rollout_problems(cfg: GRPOConfig, step: int, refill: int = 0) -> list:
    """The step's B problems, a pure function of (seed, step), and of the refill round (DAPO)."""
    rng = random.Random(cfg.seed * 1_000_003 + step + refill * 2**40)
    return [sample_problem(rng.choice(cfg.tasks), rng, split="train", difficulty=cfg.difficulty)
            for _ in range(cfg.prompts_per_step)]


def group_seed(cfg: GRPOConfig, step: int, i: int, refill: int = 0) -> int:
    """The seed of prompt i's group: (seed, step, i, refill round), inside the 63 bits a generator takes."""
    return ((cfg.seed * 1_000_003 + step) * 65_537 + i + refill * 2**40) % 2**63


def rollout(model, tok, cfg: GRPOConfig, step: int, device, world: World | None = None, refill: int = 0):
    """Sample this rank's share of the step's B prompts x G completions and score them. Prompt i's
    group is sampled with its own generator seeded by (seed, step, i): the same samples whichever
    rank draws them. `refill` > 0: DAPO's extra rounds of new prompts (sample_groups)."""
    world = world or World()
    mine = world.shard(list(enumerate(rollout_problems(cfg, step, refill))))  # [(global index, problem)]
    problems = [p for _, p in mine]
    gens = [torch.Generator(device=device).manual_seed(group_seed(cfg, step, i, refill)) for i, _ in mine]
    with RoutingRecorder(model) as rec, autocast(device):
        out, texts = complete(model, tok, [prompt(p) for p in problems], stop="</answer>",
                              num_samples=cfg.num_generations, max_new_tokens=cfg.max_completion_length,
                              temperature=cfg.temperature, top_p=cfg.top_p, generator=gens)
    G = cfg.num_generations
    rs, parts = [], []
    for row, text in enumerate(texts):
        p = problems[row // G]
        r, part = rewards.reward(text, p.answer, p.numbers or None, format_weight=cfg.format_weight,
                                 consistency_weight=cfg.consistency_weight, completion_len=int(out.mask[row].sum()),
                                 max_len=cfg.max_completion_length, overlong_cache=cfg.overlong_cache)
        rs.append(r)
        parts.append(part)
    r = torch.tensor(rs)
    # the controls (r1.py sweep): a reward that cannot tell right from wrong. The parts keep the real
    # accuracy, so the logs still show what the model learns
    if cfg.reward == "format":
        r = torch.tensor([part["format"] for part in parts])
    elif cfg.reward == "random":  # 1 or 0 with even odds, blind to the text; from the group's own generator,
        r = torch.cat([(torch.rand(G, generator=g, device=device) < 0.5).float().cpu() for g in gens])  # any ranks
    ro = Rollout(tokens=torch.cat([out.prompt, out.tokens], 1), pad_mask=torch.cat([out.prompt_mask, torch.ones_like(out.mask)], 1),
                 completion_mask=out.mask, old_logp=out.logprobs.float(), rewards=r,
                 advantages=group_advantages(r, G, cfg.scale_rewards), truncated=out.truncated, texts=texts,
                 prompt_len=out.prompt.shape[1], routes=rec.routes(out) if cfg.routing_replay else None)
    return ro, problems, parts, rec.per_token(out)


def signal_groups(ro: Rollout, G: int) -> torch.Tensor:
    """[N / G] bool: the groups whose rewards are not all equal (their advantages are not all 0)."""
    return ro.rewards.view(-1, G).std(1) > 0


def take_groups(ro: Rollout, groups: torch.Tensor, G: int) -> Rollout:
    """The rows of the given groups (indices), in that order."""
    rows = (groups.unsqueeze(1) * G + torch.arange(G)).flatten()  # [len(groups) * G]
    return Rollout(tokens=ro.tokens[rows], pad_mask=ro.pad_mask[rows], completion_mask=ro.completion_mask[rows],
                   old_logp=ro.old_logp[rows], rewards=ro.rewards[rows], advantages=ro.advantages[rows],
                   truncated=ro.truncated[rows], texts=[ro.texts[r] for r in rows.tolist()], prompt_len=ro.prompt_len,
                   routes=None if ro.routes is None else [r[rows] for r in ro.routes])


def concat_rollouts(parts: list[Rollout], pad_id: int) -> Rollout:
    """Rollouts of different prompt and completion widths as one: prompts left-padded to the widest P,
    completions right-padded to the longest L (padding is masked out of everything)."""
    P, L = max(r.prompt_len for r in parts), max(r.completion_mask.shape[1] for r in parts)

    def widen(t, p, fill_prompt, fill_completion):  # [n, p + l, ...] -> [n, P + L, ...]
        n, l, rest = t.shape[0], t.shape[1] - p, t.shape[2:]
        return torch.cat([t.new_full((n, P - p, *rest), fill_prompt), t,
                          t.new_full((n, L - l, *rest), fill_completion)], 1)

    def right(t, fill):  # [n, l] -> [n, L]
        return torch.cat([t, t.new_full((t.shape[0], L - t.shape[1]), fill)], 1)
    return Rollout(tokens=torch.cat([widen(r.tokens, r.prompt_len, pad_id, pad_id) for r in parts]),
                   pad_mask=torch.cat([widen(r.pad_mask, r.prompt_len, False, True) for r in parts]),
                   completion_mask=torch.cat([right(r.completion_mask, False) for r in parts]),
                   old_logp=torch.cat([right(r.old_logp, 0.0) for r in parts]),
                   rewards=torch.cat([r.rewards for r in parts]), advantages=torch.cat([r.advantages for r in parts]),
                   truncated=torch.cat([r.truncated for r in parts]), texts=[t for r in parts for t in r.texts],
                   prompt_len=P, routes=None if parts[0].routes is None else  # the experts of padding: any valid id
                   [torch.cat([widen(r.routes[i], r.prompt_len, 0, 0) for r in parts])
                    for i in range(len(parts[0].routes))])


def sample_groups(model, tok, cfg: GRPOConfig, step: int, device, world: World):
    """Steps 1-2 with DAPO's dynamic sampling (DAPO §3.2): the step's B prompts; then, while fewer than B
    groups (over all ranks) have a reward spread and refill_rounds allow, B more prompts at a time,
    keeping only their groups with signal. -> (the rollout to train on, the first round's rollout,
    problems and reward parts (what is logged and dumped), the sampled routing for the mismatch
    diagnostic: None once refilled rows are mixed in)."""
    G = cfg.num_generations
    with world.full_model(model) as sampler_model:
        first, problems, parts, routing = rollout(sampler_model, tok, cfg, step, device, world)
    if not (cfg.dynamic_sampling and cfg.refill_rounds):
        return first, first, problems, parts, routing
    mine = len(problems)  # this rank's share of B
    kept = [take_groups(first, signal_groups(first, G).nonzero().flatten(), G)]
    for refill in range(1, cfg.refill_rounds + 1):
        have = sum(len(r.texts) for r in kept) // G
        if int(world.all_reduce_sum(torch.tensor(min(have, mine)))) >= cfg.prompts_per_step:
            break
        with world.full_model(model) as sampler_model:
            more, *_ = rollout(sampler_model, tok, cfg, step, device, world, refill=refill)
        kept.append(take_groups(more, signal_groups(more, G).nonzero().flatten()[:max(mine - have, 0)], G))
    if len(kept) == 1:  # no refill was needed
        return first, first, problems, parts, routing
    return concat_rollouts(kept, tok.pad_id), first, problems, parts, None


def rollout_stats(ro: Rollout, parts, tok, G: int, problems) -> dict:
    think_id, end_id = tok.encode("<think>")[0], tok.encode("</think>")[0]
    lens = ro.completion_mask.sum(1).float()
    think = torch.tensor([float(thinking_tokens(ro.tokens[i, ro.prompt_len:][ro.completion_mask[i]].tolist(), think_id, end_id))
                          for i in range(len(ro.texts))])
    acc = torch.tensor([p["accuracy"] for p in parts])
    fmt = torch.tensor([p["format"] for p in parts])
    consistency = torch.tensor([p["consistency"] for p in parts])
    grouped = ro.rewards.view(-1, G)
    reflections = torch.tensor([float(reflection_count(t)) for t in ro.texts])  # reflective words per completion
    mean_or_none = lambda x, m: float(x[m].mean()) if m.any() else None  # noqa: E731
    # countdown: attempts per completion, how long the search went on (row i answers problems[i // G])
    tried = [countdown.attempts(t) for i, t in enumerate(ro.texts) if problems[i // G].task == "countdown"]
    return {
        "reward": float(ro.rewards.mean()), "accuracy": float(acc.mean()), "format": float(fmt.mean()),
        "consistency": float(consistency.mean()),
        "zero_var_groups": float((grouped.std(1) == 0).float().mean()),
        "truncated": float(ro.truncated.float().mean()),
        "completion_len": float(lens.mean()), "think_len": float(think.mean()),
        "len_correct": mean_or_none(lens, acc > 0), "len_wrong": mean_or_none(lens, acc == 0),
        "reflection": float(reflections.mean()),
        "wait_after_guess": mean_or_none((reflections > 0).float(), torch.tensor([guesses(t) for t in ro.texts])),
        "attempts": sum(tried) / len(tried) if tried else None,
    }


def routing_mismatch(trained: list[torch.Tensor | None], sampled: list[torch.Tensor], ro: Rollout,
                     rows) -> float | None:
    """Fraction of (token, layer) pairs whose expert set differs between the sampling pass (`sampled`)
    and the training forward that just ran (`trained`, RoutingRecorder.last): the MoE train/inference
    routing mismatch of large-scale RL."""
    if not sampled or not trained or trained[0] is None:
        return None
    cols = trained_columns(ro, rows)  # what the training forward read
    P, n = ro.prompt_len, len(rows)
    diff, total = 0, 0
    for idx, s in zip(trained, sampled):
        train_idx = idx.view(n, cols.stop, -1).sort(-1).values  # [n, P+L', K]
        steps = s.shape[1]  # decode step j takes completion token j as input
        t = train_idx[:, P:P + steps]  # [n, steps, K]
        # token j counts if it predicts a real token j+1: a row's last token may have left the batch unread
        valid = ro.completion_mask[rows, 1:steps + 1]
        same = (t == s[rows][:, :t.shape[1]]).all(-1)
        diff += int((~same & valid[:, :t.shape[1]]).sum())
        total += int(valid[:, :t.shape[1]].sum())
    return diff / max(total, 1)


def make_reference(model: Transformer) -> Transformer:
    """A frozen copy of the policy: pi_ref of the KL term."""
    return copy.deepcopy(model).eval().requires_grad_(False)


def loss_denominator(mask: torch.Tensor, loss_type: str) -> torch.Tensor:
    """What grpo_loss divides this mini-batch's summed terms by, up to a constant: its tokens
    (dapo) or its sequences (grpo: a mean of sequence means; dr_grpo: sequences x L_max)."""
    return mask.sum().clamp(min=1).float() if loss_type == "dapo" else torch.tensor(float(len(mask)))


def make_optimizer(model: Transformer, cfg: GRPOConfig) -> torch.optim.AdamW:
    """AdamW, fused (one kernel for every tensor; see train.make_optimizer)."""
    return torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, betas=(0.9, 0.99), weight_decay=cfg.weight_decay,
                             fused=True)


def grpo_update(model: Transformer, ref, opt, ro: Rollout, sampled_routing, cfg: GRPOConfig, step: int, device,
                world: World) -> dict:
    """Steps 3-5 of a GRPO step, on a rollout already sampled and scored: which groups carry signal,
    mu epochs of the clipped loss over mini-batches, the MoE bias update. -> the step's training stats."""
    G = cfg.num_generations
    # routing replay: the policy (and the reference) score the experts the sampler used
    routes = ro.routes if cfg.routing_replay else None
    # 3. advantages (computed in rollout) and which groups carry signal
    keep = torch.ones(len(ro.texts), dtype=torch.bool)
    if cfg.dynamic_sampling:
        keep = (ro.rewards.view(-1, G).std(1) > 0).repeat_interleave(G)
    loss_mask = ro.completion_mask.clone()
    if cfg.mask_truncated_completions:
        loss_mask &= ~ro.truncated.unsqueeze(1)
    rows_all = keep.nonzero().flatten()
    n_kept = int(world.all_reduce_sum(torch.tensor(len(rows_all))))  # every rank takes the same steps
    # 4. mu epochs over mini-batches
    losses, clip, kls, ents, ratios, mismatch = [], [], [], [], [], []
    model.reset_expert_load()  # the training forwards count the rollout's expert loads
    for _ in range(cfg.num_iterations):
        if n_kept == 0:
            break
        perm = rows_all[torch.randperm(len(rows_all))]
        for batch in perm.tensor_split(min(cfg.num_minibatches, n_kept)):
            # micro-batches: the mini-batch's rows sorted by completion length, cut into the same number of
            # pieces on every rank, each trimmed to its own longest completion (completion_logprobs), so
            # padding costs little; their gradients add up to the mini-batch's, each loss weighted by its
            # share of the mini-batch's normaliser (all ranks')
            n_micro = -(-int(world.all_reduce_sum(torch.tensor(len(batch)))) // (world.world_size * cfg.microbatch_size))
            by_length = batch[loss_mask[batch].sum(1).argsort(stable=True)]
            # a rank with no rows in a micro-batch still joins the sharded forward and backward, on one row
            # whose loss weighs 0
            micro = [(rows, 1.0) if len(rows) else (torch.zeros(1, dtype=torch.long), 0.0)
                     for rows in by_length.tensor_split(max(n_micro, 1))]
            denoms = [loss_denominator(loss_mask[rows], cfg.loss_type) * weight for rows, weight in micro]
            total = world.all_reduce_sum(sum(denoms))
            step_loss, sums = 0.0, {"tokens": 0.0, "clip": 0.0, "ratio": 0.0, "kl": 0.0, "ent": 0.0}
            for j, ((rows, weight), denom) in enumerate(zip(micro, denoms)):
                measure = bool(sampled_routing) and not losses and j == 0  # the first micro-batch only
                recorder = RoutingRecorder(model, decode=False) if measure else contextlib.nullcontext()
                with recorder as routed, autocast(device):
                    logp, ent = completion_logprobs(model, ro, rows, cfg.temperature, routes)
                    ref_logp = None
                    if ref is not None:
                        with torch.no_grad():
                            ref_logp, _ = completion_logprobs(ref, ro, rows, cfg.temperature, routes)
                if measure:
                    mm = routing_mismatch(routed.last, sampled_routing, ro, rows)
                    mismatch += [] if mm is None else [mm]
                loss, st = grpo_loss(logp, ro.old_logp[rows], ro.advantages[rows], loss_mask[rows], ref_logp=ref_logp,
                                     beta=cfg.beta, epsilon=cfg.epsilon, epsilon_high=cfg.epsilon_high,
                                     loss_type=cfg.loss_type, max_len=cfg.max_completion_length)
                loss = loss * (denom * world.world_size / total)  # exactly denom / total in one process
                if not torch.isfinite(loss):  # a NaN stops the run: it is never skipped silently
                    raise R1Error(f"grpo step {step}: the loss is {loss.item()} (non-finite); "
                                  f"lower --learning-rate (now {cfg.learning_rate}) or check the run's samples.txt")
                loss.backward()
                step_loss += float(loss.detach())
                m = loss_mask[rows].float() * weight
                n = float(m.sum())  # the stats are token means over the mini-batch
                sums["tokens"] += n
                sums["clip"] += st["clip_frac"] * n
                sums["ratio"] += st["ratio"] * n
                sums["kl"] += (st["kl"] or 0.0) * n
                sums["ent"] += float((ent.detach() * m).sum())
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            opt.step()
            opt.zero_grad(set_to_none=True)
            n = max(sums["tokens"], 1.0)
            losses.append(float(world.all_reduce_mean(torch.tensor(step_loss))))
            clip.append(sums["clip"] / n)
            ratios.append(sums["ratio"] / n)
            ents.append(sums["ent"] / n)
            if ref is not None and cfg.beta > 0:
                kls.append(sums["kl"] / n)
    # 5. MoE bias update from the rollout's loads (all ranks')
    load = world.all_reduce_sum(model.expert_load())
    if n_kept:
        model.update_biases(load)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    return {"loss": mean(losses), "clip_frac": mean(clip), "ratio": mean(ratios), "entropy": mean(ents),
            "kl": mean(kls), "groups_used": n_kept // G, "load_max_over_mean": model.load_imbalance(load),
            "routing_mismatch": mean(mismatch)}


def train_grpo(run: Path, model: Transformer, tok, cfg: GRPOConfig, device, state: dict | None = None,
               quiet: bool = False, world: World | None = None) -> dict:
    """The GRPO loop (see the module docstring). `state`: a grpo checkpoint to resume from;
    `world`: the processes this one trains with (default: none, runs.World)."""
    world = world or World()
    cfg.check_fits(model.cfg)
    metrics = Metrics(run / "metrics.jsonl")
    opt = make_optimizer(model, cfg)
    ref = None
    start = 0
    if state is not None and state.get("stage") == "grpo":
        world.load_optimizer(model, opt, state)
        set_rng_state(state["rng"])
        start = state["step"]
    else:
        seed_everything(cfg.seed)
    if world.is_main:  # what a killed run logged after its last checkpoint is logged again
        metrics.cut_after(start)
        cut_samples_after(run / "samples.txt", start)
    if cfg.beta > 0:  # the reference model exists only when the KL term is used
        ref = make_reference(model)
        if state is not None and state.get("ref") is not None:
            ref.load_state_dict(state["ref"])
    G = cfg.num_generations
    progress = Progress(cfg.steps, "grpo", start_step=start, every=1, quiet=quiet or not world.is_main)
    last = {}
    for step in range(start, cfg.steps):
        t0 = time.perf_counter()
        # 1. sample and 2. score (this rank's prompts, on a model whose forwards need no other rank),
        # with DAPO's refill of groups that carry signal when refill_rounds > 0
        ro, first, problems, parts, sampled_routing = sample_groups(model, tok, cfg, step, device, world)
        t_sample = time.perf_counter() - t0
        stats = rollout_stats(first, parts, tok, G, problems)
        # 3.-5. advantages, the clipped loss over mini-batches, the MoE bias update
        upd = grpo_update(model, ref, opt, ro, sampled_routing, cfg, step, device, world)
        # 6. the reference reset, then log (rank 0; rollout statistics averaged over ranks)
        if ref is not None and (step + 1) % cfg.ref_reset_every == 0:
            ref.load_state_dict(model.state_dict())
        last = {"step": step + 1, **stats, **upd, "sample_s": t_sample, "step_s": time.perf_counter() - t0}
        last = rank_means(last, world)
        if world.is_main:
            metrics.log(stage="grpo", **last)
        progress.update(step + 1, reward=last["reward"], acc=last["accuracy"], think=last["think_len"],
                        zero_var=last["zero_var_groups"])
        if world.is_main and cfg.dump_every and (step % cfg.dump_every == 0 or step + 1 == cfg.steps):
            with open(run / "samples.txt", "a") as f:
                f.write(f"=== step {step + 1}\n")
                for i in range(0, min(len(first.texts), 3 * G), G):
                    f.write(f"{problems[i // G].question} (answer {problems[i // G].answer}) reward "
                            f"{first.rewards[i]:.2f}\n  {first.texts[i]}\n")
        # 7. eval (rank 0, on the whole model) and checkpoint
        done = step + 1 == cfg.steps
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or done:
            with world.full_model(model) as full:
                if world.is_main:
                    ev = evaluate(full, tok, eval_problems(cfg.tasks, cfg.eval_n, cfg.difficulty), k=cfg.eval_k,
                                  greedy=False, max_new_tokens=cfg.max_completion_length, seed=cfg.seed)
                    metrics.log(stage="grpo", step=step + 1, eval={t: r for t, r in ev["tasks"].items()})
                    progress.message(f"  eval @ {step + 1}: pass@1 " + ", ".join(
                        f"{t} {r['pass@1']:.3f}" for t, r in ev["tasks"].items()) +
                        f", think {ev['overall']['think_len']:.1f} tokens")
                    last["eval"] = ev["tasks"]
        if (cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0) or done:
            world.save_checkpoint(run, step + 1, model, opt, {
                "ref": None if ref is None else ref.state_dict(), "rng": rng_state(), "step": step + 1,
                "stage": "grpo", "config": model.cfg.to_dict(), "grpo": asdict(cfg)})
    return last


def rank_means(row: dict, world: World) -> dict:
    """The float fields of a log row averaged over ranks; a field that is None on some ranks (say
    len_correct, when no sample of a rank was right) is the mean over the ranks that have it."""
    if world.world_size == 1:
        return row
    keys = [k for k, v in row.items() if isinstance(v, float) or v is None]  # the same keys on every rank
    have = torch.tensor([[0.0 if row[k] is None else row[k], float(row[k] is not None)] for k in keys],
                        dtype=torch.float64)  # [K, 2]
    total = world.all_reduce_sum(have)
    return row | {k: (s / n if n else None) for k, (s, n) in zip(keys, total.tolist())}
