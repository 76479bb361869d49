"""Pre-training and supervised fine-tuning: the stage that makes a base model (V3 §4.1-4.2 in
miniature) and, with a loss on completion tokens only, any SFT model (R1 §2.3, cold start and
rejection-sampling SFT).

The loss is V3's: next-token cross-entropy + lambda/D * sum of the MTP depths' losses + the tiny
sequence-wise balance loss. AdamW (beta2 0.95, weight decay 0.1 as in V3), gradient clipping at 1.0,
and the aux-loss-free MoE bias update after every optimizer step from that step's expert loads.

The schedule is V3's shape (§4.2): linear warm-up, a constant lr, a cosine decay to min_lr_frac * lr. The
constant phase lasts until the skill appears: pre-training checks the held-out accuracy at each
evaluation (greedy, or for a search like countdown's the pass@1 of samples at gate_temperature) and, once
it reaches decay_at_greedy, runs the decay and then the final mix (fewer worked solutions, at the lowest
lr) and stops (docs/traps.md, "A skill that appears at an unknown step").

In one process, a step's batch runs as one or two micro-batches of similar lengths (length_groups: less padding),
their losses weighted back to the whole batch's and their gradients summed.

Resume is exact: every batch is a pure function of (seed, step), and a checkpoint holds the model,
the optimizer, the RNG states and the step, so N steps + resume + N steps == 2N steps, bit for bit.

On several processes (scale/launch.py) the same loop runs on every rank with a `World` (runs.py):
each rank takes its slice of the step's global batch, its losses are weighted by its share of the
global batch's tokens (so the ranks' average gradient is the global token mean's gradient), the
MoE expert loads are summed over ranks before the bias update, and rank 0 alone logs and writes.

    python r1.py pretrain --run runs/base --steps 1200
    python r1.py sft --data cold_start.jsonl --init runs/base --run runs/dev1
"""

from __future__ import annotations

import functools
import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import torch

from data import Tokenizer, build_corpus, completion, completion_budget, eval_problems, prompt
from evaluate import evaluate
from model import ModelConfig, Transformer
from runs import (MAX_EVAL_N, Metrics, Progress, R1Error, World, autocast, check_numbers, rng_state, seed_everything,
                  set_rng_state)


GATE_K = 8  # samples a held-out problem when the skill gate reads sampled accuracy (50 x 8 at T=0.6: ~2 s)


@dataclass
class TrainConfig:
    steps: int = 2400  # optimizer steps; with decay_at_greedy, the most the run may take
    batch_size: int = 64
    lr: float = 2e-3  # held until the skill gate; at 3e-3 late seeds never settled the skill (docs/traps.md)
    min_lr_frac: float = 0.1  # cosine decays to lr * min_lr_frac
    warmup: int = 50
    decay_steps: int = 300  # V3 §4.2's shape: constant lr after the warm-up, then a cosine over decay_steps steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    tasks: tuple[str, ...] = ("add",)
    # the corpus mix (data/corpus.py): LONG / SHORT / the rest GRADED. Mostly worked solutions first,
    # so the skill is learnt; then, for the last `final_mix_steps` (after the decay, at the lowest lr, so that
    # the mix moves how long the base thinks without wearing away the skill), a mix with more SHORT answers, so
    # the base ends up undecided about how long to think (the choice RL gets to make)
    long_frac: float = 0.6
    short_frac: float = 0.2
    final_mix_steps: int = 300
    final_long_frac: float = 0.1
    final_short_frac: float = 0.6
    reflect_rate: float = 0.2  # share of early stops written REFLECT: guess, " wait", the rest (data/corpus.py)
    difficulty: int | None = None  # None = each task's default
    # > 0: hold the lr until the held-out accuracy (checked every eval_every steps; never when that is 0)
    # reaches this, then end the run with the decay and the final mix; `steps` is then a cap (0 = always `steps`)
    decay_at_greedy: float = 0.3
    # the gate's accuracy: 0 = greedy; > 0 = the pass@1 of GATE_K samples a problem at this temperature. A greedy
    # search loops on its first dead end until the lr decays, so countdown's greedy accuracy says little about
    # what sampling (and RL) gets from the model (docs/traps.md); its story gates on samples at 0.6
    gate_temperature: float = 0.0
    eval_every: int = 100  # held-out loss and greedy accuracy every N steps (0 = only at the end)
    eval_n: int = 50  # held-out problems per task for those evaluations
    ckpt_every: int = 300
    completion_only: bool = False  # SFT: loss on completion tokens only

    def __post_init__(self):
        check_numbers(self)
        if self.eval_n > MAX_EVAL_N:
            raise R1Error(f"--eval-n must be at most {MAX_EVAL_N:,}, got {self.eval_n}")
        if self.steps <= 0:
            raise R1Error(f"--steps must be > 0, got {self.steps}")
        if self.batch_size <= 0:
            raise R1Error(f"--batch-size must be > 0, got {self.batch_size}")
        if not self.lr > 0:
            raise R1Error(f"--lr must be > 0, got {self.lr}")
        if self.final_mix_steps < 0:
            raise R1Error(f"--final-mix-steps must be >= 0, got {self.final_mix_steps}")
        if self.warmup < 0 or self.eval_every < 0 or self.ckpt_every < 0 or self.eval_n <= 0:
            raise R1Error("--warmup, --eval-every, --ckpt-every must be >= 0 and --eval-n > 0")
        if not 0 <= self.min_lr_frac <= 1:
            raise R1Error(f"--min-lr-frac must be in [0, 1], got {self.min_lr_frac}")
        if self.decay_steps < 1:
            raise R1Error(f"--decay-steps must be >= 1, got {self.decay_steps}")
        if not 0 <= self.decay_at_greedy <= 1:
            raise R1Error(f"--decay-at-greedy must be in [0, 1], got {self.decay_at_greedy}")
        if not 0 <= self.gate_temperature <= 2:
            raise R1Error(f"--gate-temperature must be in [0, 2], got {self.gate_temperature}")
        if not (0 <= self.beta1 < 1 and 0 <= self.beta2 < 1) or self.weight_decay < 0 or self.grad_clip <= 0:
            raise R1Error("--beta1/--beta2 must be in [0, 1), --weight-decay >= 0 and --grad-clip > 0")
        self.tasks = tuple(self.tasks)
        try:  # one dry example checks tasks, difficulty and the corpus mix before anything is written
            for lf, sf in ((self.long_frac, self.short_frac), (self.final_long_frac, self.final_short_frac)):
                build_corpus(1, tasks=self.tasks, seed=0, long_frac=lf, short_frac=sf,
                             reflect_rate=self.reflect_rate, difficulty=self.difficulty)
            eval_problems(self.tasks, self.eval_n, self.difficulty)
        except ValueError as e:
            raise R1Error(str(e)) from None


def lr_at(step: int, cfg: TrainConfig, end: int | None = None) -> float:
    """Linear warm-up over `warmup` steps, a constant lr, a cosine from lr to lr * min_lr_frac over
    `decay_steps` steps (V3 §4.2: constant, then cosine decay), then lr * min_lr_frac for the last
    `final_mix_steps` steps before `end`, which train on the final mix. `end` is cfg.steps, or earlier
    when the skill appeared (TrainConfig.decay_at_greedy): a constant lr can stop anywhere, so the run
    needs to know its length only when it starts to decay."""
    end = cfg.steps if end is None else end
    if step < cfg.warmup:
        return cfg.lr * (step + 1) / cfg.warmup
    decay_end = end - cfg.final_mix_steps
    start = max(cfg.warmup, decay_end - cfg.decay_steps)
    progress = max(0, step - start) / max(1, decay_end - start)
    return cfg.lr * (cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))


def end_after_skill(step: int | None, cfg: TrainConfig) -> int:
    """The step a run ends at when the skill appeared after `step` steps (None: not yet, cfg.steps): the
    decay and the final mix still to go."""
    return cfg.steps if step is None else min(cfg.steps, step + cfg.decay_steps + cfg.final_mix_steps)


def make_optimizer(model: Transformer, cfg: TrainConfig) -> torch.optim.AdamW:
    """AdamW; no weight decay on norms (1-d tensors), as is usual.

    fused=True: one kernel updates every tensor, instead of a dozen elementwise ops per tensor (4x
    faster on CPU: 10 -> 2.5 ms a step for `tiny`, 74 -> 29 ms for `small`). Same update, same state.
    """
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": cfg.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}],
                             lr=cfg.lr, betas=(cfg.beta1, cfg.beta2), fused=True)


def collate(pairs: list[tuple[str, str]], tok: Tokenizer, max_len: int, completion_only: bool):
    """(prompt, completion) pairs -> tokens [B, T], targets [B, T] (right-padded, -100 = no loss).

    Each example is <bos> prompt completion <eos>; with completion_only the prompt's targets are -100.
    """
    rows, tgts = [], []
    for p, c in pairs:
        p_ids = tok.encode(p, bos=True)
        full = p_ids + tok.encode(c, eos=True)
        if len(full) - 1 > max_len:
            raise R1Error(f"an example is {len(full) - 1} tokens, longer than the model's max_seq_len {max_len}: "
                          f"raise max_seq_len or shorten the data")
        t = full[1:]
        if completion_only:
            t = [-100] * (len(p_ids) - 1) + t[len(p_ids) - 1:]
        rows.append(full[:-1])
        tgts.append(t)
    T = max(len(r) for r in rows)
    tokens = torch.full((len(rows), T), tok.pad_id, dtype=torch.long)
    targets = torch.full((len(rows), T), -100, dtype=torch.long)
    for i, (r, t) in enumerate(zip(rows, tgts)):
        tokens[i, :len(r)] = torch.tensor(r)
        targets[i, :len(t)] = torch.tensor(t)
    return tokens, targets


def length_groups(pairs: list[tuple[str, str]], tok: Tokenizer) -> list[list[tuple[str, str]]]:
    """A batch's examples in one or two groups by length, each to be collated (and padded) on its own.

    Right-padding a batch to its longest example wastes the padding's compute: 17% of the tokens of a
    pre-training batch (a mix of ~45- and ~90-token examples), 33% in the final mix. The shortest examples
    go into a second micro-batch when that pads least: the cut is where the two groups' padded
    token counts (rows x longest) sum to least, kept only if it saves at least a tenth of the batch's
    tokens (a second forward and backward has a fixed cost). Padding then falls to ~8% (~10% in the final
    mix); the step runs 1.13x (1.31x) faster on `tiny`. Deterministic: the batch stays a pure function of
    (seed, step), and the losses are weighted back to the whole batch's (train_lm).
    """
    lengths = [len(tok.encode(p, bos=True)) + len(tok.encode(c, eos=True)) - 1 for p, c in pairs]  # as collate
    order = sorted(range(len(pairs)), key=lengths.__getitem__)  # stable: ties keep the batch's order
    L = [lengths[i] for i in order]
    n = len(L)
    padded = lambda cut: cut * L[cut - 1] + (n - cut) * L[-1]  # noqa: E731   tokens of the two groups
    cut = min(range(1, n + 1), key=padded)
    if cut == n or padded(cut) > 0.9 * n * L[-1]:
        return [pairs]
    return [[pairs[i] for i in order[cut:]], [pairs[i] for i in order[:cut]]]  # longest group first


def pretrain_batches(cfg: TrainConfig) -> Callable[..., list[tuple[str, str]]]:
    """(step, end) -> that step's batch of (prompt, completion) pairs, a pure function of (seed, step, end):
    the last final_mix_steps steps before the run's end use the final mix."""
    def batch(step: int, end: int | None = None):
        final = step >= (cfg.steps if end is None else end) - cfg.final_mix_steps
        return build_corpus(cfg.batch_size, tasks=cfg.tasks, seed=cfg.seed * 1_000_003 + step,
                            long_frac=cfg.final_long_frac if final else cfg.long_frac,
                            short_frac=cfg.final_short_frac if final else cfg.short_frac,
                            reflect_rate=cfg.reflect_rate, difficulty=cfg.difficulty)
    return batch


def sft_batches(pairs: list[tuple[str, str]], cfg: TrainConfig) -> Callable[[int], list[tuple[str, str]]]:
    """Step -> a batch of the SFT set: epochs of a permutation fixed by (seed, epoch)."""
    n = len(pairs)

    @functools.lru_cache(maxsize=4)  # consecutive steps reuse the current epoch's permutation
    def permutation(epoch: int) -> list[int]:
        return torch.randperm(n, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)).tolist()

    def batch(step: int, end: int | None = None):  # (`end` is the pre-training mix's; an SFT set has one mix)
        return [pairs[permutation(i // n)[i % n]] for i in range(step * cfg.batch_size, (step + 1) * cfg.batch_size)]
    return batch


def read_jsonl(path: str | Path) -> list[tuple[str, str]]:
    """prompt/completion pairs from a JSONL file; a malformed line is an R1Error naming the line."""
    path = Path(path)
    if not path.is_file():
        raise R1Error(f"--data {path}: no such file")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise R1Error(f"{path}:{line}: not UTF-8 text (byte {e.object[e.start]:#04x}); save the file as UTF-8") from None
    pairs = []
    for n, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise R1Error(f"{path}:{n}: not valid JSON ({e.msg})") from None
        if not (isinstance(row, dict) and isinstance(row.get("prompt"), str) and isinstance(row.get("completion"), str)):
            raise R1Error(f"{path}:{n}: each line needs string fields 'prompt' and 'completion'")
        pairs.append((row["prompt"], row["completion"]))
    if not pairs:
        raise R1Error(f"--data {path}: the file holds no examples")
    return pairs


def check_sft_pairs(pairs: list[tuple[str, str]], tok: Tokenizer, source) -> None:
    """R1Error naming the first example (by its line number in `source`) that the tokenizer cannot write."""
    for i, (p, c) in enumerate(pairs, start=1):
        try:
            tok.encode(p + c)
        except ValueError as e:
            raise R1Error(f"{source}:{i}: {e}") from None


@torch.no_grad()
def heldout_loss(model: Transformer, tok: Tokenizer, problems, device) -> float:
    """Main next-token loss on LONG worked solutions of held-out problems (completion tokens only)."""
    model.eval()
    pairs = [(prompt(p), completion(p)) for p in problems]
    tokens, targets = collate(pairs, tok, model.cfg.max_seq_len, completion_only=True)
    with autocast(device):
        loss = model(tokens.to(device), targets.to(device))["main"].item()
    model.train()
    return loss


def global_token_losses(out: dict, targets: torch.Tensor, cfg: ModelConfig, world: World,
                        n_global: torch.Tensor | None = None, row_share: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's (micro-batch's) losses weighted so that their sum over micro-batches and mean over ranks
    is the global batch's.

    The model's cross-entropies are sums over this micro-batch divided by its n main targets (the MTP
    depths too: V3 eq. 24 divides each depth's sum by T, the main sequence's length); the global loss
    divides by all N targets of the step (`n_global`, all ranks; by default this batch's, all-reduced), i.e.
    weight n * world_size / N: one weight for every depth. The balance loss is a mean over sequences and
    every rank has as many: a micro-batch's is weighted by its share of the rank's rows. In one process,
    one micro-batch, both weights are exactly 1.0. Returns (total to backward, detached
    [main, mtp_1.., balance] for logging).
    """
    n = (targets != -100).sum().float()
    n_global = world.all_reduce_sum(n) if n_global is None else n_global
    w = n * world.world_size / n_global
    main = out["main"] * w
    mtp = [loss * w for loss in out["mtp"]]
    bal = out["balance"] * row_share
    total = main + bal  # the same sum, in the same order, as Transformer.forward's "total"
    if mtp:
        total = total + cfg.mtp_lambda / cfg.mtp_depth * sum(mtp)
    return total, torch.stack([main, *mtp, bal]).detach()


def train_lm(run: Path, model: Transformer, tok: Tokenizer, cfg: TrainConfig, batches, device,
             state: dict | None = None, quiet: bool = False, stage: str = "pretrain", world: World | None = None) -> dict:
    """The pre-training / SFT loop. `state` is a checkpoint to resume from (optimizer, step, RNG);
    `world` the processes this one trains with (default: none, runs.World).

    Order of one step: batch -> forward (losses) -> backward -> clip -> AdamW step -> MoE bias update
    -> log -> eval -> checkpoint.
    """
    world = world or World()
    metrics = Metrics(run / "metrics.jsonl")
    opt = make_optimizer(model, cfg)
    start, skill_at = 0, None  # skill_at: the step the skill appeared at (decay_at_greedy), which sets the end
    if state is not None and state.get("stage") == stage and "optimizer" in state:
        world.load_optimizer(model, opt, state)
        set_rng_state(state["rng"])
        start, skill_at = state["step"], state.get("skill_at")
    else:
        seed_everything(cfg.seed)
    end = end_after_skill(skill_at, cfg)
    if world.is_main:
        metrics.cut_after(start)  # rows a killed run logged after its last checkpoint are logged again
    model.train()
    progress = Progress(end, stage, start_step=start, quiet=quiet or not world.is_main)
    t0, tokens_seen, last = time.perf_counter(), 0, {}
    for step in range(start, cfg.steps):
        if step >= end:
            break
        # 1. batch (a pure function of the step and the end, so resume needs no data state); this rank's
        # slice, in one or two micro-batches of similar lengths (less padding, length_groups)
        pairs = world.shard(batches(step, end))
        # (one process only: under FSDP every rank must run as many forwards, or the collectives hang)
        groups = length_groups(pairs, tok) if world.world_size == 1 else [pairs]
        micro = [collate(group, tok, model.cfg.max_seq_len, cfg.completion_only) for group in groups]
        micro = [(tokens.to(device), targets.to(device)) for tokens, targets in micro]
        n_targets = sum((targets != -100).sum() for _, targets in micro)
        n_global = world.all_reduce_sum(n_targets.float())  # the step's targets, over all ranks
        # 2. forward and backward (gradients add up over the micro-batches)
        for g in opt.param_groups:
            g["lr"] = lr_at(step, cfg, end)
        model.reset_expert_load()
        parts = 0
        for tokens, targets in micro:
            with autocast(device):  # every real token counts in the MoE loads, prompts of SFT data too
                out = model(tokens, targets, moe_mask=tokens != tok.pad_id)
            total, p = global_token_losses(out, targets, model.cfg, world, n_global, len(tokens) / len(pairs))
            if not torch.isfinite(total):
                raise R1Error(f"{stage} step {step}: the loss is {total.item()}; lower --lr (now {cfg.lr})")
            total.backward()
            parts = parts + p
        # 3. clip, step, and the aux-loss-free bias update from this step's loads (all ranks' tokens)
        gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        load = world.all_reduce_sum(model.expert_load())
        model.update_biases(load)
        # 4. log (rank 0; losses and token counts of the global batch)
        parts = world.all_reduce_mean(parts.float()).tolist()
        tokens_seen += int(n_global)
        tps = tokens_seen / (time.perf_counter() - t0)
        last = {"step": step + 1, "loss": parts[0], "mtp": parts[1:-1], "balance": parts[-1], "lr": lr_at(step, cfg, end),
                "grad_norm": float(getattr(gnorm, "full_tensor", lambda: gnorm)()),  # FSDP: a DTensor
                "load_max_over_mean": model.load_imbalance(load), "tokens_per_s": tps}
        if world.is_main:
            metrics.log(stage=stage, **last)
        progress.update(step + 1, loss=last["loss"], tok_s=int(tps))
        # 5. eval (rank 0, on the whole model), the skill gate, and checkpoint
        done = step + 1 == end
        if (cfg.eval_every and (step + 1) % cfg.eval_every == 0) or done:
            acc = torch.zeros(())
            temp = cfg.gate_temperature
            kind = "sampled" if temp else "greedy"
            with world.full_model(model) as full:
                if world.is_main:
                    problems = eval_problems(cfg.tasks, cfg.eval_n, cfg.difficulty)
                    ev = {"heldout_loss": heldout_loss(full, tok, problems, device)}
                    # greedy, or GATE_K samples at temp from a generator seeded by the step (the global RNG,
                    # which resume restores, is left alone)
                    res = evaluate(full, tok, problems, k=GATE_K if temp else 1, temperature=temp, greedy=False,
                                   seed=step + 1, max_new_tokens=completion_budget(cfg.tasks))
                    ev |= {f"{kind}_{t}": r["pass@1"] for t, r in res["tasks"].items()}
                    metrics.log(stage=stage, step=step + 1, eval=ev)
                    progress.message(f"  eval @ {step + 1}: " + ", ".join(f"{k} {v:.3f}" for k, v in ev.items()))
                    last |= ev
                    acc = torch.tensor(res["overall"]["pass@1"])
            # the skill gate: once that accuracy reaches decay_at_greedy, the lr decays and the final
            # mix runs for the steps that remain (every rank learns rank 0's accuracy)
            if cfg.decay_at_greedy and skill_at is None and not done:
                if float(world.all_reduce_sum(acc)) >= cfg.decay_at_greedy:
                    skill_at = step + 1
                    end = end_after_skill(skill_at, cfg)
                    progress.total = end
                    if world.is_main:
                        metrics.log(stage=stage, step=step + 1, skill_at=step + 1, end=end)
                    progress.message(f"  {kind} accuracy reached {cfg.decay_at_greedy:g} at step {step + 1}: "
                                     f"the lr decays and the final mix runs until step {end}")
                    done = step + 1 == end
        if (cfg.ckpt_every and (step + 1) % cfg.ckpt_every == 0) or done:
            world.save_checkpoint(run, step + 1, model, opt, {"rng": rng_state(), "step": step + 1, "stage": stage,
                                                             "skill_at": skill_at, "config": model.cfg.to_dict(),
                                                             "train": asdict(cfg)})
    return last
