"""Experiments with error bars: GRPO settings x seeds from one saved base (`python r1.py sweep`).

One RL run proves little: a gain can come from the seed, from the prompts a run happened to draw, or
from anything but the verifier. This file runs a grid of named *arms* (each a change to the story's
GRPO settings, train_grpo.GRPOConfig) over several seeds, every cell a GRPO run from the same base, and
reports each arm as the mean and spread over its seeds. Cells of one seed share their first rollout
(the same prompts, the same generators), so arms differ by their setting, not by luck of the draw.

    arm                   change from the story's GRPO            the question
    default               -                                       the gain of the real reward
    random-reward         reward = a coin flip per completion     is the gain from the verifier? (the
    format-only           reward = the format reward only           "spurious rewards" result: a random reward
                                                                    lifted a 7B model 21 points on math)
    kl-0.04               beta 0.04 (TRL's old default)           does a KL penalty hold RL back?
    kl-0.001              beta 0.001 (R1)
    grpo                  loss_type grpo (R1, DeepSeekMath)       length bias (Dr. GRPO §3): per-sequence
    dr-grpo               loss_type dr_grpo, scale_rewards none     means let wrong answers grow long
    no-std                scale_rewards none                      the std division alone
    no-dynamic-sampling   dynamic_sampling false                  groups with equal rewards kept (DAPO)
    minibatches-4         num_minibatches 4 (R1: 16)              4 updates a rollout: the ratio leaves 1
    clip-higher           as minibatches-4, epsilon_high 0.28     more room for rare tokens to rise (DAPO)
    random-minibatches-4  as minibatches-4, reward random         with the clip binding, does a random reward
                                                                    still only add noise?

With one mini-batch and one epoch (the story's GRPO) every update is on-policy: the ratio is exactly 1,
the clip never binds, and clip-higher would change nothing; so clip-higher is measured against its own
baseline with four mini-batches, whose later updates are off-policy.

The story's defaults (train_grpo.py) are token-level loss (dapo), group std scaling, beta 0, no clip-higher,
dynamic sampling on. Per cell the table has the held-out evaluation after RL (R1's protocol, evaluate.py:
pass@1 and cons@k over k samples at T=0.6), its gain over the base evaluated with the same seed, the
completion length of right and of wrong answers (held out, and in the last quarter of the training
rollouts at T=1, where wrong answers are many), the reflection rate, the KL from the base (kl_to_base),
the clip fraction over training and the GRPO time. Mean +- sample standard deviation over seeds.

    python r1.py sweep --init runs/zero/base                    the whole grid, 3 seeds (runs/sweep)
    python r1.py sweep --init runs/zero/base --arms default,random-reward --seeds 2
    python r1.py sweep --init runs/zero/base --resume           skip finished cells, resume the rest

RUN/ARM/seedS is an ordinary GRPO run (`r1.py eval`, `ask`, `plot` work on it) with result.json; RUN holds
sweep.json (every cell), sweep.md (the table) and sweep.png (held-out pass@1 and wrong-answer length vs
step, one panel per question, a band of +-1 std around each arm's mean).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from recipe import grpo_stage
from report import grpo_metrics, plt
from runs import R1Error, check_resume_config, load_run, prepare_run_dir, read_json, write_json_atomic, write_text_atomic
from data import eval_problems
from evaluate import evaluate
from train_grpo import GRPOConfig, completion_logprobs, rollout

# A smoke sweep (`--smoke`, for tests): two seeds of every arm, a few tiny steps each
SMOKE = dict(seeds=2, steps=2, eval_every=1, n=3, k=2,
             grpo=dict(prompts_per_step=2, num_generations=4, max_completion_length=24, dump_every=0))

# each arm: the GRPOConfig fields it changes (the story's GRPO is `default`)
ARMS: dict[str, dict] = {
    "default": {},
    "random-reward": {"reward": "random"},
    "format-only": {"reward": "format"},
    "kl-0.04": {"beta": 0.04},
    "kl-0.001": {"beta": 0.001},
    "grpo": {"loss_type": "grpo"},
    "dr-grpo": {"loss_type": "dr_grpo", "scale_rewards": "none"},
    "no-std": {"scale_rewards": "none"},
    "no-dynamic-sampling": {"dynamic_sampling": False},
    # the clip bounds act only on updates after a rollout's first one: the story's one mini-batch has ratio 1
    "minibatches-4": {"num_minibatches": 4},
    "clip-higher": {"num_minibatches": 4, "epsilon_high": 0.28},
    "random-minibatches-4": {"reward": "random", "num_minibatches": 4},
}


@dataclass
class SweepConfig:
    arms: tuple[str, ...] = tuple(ARMS)
    seeds: int = 3  # seeds 0 .. seeds-1 per arm
    steps: int = 80  # GRPO steps per cell (the story's)
    eval_every: int = 20  # held-out evaluation every N steps (the curves), and at the end (the table)
    n: int = 100  # held-out problems
    k: int = 8  # samples per problem (pass@1 and cons@k at T=0.6)
    grpo: dict | None = None  # other GRPOConfig fields for every cell (the smoke run's sizes)

    def __post_init__(self):
        self.arms = tuple(self.arms)
        unknown = [a for a in self.arms if a not in ARMS]
        if unknown or not self.arms:
            raise R1Error(f"--arms: unknown arm(s) {', '.join(unknown) or '(none given)'}; the arms are {', '.join(ARMS)}")
        if not 1 <= self.seeds <= 100:
            raise R1Error("--seeds must be in 1..100")
        self.cell(self.arms[0], 0)  # every GRPO check (steps, n, k) before anything is written

    def cell(self, arm: str, seed: int) -> GRPOConfig:
        """The GRPO settings of one cell."""
        return GRPOConfig(**{**(self.grpo or {}), "seed": seed, "steps": self.steps, "eval_every": self.eval_every,
                             "eval_n": self.n, "eval_k": self.k, "ckpt_every": self.eval_every, **ARMS[arm]})


# --------------------------------------------------------------------------------------------
# One cell: GRPO from the base, then what the table needs
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def kl_to_base(model, base, tok, cfg: GRPOConfig, device) -> float:
    """KL(policy || base) per completion token, on one rollout of training prompts the policy samples
    (T = cfg.temperature): the mean of log pi - log pi_base over its tokens, an unbiased estimate. How far
    RL moved the model, for every arm (the training KL exists only when beta > 0)."""
    model.eval()
    ro, *_ = rollout(model, tok, cfg, cfg.steps, device)  # the prompts of the step after the last
    rows = torch.arange(len(ro.texts))
    base_logp, _ = completion_logprobs(base, ro, rows, cfg.temperature)  # [N, L]
    mask = ro.completion_mask.float()
    return float(((ro.old_logp - base_logp) * mask).sum() / mask.sum().clamp(min=1))


def cell_result(cell: Path, base, tok, cfg: GRPOConfig, device) -> dict:
    """What a finished cell adds to the table: its last held-out evaluation, the curves, the training
    statistics and the KL from the base."""
    steps, evals = grpo_metrics(cell)
    if not evals or evals[-1]["step"] != cfg.steps:
        raise R1Error(f"{cell} has no evaluation at its last step {cfg.steps}; remove the cell (it is a run r1 made) "
                      f"and run the sweep again with --resume")
    model, _, _ = load_run(cell, device)
    mean = lambda xs: sum(xs) / len(xs) if xs else None  # noqa: E731
    last = steps[-max(1, len(steps) // 4):]  # the last quarter of the training rollouts (T = 1, many wrong answers)
    return {"steps": cfg.steps, "final": evals[-1]["eval"],
            "curve": [{"step": r["step"], **{t: {k: v.get(k) for k in ("pass@1", "len_wrong", "len")}  # None: no such sample
                                             for t, v in r["eval"].items()}} for r in evals],
            "rollouts": {k: [r.get(k) for r in steps] for k in ("step", "accuracy", "len_wrong", "think_len")},
            "rollout_len_wrong": mean([r["len_wrong"] for r in last if r.get("len_wrong") is not None]),
            "clip_frac": mean([r["clip_frac"] for r in steps if r.get("clip_frac") is not None]),
            "kl": mean([r["kl"] for r in steps if r.get("kl") is not None]),
            "rl_s": sum(r["step_s"] for r in steps),
            "kl_to_base": kl_to_base(model, base, tok, cfg, device)}


def run_cell(init: Path, cell: Path, base, tok, cfg: GRPOConfig, device, quiet: bool) -> tuple[dict, bool]:
    """GRPO for one cell (resumed or skipped as recipe.grpo_stage does) and its result.json ->
    (the result, whether any work was done)."""
    done = cell / "result.json"
    if done.exists() and (result := read_json(done)).get("steps") == cfg.steps:
        return result, False  # finished (more --steps than before extend the cell)
    grpo_stage(init, cell, cfg, device, quiet)
    result = cell_result(cell, base, tok, cfg, device)
    write_json_atomic(done, result)
    return result, True


# --------------------------------------------------------------------------------------------
# The grid, its table and its figure
# --------------------------------------------------------------------------------------------

# the table's columns: (name, how to read it from a cell, percent?)
COLUMNS = [
    ("pass@1", lambda c, t: c["final"][t]["pass@1"], True),
    ("gain", lambda c, t: c["final"][t]["pass@1"] - c["base"][t]["pass@1"], True),
    ("cons@k", lambda c, t: next(v for key, v in c["final"][t].items() if key.startswith("cons@")), True),
    ("format", lambda c, t: c["final"][t]["format"], True),
    ("len right", lambda c, t: c["final"][t].get("len_right"), False),
    ("len wrong", lambda c, t: c["final"][t].get("len_wrong"), False),
    ("len wrong, rollouts", lambda c, t: c["rollout_len_wrong"], False),
    ("think", lambda c, t: c["final"][t]["think_len"], False),
    ("reflect", lambda c, t: c["final"][t]["reflect"], True),
    ("KL base", lambda c, t: c["kl_to_base"], False),
    ("clip", lambda c, t: c["clip_frac"], True),
    ("GRPO s", lambda c, t: c["rl_s"], False),
]


def mean_std(xs: list) -> tuple[float, float] | None:
    """Mean and sample standard deviation (0 for one value) of the values that exist; None if none do."""
    xs = [x for x in xs if x is not None]
    if not xs:
        return None
    m = sum(xs) / len(xs)
    return m, (math.sqrt(sum((x - m) ** 2 for x in xs) / (len(xs) - 1)) if len(xs) > 1 else 0.0)


def summarize(cells: dict[str, list[dict]], task: str) -> dict[str, dict[str, tuple[float, float] | None]]:
    """{arm: [cell results over seeds]} -> {arm: {column: (mean, std) or None}}."""
    return {arm: {name: mean_std([get(c, task) for c in cs]) for name, get, _ in COLUMNS} for arm, cs in cells.items()}


def format_sweep(summary: dict, seeds: dict[str, int], k: int) -> str:
    """The Markdown table: one row per arm, mean +- std over its seeds."""
    def cell(v, pct):
        if v is None:
            return "-"
        m, s = v
        if pct:
            return f"{100 * m:.1f} ± {100 * s:.1f}"
        return f"{m:.3f} ± {s:.3f}" if abs(m) < 1 else f"{m:.1f} ± {s:.1f}"
    names = [n.replace("cons@k", f"cons@{k}") for n, _, _ in COLUMNS]
    lines = ["| arm | seeds | " + " | ".join(names) + " |", "|---|---|" + "---|" * len(COLUMNS)]
    for arm, row in summary.items():
        lines.append(f"| {arm} | {seeds[arm]} | " + " | ".join(cell(row[n], pct) for n, _, pct in COLUMNS) + " |")
    return "\n".join(lines)


# the figure's panels: (title, the evaluation's key, the arms drawn)
PANELS = [
    ("controls: rewards blind to the answer", "pass@1", ["default", "random-reward", "format-only", "random-minibatches-4"]),
    ("a KL penalty against the base", "pass@1", ["default", "kl-0.04", "kl-0.001"]),
    ("DAPO's pieces", "pass@1", ["default", "no-dynamic-sampling", "minibatches-4", "clip-higher"]),
    ("loss aggregation: length of wrong answers", "rollouts len_wrong", ["default", "grpo", "dr-grpo", "no-std"]),
]


def curve(cs: list[dict], task: str, key: str) -> tuple[list, list, list]:
    """(steps, mean, std) over an arm's seeds of one evaluation key, the base at step 0; or, for a key
    "rollouts KEY", of the training rollouts' KEY averaged over windows of a tenth of the steps."""
    points = {}  # step -> the seeds' values
    for c in cs:
        if key.startswith("rollouts "):
            steps, values = c["rollouts"]["step"], c["rollouts"][key.split()[1]]
            w = max(1, len(steps) // 10)
            for i in range(0, len(steps), w):
                window = mean_std(values[i:i + w])  # None when no rollout of the window had such an answer
                points.setdefault(steps[min(i + w, len(steps)) - 1], []).append(window and window[0])
            continue
        points.setdefault(0, []).append(c["base"][task].get(key))
        for r in c["curve"]:
            points.setdefault(r["step"], []).append(r[task].get(key))
    stats = [(step, v) for step in sorted(points) if (v := mean_std(points[step])) is not None]
    return [s for s, _ in stats], [v[0] for _, v in stats], [v[1] for _, v in stats]


def plot_sweep(cells: dict[str, list[dict]], task: str, path: Path) -> Path:
    """Held-out pass@1 (and the length of wrong answers) vs GRPO step, one panel per question: each arm's
    mean over its seeds and a band of +-1 std (the base at step 0)."""
    panels = [(title, key, [a for a in arms if a in cells]) for title, key, arms in PANELS]
    panels = [p for p in panels if p[2]]
    cols = min(2, len(panels))
    rows = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(5.6 * cols, 3.9 * rows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.set_visible(False)
    colors = plt.get_cmap("tab10")
    for ax, (title, key, arms) in zip(axes.flat, panels):
        for j, arm in enumerate(arms):
            xs, ms, ss = curve(cells[arm], task, key)
            color = "black" if arm == "default" else colors(j)
            ax.plot(xs, ms, color=color, lw=1.8, label=arm)
            ax.fill_between(xs, [m - s for m, s in zip(ms, ss)], [m + s for m, s in zip(ms, ss)], color=color,
                            alpha=0.15, lw=0)
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("GRPO step")
        ax.set_ylabel(f"held-out pass@1, {task} (T=0.6)" if key == "pass@1" else "tokens in a wrong answer (rollouts, T=1)")
        if key == "pass@1":
            ax.set_ylim(0, 1.02)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    n = max(len(cs) for cs in cells.values())
    fig.suptitle(f"GRPO arms from one base: mean and ±1 std over {n} seed{'s' * (n > 1)}")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def sweep(run, init, cfg: SweepConfig, device, *, resume: bool = False, overwrite: bool = False,
          quiet: bool = False) -> dict:
    """Every (arm, seed) cell of the grid from the base in `init` (finished cells skipped), then
    sweep.json, sweep.md and sweep.png in `run`."""
    init = Path(init)
    base, tok, _ = load_run(init, device)
    first = cfg.cell(cfg.arms[0], 0)  # what every cell shares: tasks, difficulty, completion length
    first.check_fits(base.cfg)
    run = prepare_run_dir(run, resume=resume, overwrite=overwrite, sources=(init,))
    t0, todo = time.perf_counter(), [(a, s) for a in cfg.arms for s in range(cfg.seeds)]
    # everything checked before anything is written: the same base, and every cell begun already has its settings
    meta, origin = run / "sweep.json", str(init.resolve())
    if meta.exists() and Path(str(read_json(meta).get("init"))).resolve() != init.resolve():
        raise R1Error(f"{run} is a sweep from {read_json(meta).get('init')}, not from {origin}; pick another --run")
    for arm, seed in todo:
        if (run / arm / f"seed{seed}" / "config.json").exists():
            check_resume_config(run / arm / f"seed{seed}", base.cfg, cfg.cell(arm, seed), "grpo", dry=True)
    if not meta.exists():
        write_json_atomic(meta, {"init": origin, "config": asdict(cfg), "cells": {}})
    tasks = first.tasks
    problems = eval_problems(tasks, cfg.n, first.difficulty)
    if not quiet:
        print(f"sweep: {len(cfg.arms)} arms x {cfg.seeds} seeds = {len(todo)} GRPO runs of {cfg.steps} steps from "
              f"{init} -> {run} (finished cells are skipped)", flush=True)
    bases, cells, cell_s = {}, {arm: [] for arm in cfg.arms}, []  # cell_s: the seconds of each cell run now
    for i, (arm, seed) in enumerate(todo):
        if seed not in bases:  # the base, evaluated with the seed the cells evaluate with
            path = run / f"base-seed{seed}.json"
            if not path.exists():
                ev = evaluate(base, tok, problems, k=cfg.k, greedy=False, seed=seed,
                              max_new_tokens=first.max_completion_length)
                write_json_atomic(path, ev["tasks"])
            bases[seed] = read_json(path)
            if not quiet:
                p1 = ", ".join(f"{tk} {100 * v['pass@1']:.1f}%" for tk, v in bases[seed].items())
                print(f"  base, seed {seed}: pass@1 {p1}", flush=True)
        t = time.perf_counter()
        result, ran = run_cell(init, run / arm / f"seed{seed}", base, tok, cfg.cell(arm, seed), device, quiet=True)
        result["base"] = bases[seed]
        cells[arm].append(result)
        if ran:
            cell_s.append(time.perf_counter() - t)
        if not quiet:
            p1 = ", ".join(f"{tk} {100 * bases[seed][tk]['pass@1']:.1f}% -> {100 * v['pass@1']:.1f}%"
                           for tk, v in result["final"].items())
            took = (f"{cell_s[-1]:.0f} s; ~{sum(cell_s) / len(cell_s) * (len(todo) - i - 1) / 60:.0f} min left at most"
                    if ran else "finished before")
            print(f"  [{i + 1}/{len(todo)}] {arm} seed {seed}: pass@1 {p1} ({took})", flush=True)
    task = tasks[0]
    summary = summarize(cells, task)
    table = format_sweep(summary, {a: len(cs) for a, cs in cells.items()}, cfg.k)
    figure = plot_sweep(cells, task, run / "sweep.png")
    write_json_atomic(meta, {"init": origin, "config": asdict(cfg), "task": task,
                             "summary": {a: {n: v and list(v) for n, v in row.items()} for a, row in summary.items()},
                             "cells": {a: cs for a, cs in cells.items()}})
    write_text_atomic(run / "sweep.md", f"# GRPO sweep from {init}\n\nHeld-out {task}: {cfg.n} problems x {cfg.k} "
                      f"samples at T=0.6 after {cfg.steps} GRPO steps; mean ± std over seeds.\n\n{table}\n\n"
                      f"![sweep](sweep.png)\n")
    print(f"\n{table}\n\nwrote {run / 'sweep.md'}, {meta} and {figure} ({time.perf_counter() - t0:.0f} s)")
    return {"summary": summary, "cells": cells, "table": table}

