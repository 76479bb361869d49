"""The experiments of the paper in its order: the R1-Zero story (R1 §2.2; `python r1.py`), then the
full R1 recipe after it: cold start, reasoning RL, rejection sampling, SFT, RL again, and distillation
into a small dense student (R1 §2.3-2.4, [R1v2] §3 and Fig. 2).

    stage    what                                                   from           paper
    base     pre-trained model (train.py)                           -              DeepSeek-V3-Base
    R1-Zero  GRPO, accuracy + format rewards (train_grpo.py)        base           §2.2
    Dev1     SFT on 1,000 readable cold-start examples              base           §2.3.1
    Dev2     GRPO, accuracy + format + consistency rewards          Dev1           §2.3.2
    Dev3     SFT on Dev2's rejection-sampled training answers       base (again)   §2.3.3
    R1       GRPO again, same rewards                               Dev3           §2.3.4
    student  a smaller dense model, pre-trained on direct answers   -              Qwen/Llama bases
    distill  student SFT on 20,000 of R1's rejection-sampled answers student       §2.4
    RL-only  student GRPO alone (R1-Zero rewards, R1-Zero's steps)  student        §4.1, Table 6

Every model is evaluated with R1's protocol on the held-out problems (evaluate.py: k samples at T=0.6,
top-p 0.95; pass@1, cons@k, and the consistency metric), giving the two tables of the paper in miniature:
the stages (Table 3) and distillation against RL on the small model (Table 6).

Rejection sampling ([R1v2] Supp. B.3.3): k samples per *training* prompt (never the held-out split),
kept only if the answer is right, the format is right, the thinking is not repetitive (a step repeated
more than `max_run` times in a row; no worked solution of any task repeats a step more than 4 times),
and the thinking is readable (consistency >= `min_consistency`, R1's filter of mixed-language chains of
thought); exact duplicates are dropped. The kept rows are prompt/completion JSONL for `r1.py sft`.

How this differs from the paper: no non-reasoning data (writing, QA) and no reward models, so the
final RL stage uses the reasoning rewards only; SFT steps, not epochs, set the length of each SFT stage;
the student's base is pre-trained here (the paper's students are Qwen/Llama bases pre-trained elsewhere):
by default on direct answers alone, so that, like those bases, it has never seen the reasoning pattern it
is to be given (`student_corpus`; "worked", the teacher's corpus, is the control where it has).

    python r1.py                                                (the R1-Zero story: zero())
    python r1.py recipe --zero runs/zero --run runs/recipe      (reuse an R1-Zero run's base and RL)
    python r1.py rejection-sample runs/recipe/dev2 --out runs/dev3.jsonl
    python r1.py distill --teacher runs/recipe/r1 --student-preset student --run runs/distill
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch

import rewards
from data import (check_task, completion_budget, default_tokenizer, eval_problems, harder_level, harder_problems,
                  make_problems, prompt)
from data.cold_start import cold_start_set
from evaluate import evaluate
from model import ModelConfig, build_model, count_params, preset
from report import format_reflection, format_table, plot_run, rows_by_task, table_keys, write_recipe_report, write_story_report
from runs import (MAX_EVAL_K, MAX_EVAL_N, MAX_EXAMPLES, R1Error, autocast, check_memory, check_numbers,
                  check_output_file, check_resume_config, checkpoint_step, load_checkpoint, load_run, mark_run_dir,
                  open_run, prepare_run_dir, run_config_and_tokenizer, write_json_atomic, write_text_atomic)
from sampler import complete
from train import TrainConfig, check_sft_pairs, end_after_skill, pretrain_batches, sft_batches, train_lm
from train_grpo import GRPOConfig, train_grpo


# --------------------------------------------------------------------------------------------
# Stages: each writes one run directory, resumes an unfinished one and skips a finished one
# --------------------------------------------------------------------------------------------


def _begun(run: Path) -> bool:
    return run.is_dir() and any(run.iterdir())


def _finished(run: Path, steps: int, pretrain: TrainConfig | None = None) -> bool:
    """True when the run's newest checkpoint is its last: at `steps`, or for pre-training at the end the
    skill set (TrainConfig.decay_at_greedy; the checkpoint keeps the step it appeared at)."""
    step = checkpoint_step(run)
    if step >= steps or step == 0 or pretrain is None:
        return step >= steps
    return step >= end_after_skill(load_checkpoint(run).get("skill_at"), pretrain)


def sft_stage(init: Path, run: Path, pairs: list[tuple[str, str]], cfg: TrainConfig, device, quiet: bool,
              data: str = "") -> Path:
    """SFT (loss on completions) of the model in `init` on `pairs`, into `run`; skipped when finished."""
    if _finished(run, cfg.steps):
        return run
    start, tok, _ = load_run(init, device)
    check_sft_pairs(pairs, tok, data or "SFT data")
    run, model, tok, state = open_run(run, "sft", start.cfg, cfg, device, new=lambda: (start, tok),
                                      resume=_begun(run), extra={"init": str(init), "data": data})
    train_lm(run, model, tok, cfg, sft_batches(pairs, cfg), device, state, quiet=quiet, stage="sft")
    return run


def grpo_stage(init: Path, run: Path, cfg: GRPOConfig, device, quiet: bool) -> Path:
    """GRPO from the model in `init`, into `run`; skipped when finished."""
    if _finished(run, cfg.steps):
        return run
    start, tok, _ = load_run(init, device)
    cfg.check_fits(start.cfg)
    run, model, tok, state = open_run(run, "grpo", start.cfg, cfg, device, new=lambda: (start, tok),
                                      resume=_begun(run), extra={"init": str(init)})
    train_grpo(run, model, tok, cfg, device, state, quiet=quiet)
    return run


def pretrain_stage(run: Path, model_cfg: ModelConfig, cfg: TrainConfig, device, quiet: bool, preset_name: str) -> Path:
    """Pre-training from scratch (a base: the story's, the student's) on the task corpus; skipped when finished."""
    if _finished(run, cfg.steps, pretrain=cfg):
        return run
    tok = default_tokenizer()
    run, model, tok, state = open_run(run, "pretrain", model_cfg, cfg, device,
                                      new=lambda: (build_model(model_cfg, device=device, seed=cfg.seed), tok),
                                      resume=_begun(run), extra={"preset": preset_name})
    train_lm(run, model, tok, cfg, pretrain_batches(cfg), device, state, quiet=quiet)
    return run


def rejection_stage(teacher: Path, out: Path, cfg: RejectionConfig, device, quiet: bool,
                    smoke: bool = False) -> tuple[list, dict]:
    """Rejection-sample `teacher` into the JSONL `out` (reused if already there); (rows, stats).
    Keeping nothing is an error, except in smoke mode (an untrained teacher is never right), where the
    cold-start set stands in so that the later stages still run."""
    stats_path = out.with_suffix(".stats.json")
    if out.exists() and stats_path.exists():
        rows = [json.loads(line) for line in out.read_text().splitlines() if line.strip()]
        return rows, json.loads(stats_path.read_text())
    model, tok, _ = load_run(teacher, device)
    rows, stats = rejection_sample(model, tok, cfg, device, quiet=quiet)
    if not rows and smoke:
        print("   smoke mode: no sample kept; the cold-start set stands in", flush=True)
        rows = cold_start_set(cfg.n_prompts, tasks=cfg.tasks, seed=cfg.seed)
    elif not rows:
        raise R1Error(f"rejection sampling kept no sample of {teacher}: {describe_rejection(stats)}")
    write_jsonl(rows, out, overwrite=True)
    stats_path.write_text(json.dumps(stats, indent=2))
    return rows, stats


# --------------------------------------------------------------------------------------------
# The R1-Zero story (R1 §2.2): a base, its check, GRPO, the evaluations, the report
# --------------------------------------------------------------------------------------------

# The sizes of a smoke run (`--smoke`): every stage for a few steps, so the tests see every code path
# in seconds; the numbers it prints mean nothing. One place for all of them.
SMOKE = {
    "pretrain": dict(steps=10, batch_size=8, eval_every=0, eval_n=4, ckpt_every=0),
    "grpo": dict(steps=2, prompts_per_step=2, num_generations=4, eval_every=0, eval_n=4, eval_k=2, ckpt_every=0,
                 max_completion_length=24),
    "eval": dict(k=2, n=4),
    "recipe": dict(cold_start_n=8, sft_batch_size=4, cold_start_steps=2, rl_steps=2, final_rl_steps=1,
                   max_completion_length=24, rs_prompts=4, rs_k=2, dev3_steps=2, student_pretrain_steps=3,
                   distill_prompts=4, distill_steps=2, distill_batch_size=4, student_rl_steps=1, eval_k=2, eval_n=3),
    "recipe_rl": dict(prompts_per_step=2, num_generations=2, dump_every=0),
    "recipe_pretrain": dict(batch_size=4, eval_every=0, eval_n=2, ckpt_every=0),
}


# GRPO steps of the story where a family needs more than GRPOConfig's 80: countdown's search grows over
# hundreds of steps (docs/results.md, "Every task family").
STORY_GRPO_STEPS = {"countdown": 300}
# Families whose search can run out of tokens. For these, a rollout cut off by the budget is left out of
# the loss (DAPO §3.4, overlong filtering). Scored as it is, such a rollout counts as a wrong answer in the
# wrong format, below any guess that is wrong but well-formed. With countdown's checked search, which
# keeps going until it hits, 11% of the base's samples ran out, and RL learnt to guess instead of search
# (docs/results.md, "Every task family").
STORY_MASK_TRUNCATED = ("countdown",)
# Families whose skill gate reads sampled accuracy (T=0.6, the evaluations' temperature) instead of greedy:
# a greedy countdown search at the constant lr loops on its first dead end, so its greedy accuracy timed the
# gate by chance (docs/traps.md, "A skill that appears at an unknown step").
STORY_GATE_TEMPERATURE = {"countdown": 0.6}


def story_configs(tasks: tuple[str, ...], seed: int, smoke: bool = False) -> tuple[TrainConfig, GRPOConfig]:
    """The story's pre-training and GRPO settings for `tasks`: the defaults, with the sampling budget of
    the longest family (data.tasks.completion_budget: mul and countdown think longer than add), the
    GRPO steps of the slowest (STORY_GRPO_STEPS), overlong filtering where a search can run out of
    tokens (STORY_MASK_TRUNCATED) and a skill gate on sampled accuracy where a search is in the mix
    (STORY_GATE_TEMPERATURE)."""
    gate = max(STORY_GATE_TEMPERATURE.get(t, 0.0) for t in tasks)
    pre = TrainConfig(seed=seed, tasks=tasks, gate_temperature=gate, **(SMOKE["pretrain"] if smoke else {}))
    per_family = {"max_completion_length": completion_budget(tasks),
                  "steps": max(STORY_GRPO_STEPS.get(t, GRPOConfig.steps) for t in tasks),
                  "mask_truncated_completions": any(t in STORY_MASK_TRUNCATED for t in tasks)}
    rl = GRPOConfig(seed=seed, tasks=tasks, **(SMOKE["grpo"] if smoke else per_family))
    return pre, rl


def zero(run, *, seed: int = 0, preset_name: str = "tiny", k: int = 8, n: int = 100, smoke: bool = False,
         skip_base_check: bool = False, device="cpu", resume: bool = False, overwrite: bool = False,
         quiet: bool = False, tasks: tuple[str, ...] = ("add",)) -> dict:
    """The R1-Zero story (`python r1.py`): tokenizer -> base model (run/base) -> base evaluation and
    check -> GRPO (run/rl) -> evaluation -> table, results.json, report.md and plots. A stage already
    finished is skipped; --resume continues the story with the options it was started with.
    `tasks`: the families the base is pre-trained on and RL trains on (default add; one model for all)."""
    t_start = time.perf_counter()
    pre, rl = story_configs(tuple(tasks), seed, smoke)
    k, n = (SMOKE["eval"]["k"], SMOKE["eval"]["n"]) if smoke else (k, n)
    if not (1 <= n <= MAX_EVAL_N and 1 <= k <= MAX_EVAL_K):
        raise R1Error(f"--n must be in 1..{MAX_EVAL_N} held-out problems and --k in 1..{MAX_EVAL_K} samples, got {n}, {k}")
    tok = default_tokenizer()
    try:
        model_cfg = preset(preset_name, vocab_size=tok.vocab_size)
    except ValueError as e:
        raise R1Error(str(e)) from None
    check_memory(model_cfg, device, train_rows=max(pre.batch_size, rl.prompts_per_step * rl.num_generations),
                 seq=model_cfg.max_seq_len, what=f"the R1-Zero story with --preset {preset_name}")
    run = prepare_run_dir(run, resume=resume, overwrite=overwrite)
    base_dir, rl_dir = run / "base", run / "rl"
    if resume:  # the story's stages must continue with the options they were started with
        for stage_dir, stage, cfg in ((base_dir, "pretrain", pre), (rl_dir, "grpo", rl)):
            if (stage_dir / "config.json").exists():
                check_resume_config(stage_dir, model_cfg, cfg, stage)

    # 1. the base model (pre-training on the task corpus; resumed, or skipped when finished)
    gate = f"accuracy at T={pre.gate_temperature:g}" if pre.gate_temperature else "greedy accuracy"
    length = (f"until {gate} reaches {pre.decay_at_greedy:g}, then {pre.decay_steps} steps of decay and "
              f"{pre.final_mix_steps} of the final mix; at most {pre.steps}" if pre.decay_at_greedy and pre.eval_every
              else f"{pre.steps} steps")
    print(f"== 1/4 pre-training the base model ({length}) -> {base_dir}")
    pretrain_stage(base_dir, model_cfg, pre, device, quiet, preset_name)
    model, tok, _ = load_run(base_dir, device)
    problems = eval_problems(rl.tasks, n, rl.difficulty)
    harder = harder_problems(rl.tasks, n, rl.difficulty)  # one level above training: does a gain transfer?

    def evaluate_both(model):  # -> (the training level's results, the harder level's or None)
        kw = dict(k=k, max_new_tokens=rl.max_completion_length, seed=seed, progress=not quiet)
        return evaluate(model, tok, problems, **kw), (evaluate(model, tok, harder, **kw) if harder else None)

    # 2. evaluate the base, and check that RL has something to work with
    print(f"== 2/4 evaluating the base model ({n} held-out problems x {k} samples, T=0.6, top-p 0.95; "
          f"and as many one level harder than training)")
    base, base_harder = evaluate_both(model)
    print(format_table(base["tasks"], table_keys(k)))
    problem = base_not_ready(base["tasks"])
    if problem and not smoke and not skip_base_check:
        raise R1Error(f"the base model is not ready for RL: {problem}. Pre-train longer or with another "
                      f"--seed (see README, FAQ), or pass --skip-base-check to run RL anyway")

    # 3. GRPO from the base
    print(f"== 3/4 GRPO ({rl.steps} steps x {rl.prompts_per_step} prompts x {rl.num_generations} samples) -> {rl_dir}")
    grpo_stage(base_dir, rl_dir, rl, device, quiet)
    model, tok, _ = load_run(rl_dir, device)

    # 4. evaluate again, then the table, results.json, report.md and the plots
    print("== 4/4 evaluating after GRPO")
    after, after_harder = evaluate_both(model)
    rows = {"base": base, "R1-Zero": after}
    if harder:
        rows |= {"base, harder": base_harder, "R1-Zero, harder": after_harder}
    table = format_table(rows_by_task(rows), table_keys(k)) + "\n\n" + format_reflection(rows_by_task(rows))
    print(table)
    plots = plot_run(run, base_eval=base["tasks"])
    wall = time.perf_counter() - t_start
    summary = {"seed": seed, "wall_s": wall, "base": base["tasks"], "r1_zero": after["tasks"],
               "base_harder": base_harder and base_harder["tasks"], "r1_zero_harder": after_harder and after_harder["tasks"],
               "harder_difficulty": {t: harder_level(t, rl.difficulty) for t in rl.tasks}, "pretrain": asdict(pre), "grpo": asdict(rl)}
    write_json_atomic(run / "results.json", summary)
    report = write_story_report(run, table, after, wall, plots)
    print(f"wrote {report}, {run / 'results.json'} and {', '.join(str(p) for p in plots)} ({wall:.0f} s in all)")
    return summary


# How often a base must be right when it thinks fully, per family (check (a) below). Countdown's full
# thinking is one complete attempt, which is right only when the attempt hits the target: a search that
# must often go on, so its bar is lower (docs/results.md, "Every task family").
MIN_ACC_FULL = {"add": 0.6, "mul": 0.6, "linear": 0.6, "countdown": 0.2}


def base_not_ready(tasks: dict) -> str | None:
    """Why RL would show nothing on this base (docs/traps.md, "The base decides"), or None; `tasks` is
    evaluate()'s per-task results.

    For each task the base must (a) be right most of the time when it thinks as long as the worked
    solutions (MIN_ACC_FULL), (b) choose to think that long at least sometimes, and (c) leave room to improve."""
    for task, r in tasks.items():
        acc_full, rate, p1, need = r.get("acc_full_think"), r.get("full_think"), r.get("pass@1"), MIN_ACC_FULL[task]
        if acc_full is None or acc_full < need:
            return (f"on {task}, when it thinks fully it is right only {100 * (acc_full or 0):.0f}% of the time "
                    f"(need >= {100 * need:.0f}%)")
        if rate < 0.05:
            return f"on {task}, it thinks fully in only {100 * rate:.0f}% of samples (need >= 5%)"
        if p1 > 0.85:
            return f"on {task}, its pass@1 is already {100 * p1:.0f}%: nothing left for RL to show"
    return None


# --------------------------------------------------------------------------------------------
# Rejection sampling
# --------------------------------------------------------------------------------------------


@dataclass
class RejectionConfig:
    n_prompts: int = 500  # distinct training prompts per task
    k: int = 4  # samples per prompt
    temperature: float = 1.0  # R1 sampled cold-start candidates at 1.0: diversity, then filters
    top_p: float = 1.0
    max_new_tokens: int = 96
    max_run: int = 4  # a thinking step repeated more than this many times in a row is "repetitive"
    min_consistency: float = 1.0  # R1 dropped mixed-language CoTs; 0 keeps any layout (e.g. for R1-Zero)
    tasks: tuple[str, ...] = ("add",)
    difficulty: int | None = None
    seed: int = 1  # the problems are make_problems(task, n, split="train", seed=seed)

    def __post_init__(self):
        check_numbers(self)
        if self.n_prompts > MAX_EXAMPLES or self.k > MAX_EVAL_K:
            raise R1Error(f"--n-prompts must be at most {MAX_EXAMPLES:,} and --k at most {MAX_EVAL_K}")
        if self.n_prompts <= 0 or self.k <= 0 or self.max_new_tokens <= 0 or self.max_run <= 0:
            raise R1Error("--n-prompts, --k, --max-new-tokens and --max-run must be > 0")
        if not (self.temperature > 0 and 0 < self.top_p <= 1 and 0 <= self.min_consistency <= 1):
            raise R1Error("--temperature must be > 0, --top-p in (0, 1] and --min-consistency in [0, 1]")
        self.tasks = tuple(self.tasks)
        if not self.tasks:
            raise R1Error("--tasks is empty")
        for t in self.tasks:
            try:
                check_task(t)
            except ValueError as e:
                raise R1Error(str(e)) from None


def is_repetitive(completion: str, max_run: int) -> bool:
    """True if one thinking step (a whitespace-separated word) repeats more than max_run times in a row."""
    think = completion.split("</think>")[0]
    run, previous = 0, None
    for word in think.split():
        run = run + 1 if word == previous else 1
        if run > max_run:
            return True
        previous = word
    return False


@torch.no_grad()
def rejection_sample(model, tok, cfg: RejectionConfig, device, quiet: bool = False,
                     batch_rows: int = 256) -> tuple[list[dict], dict]:
    """k samples per training prompt, filtered (see the module docstring). Returns (rows, stats): rows
    {"prompt", "completion", "task", "question"}; stats count each reason a sample was dropped."""
    problems = [p for t in cfg.tasks
                for p in make_problems(t, cfg.n_prompts, split="train", seed=cfg.seed, difficulty=cfg.difficulty)]
    was_training = model.training
    model.eval()
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    stats = dict.fromkeys(["samples", "wrong_format", "wrong_answer", "repetitive", "unreadable", "duplicate"], 0)
    rows, seen, t0 = [], set(), time.perf_counter()
    chunk = max(1, batch_rows // cfg.k)
    for i in range(0, len(problems), chunk):
        batch = problems[i:i + chunk]
        with autocast(device):
            _, texts = complete(model, tok, [prompt(p) for p in batch], stop="</answer>", num_samples=cfg.k,
                                max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature, top_p=cfg.top_p,
                                generator=gen)
        for row, text in enumerate(texts):
            p = batch[row // cfg.k]
            stats["samples"] += 1
            if rewards.format_reward(text) == 0:
                stats["wrong_format"] += 1
            elif rewards.accuracy_reward(text, p.answer, p.numbers or None) == 0:
                stats["wrong_answer"] += 1
            elif is_repetitive(text, cfg.max_run):
                stats["repetitive"] += 1
            elif rewards.consistency_reward(text) < cfg.min_consistency:
                stats["unreadable"] += 1
            elif (prompt(p), text) in seen:
                stats["duplicate"] += 1
            else:
                seen.add((prompt(p), text))
                rows.append({"prompt": prompt(p), "completion": text, "task": p.task, "question": p.question})
        if not quiet:
            print(f"rejection sampling {min(i + chunk, len(problems))}/{len(problems)} prompts, "
                  f"kept {len(rows)} of {stats['samples']} | {time.perf_counter() - t0:.0f}s", flush=True)
    if was_training:
        model.train()
    stats |= {"prompts": len(problems), "kept": len(rows), "kept_rate": len(rows) / max(stats["samples"], 1),
              "prompts_covered": len({r["prompt"] for r in rows})}
    return rows, stats


def describe_rejection(stats: dict) -> str:
    return (f"kept {stats['kept']} of {stats['samples']} samples ({100 * stats['kept_rate']:.1f}%) from "
            f"{stats['prompts']} training prompts ({stats['prompts_covered']} covered); dropped: "
            f"{stats['wrong_format']} bad format, {stats['wrong_answer']} wrong, {stats['repetitive']} repetitive, "
            f"{stats['unreadable']} unreadable, {stats['duplicate']} duplicates")


def write_jsonl(rows: list[dict], path: str | Path, overwrite: bool = False) -> Path:
    """Write rows as JSONL atomically; an existing file is replaced only with overwrite, and only when
    it is a prompt/completion JSONL (runs.check_output_file)."""
    path = check_output_file(path, "--out", overwrite=overwrite, kind="jsonl")
    if not rows:
        raise R1Error(f"nothing to write to {path}: no example was kept")
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
    return path


# --------------------------------------------------------------------------------------------
# Distillation: a small dense student, SFT on the teacher's answers vs RL alone
# --------------------------------------------------------------------------------------------


def check_student(teacher_tok, teacher_cfg: ModelConfig, student_preset: str, student_base: Path | None):
    """The student's config (with the teacher's vocabulary), or R1Error: the student must read and
    write the teacher's tokens (SFT on the teacher's text), be dense and be smaller."""
    try:
        cfg = preset(student_preset)
    except ValueError as e:
        raise R1Error(str(e)) from None
    placeholder = ModelConfig().vocab_size  # presets that keep it take the tokenizer's size
    if cfg.vocab_size not in (placeholder, teacher_tok.vocab_size):
        raise R1Error(f"student preset {student_preset!r} has its own vocabulary of {cfg.vocab_size} tokens, "
                      f"the teacher's tokenizer has {teacher_tok.vocab_size}: distillation by SFT needs the "
                      f"teacher's tokenizer")
    cfg = replace(cfg, vocab_size=teacher_tok.vocab_size)
    if cfg.n_routed_experts > 0 and cfg.n_dense_layers < cfg.n_layers:
        raise R1Error(f"student preset {student_preset!r} is a MoE model: the distilled students are dense")
    if count_params(cfg)["total"] >= count_params(teacher_cfg)["total"]:
        raise R1Error(f"student preset {student_preset!r} is not smaller than the teacher")
    if student_base is not None:
        base_cfg, base_tok = run_config_and_tokenizer(student_base, load_checkpoint(student_base))
        if base_tok.hf.get_vocab() != teacher_tok.hf.get_vocab():
            raise R1Error(f"the student base {student_base} has another tokenizer than the teacher "
                          f"({base_tok.vocab_size} vs {teacher_tok.vocab_size} tokens): pre-train the student "
                          f"with the teacher's tokenizer")
        if base_cfg != cfg:
            raise R1Error(f"the student base {student_base} is not a {student_preset!r} model (its config.json "
                          f"differs from the preset)")
    return cfg


STUDENT_CORPORA = ("answers", "worked")


@dataclass
class RecipeConfig:
    """The sizes of every stage; defaults are the CPU run of the README, `smoke()` a seconds-long one."""

    seed: int = 0
    tasks: tuple[str, ...] = ("add",)
    cold_start_n: int = 1000  # readable cold-start examples (R1: thousands against ~800k later); 300 -> Dev1 69-75%
    cold_start_summary: bool = True  # False drops the summary line (an ablation, README)
    sft_lr: float = 1e-3  # SFT from a pre-trained model: a third of the pre-training lr
    sft_batch_size: int = 32
    cold_start_steps: int = 200  # Dev1: ~6 epochs; the summary read-off needs them (100 steps: 69-75%)
    rl_steps: int = 40  # Dev2 (reasoning RL): 40 steps left Dev1's accuracy as it was
    # R1, the last RL stage. From one Dev3 (500 problems, pass@1 / cons@8): 80 steps 96.5% / 96.6%, below
    # R1-Zero's 95.8% / 96.8% on cons@8; 160 steps 97.9% / 98.2%
    final_rl_steps: int = 160
    consistency_weight: float = 1.0  # R1 adds the language reward to accuracy + format
    max_completion_length: int = 96  # readable thinking is ~15 tokens longer than R1-Zero's
    # rejection sampling for Dev3: many prompts, one sample each. An RL-tuned model writes the same right
    # answer to a prompt every time (600 prompts x 4 kept 618 distinct samples), and the readable read-off
    # is learnt from distinct examples: 4,618 of them x 400 steps gave Dev3 96.1%, 618 x 200 gave 94.5%
    rs_prompts: int = 5000  # training prompts per task
    rs_k: int = 1  # samples per prompt
    dev3_steps: int = 400  # SFT of the base on Dev2's samples
    student_preset: str = "student"
    # what the student's pre-training corpus holds. "answers": direct answers only (SHORT examples, never a
    # worked solution), so its base lacks the reasoning pattern, as the small bases of R1 §2.4 lack long
    # chains of thought: the paper's setting. "worked": the teacher's corpus and schedule, the control where
    # the student base already has the skill and RL only has to select it.
    student_corpus: str = "answers"
    student_pretrain_steps: int = 600  # "answers": a cosine over this many ("worked" trains until the skill appears)
    distill_prompts: int = 20000  # R1 answers this many training prompts once each; right, readable answers are kept
    # SFT of the student base on them: for an "answers" student a new skill, so a pre-training lr and batch
    # (3e-3, 64), not the SFT stages'; it appears after ~1,000-1,250 steps (1,500 steps: 63-93% right; 2,500: 95.0%)
    distill_steps: int = 2500
    distill_lr: float = 3e-3
    distill_batch_size: int = 64
    student_rl_steps: int = 80  # GRPO of the student base (R1-Zero rewards): R1-Zero's budget
    eval_k: int = 8  # R1's protocol: k samples per held-out problem at T=0.6, top-p 0.95
    eval_n: int = 500  # held-out problems per task: R1 and R1-Zero end a point apart, which 100 cannot resolve
    smoke: bool = False  # tiny stages for tests: numbers mean nothing, every code path runs

    def __post_init__(self):
        check_numbers(self)
        self.tasks = tuple(self.tasks)
        for f in fields(self):
            v = getattr(self, f.name)
            if type(v) in (int, float) and f.name not in ("seed", "consistency_weight"):
                if v <= 0:
                    raise R1Error(f"--{f.name.replace('_', '-')} must be > 0, got {v}")
        if self.consistency_weight < 0:
            raise R1Error("--consistency-weight must be >= 0")
        if self.student_corpus not in STUDENT_CORPORA:
            raise R1Error(f"--student-corpus must be one of {', '.join(STUDENT_CORPORA)}, got {self.student_corpus!r}")
        if self.eval_n > MAX_EVAL_N or self.eval_k > MAX_EVAL_K:
            raise R1Error(f"--eval-n must be at most {MAX_EVAL_N} and --eval-k at most {MAX_EVAL_K}")
        if max(self.cold_start_n, self.rs_prompts, self.distill_prompts) > MAX_EXAMPLES:
            raise R1Error(f"--cold-start-n, --rs-prompts and --distill-prompts must be at most {MAX_EXAMPLES:,}")

    @classmethod
    def for_smoke(cls, **kw) -> "RecipeConfig":
        return cls(**{**SMOKE["recipe"], "smoke": True, **kw})

    def sft(self, steps: int, lr: float | None = None, batch_size: int | None = None,
            warmup: int = 10) -> TrainConfig:
        """An SFT stage: loss on completions, a cosine over all its steps; the SFT stages' lr and batch unless
        given (distillation gives its own)."""
        return TrainConfig(steps=steps, batch_size=batch_size or self.sft_batch_size, lr=lr or self.sft_lr,
                           warmup=min(warmup, steps), decay_steps=steps, final_mix_steps=0, decay_at_greedy=0.0,
                           seed=self.seed, tasks=self.tasks, eval_every=0, eval_n=min(20, self.eval_n), ckpt_every=0,
                           completion_only=True)

    def rl(self, steps: int, consistency_weight: float) -> GRPOConfig:
        small = SMOKE["recipe_rl"] if self.smoke else {}
        return GRPOConfig(steps=steps, seed=self.seed, tasks=self.tasks, consistency_weight=consistency_weight,
                          max_completion_length=self.max_completion_length, eval_every=0,
                          eval_n=min(20, self.eval_n), eval_k=2, ckpt_every=0, **small)

    def distill_sft(self) -> TrainConfig:
        return self.sft(self.distill_steps, lr=self.distill_lr, batch_size=self.distill_batch_size, warmup=30)

    def rejection(self) -> RejectionConfig:
        return RejectionConfig(n_prompts=self.rs_prompts, k=self.rs_k, max_new_tokens=self.max_completion_length,
                               tasks=self.tasks, seed=self.seed + 1,
                               min_consistency=0.0 if self.smoke else 1.0)

    def distill_rejection(self) -> RejectionConfig:
        """R1's answers for distillation: one sample per prompt (see rs_k), other prompts than Dev3's."""
        return replace(self.rejection(), n_prompts=self.distill_prompts, k=1, seed=self.seed + 2)

    def pretrain(self) -> TrainConfig:
        """The student base's pre-training (see student_corpus)."""
        small = SMOKE["recipe_pretrain"] if self.smoke else {}
        if self.student_corpus == "worked":  # the teacher's corpus and schedule
            return TrainConfig(seed=self.seed, tasks=self.tasks, **small,
                               **({"steps": self.student_pretrain_steps} if self.smoke else {}))
        steps = self.student_pretrain_steps
        # lr 3e-3: a plain cosine with no gate, measured at 3e-3 (the story's base holds 2e-3 until its gate)
        return TrainConfig(steps=steps, lr=3e-3, decay_steps=steps, warmup=min(50, steps - 1), decay_at_greedy=0.0,
                           long_frac=0.0, short_frac=1.0, final_mix_steps=0, final_long_frac=0.0,
                           final_short_frac=1.0, reflect_rate=0.0, seed=self.seed, tasks=self.tasks, **small)


class Stopwatch:
    """Stage banners with elapsed times (the recipe's live progress) and the wall time of each stage."""

    def __init__(self, quiet: bool):
        self.t0, self.quiet, self.times, self._open = time.perf_counter(), quiet, {}, None

    def stage(self, name: str, text: str):
        self.end()
        self._open = (name, time.perf_counter())
        print(f"== [{time.perf_counter() - self.t0:6.0f}s] {name}: {text}", flush=True)

    def end(self):
        if self._open:
            name, t = self._open
            self.times[name] = self.times.get(name, 0.0) + time.perf_counter() - t
            self._open = None

    def total(self) -> float:
        return time.perf_counter() - self.t0


def evaluate_runs(runs: dict[str, Path], cfg: RecipeConfig, device, clock: Stopwatch) -> dict[str, dict]:
    """R1's protocol on the held-out problems for each named run: {name: evaluate()'s result}."""
    problems = eval_problems(cfg.tasks, cfg.eval_n)
    results = {}
    for name, run in runs.items():
        clock.stage(f"eval {name}", f"{run} ({cfg.eval_n} held-out problems x {cfg.eval_k} samples, T=0.6, top-p 0.95)")
        model, tok, _ = load_run(run, device)
        res = evaluate(model, tok, problems, k=cfg.eval_k, max_new_tokens=cfg.max_completion_length, seed=cfg.seed)
        results[name] = {key: res[key] for key in ("tasks", "overall")}
        o = res["overall"]
        print(f"   pass@1 {100 * o['pass@1']:.1f}%, cons@{cfg.eval_k} {100 * o[f'cons@{cfg.eval_k}']:.1f}%, "
              f"consistency {100 * o['consistency']:.1f}%, format {100 * o['format']:.1f}%", flush=True)
    return results


def check_distill(teacher: Path, cfg: RecipeConfig, student_base: Path | None = None,
                  data: Path | None = None) -> tuple[ModelConfig, list | None]:
    """Everything distill() needs, checked before anything is written: (student config, SFT pairs of
    `data` or None). R1Error on a missing teacher, a bad student or a malformed JSONL line."""
    from train import read_jsonl

    _, teacher_tok, teacher_state = load_run(teacher, "cpu")
    student_cfg = check_student(teacher_tok, ModelConfig.from_dict(teacher_state["config"]), cfg.student_preset,
                                student_base)
    return student_cfg, (read_jsonl(data) if data is not None else None)


def distill(teacher: Path, run: Path, cfg: RecipeConfig, device, quiet: bool, clock: Stopwatch,
            student_base: Path | None = None, data: Path | None = None) -> dict:
    """Distilled student (SFT on the teacher's rejection-sampled answers) vs RL-only student, from the
    same student base; returns {"rejection": stats, "eval": {name: result}} and writes run/results.json."""
    student_cfg, pairs = check_distill(teacher, cfg, student_base, data)
    mark_run_dir(run)
    if pairs is None:
        clock.stage("distill data", f"rejection sampling the teacher {teacher} ({cfg.distill_prompts} training "
                                    f"prompts, one sample each)")
        rows, stats = rejection_stage(teacher, run / "distill.jsonl", cfg.distill_rejection(), device, quiet, cfg.smoke)
        print("   " + describe_rejection(stats), flush=True)
        pairs, data = [(r["prompt"], r["completion"]) for r in rows], run / "distill.jsonl"
    else:
        stats = {"data": str(data), "kept": len(pairs)}
    corpus = f"given ({student_base})" if student_base is not None else cfg.student_corpus
    if student_base is None:
        student_base = run / "student-base"
        what = (f"{cfg.student_pretrain_steps} steps on direct answers only" if cfg.student_corpus == "answers"
                else "the teacher's corpus and schedule")
        clock.stage("student base", f"pre-training a {cfg.student_preset!r} student "
                                    f"({count_params(student_cfg)['total'] / 1e6:.2f}M params, {what}) -> {student_base}")
        pretrain_stage(student_base, student_cfg, cfg.pretrain(), device, quiet, cfg.student_preset)
    clock.stage("distilled", f"SFT of the student on {len(pairs)} teacher samples ({cfg.distill_steps} steps)")
    sft_stage(student_base, run / "student-distilled", pairs, cfg.distill_sft(), device, quiet, str(data))
    clock.stage("RL-only", f"GRPO of the student alone ({cfg.student_rl_steps} steps, R1-Zero rewards)")
    grpo_stage(student_base, run / "student-rl", cfg.rl(cfg.student_rl_steps, 0.0), device, quiet)
    ev = evaluate_runs({"student base": student_base, "distilled student": run / "student-distilled",
                        "RL-only student": run / "student-rl"}, cfg, device, clock)
    clock.end()
    # each arm's compute beside its accuracy (R1 §2.4 argues from cost): the wall time of what it adds to
    # the student base, in this process (a stage skipped on --resume or data passed in counts 0)
    spent = {"student base": clock.times.get("student base"),
             "distilled student": clock.times.get("distill data", 0.0) + clock.times.get("distilled", 0.0),
             "RL-only student": clock.times.get("RL-only")}
    for name, res in ev.items():
        for r in res["tasks"].values():
            r["train_s"] = spent[name]
    out = {"rejection": stats, "eval": ev, "student_base": str(student_base), "student_corpus": corpus,
           "student_params": count_params(student_cfg)["total"]}
    write_json_atomic(run / "results.json", out)
    return out


# --------------------------------------------------------------------------------------------
# The whole recipe
# --------------------------------------------------------------------------------------------


def run_recipe(run: Path, zero_run: Path, cfg: RecipeConfig, device, quiet: bool = False,
               student_base: Path | None = None, clock: Stopwatch | None = None) -> dict:
    """Dev1 -> Dev2 -> Dev3 -> R1 from the base and R1-Zero of `zero` (a `python r1.py` run with base/
    and rl/), then distillation; evaluations, the two tables, run/results.json and run/report.md."""
    clock = clock or Stopwatch(quiet)
    base, r1_zero = zero_run / "base", zero_run / "rl"
    for needed in (base, r1_zero):
        load_checkpoint(needed)  # a missing or damaged run fails here, before any work

    clock.stage("Dev1 data", f"{cfg.cold_start_n} readable cold-start examples -> {run / 'cold_start.jsonl'}")
    rows = cold_start_set(cfg.cold_start_n, tasks=cfg.tasks, seed=cfg.seed, with_summary=cfg.cold_start_summary)
    write_jsonl(rows, run / "cold_start.jsonl", overwrite=True)
    print(f"   e.g. {rows[0]['completion']!r}", flush=True)
    clock.stage("Dev1", f"cold-start SFT of the base ({cfg.cold_start_steps} steps)")
    sft_stage(base, run / "dev1", [(r["prompt"], r["completion"]) for r in rows], cfg.sft(cfg.cold_start_steps),
              device, quiet, str(run / "cold_start.jsonl"))

    clock.stage("Dev2", f"reasoning RL from Dev1 ({cfg.rl_steps} steps, accuracy + format + "
                        f"{cfg.consistency_weight} x consistency)")
    grpo_stage(run / "dev1", run / "dev2", cfg.rl(cfg.rl_steps, cfg.consistency_weight), device, quiet)

    clock.stage("Dev3 data", f"rejection sampling Dev2 ({cfg.rs_prompts} training prompts x {cfg.rs_k})")
    rows, dev3_stats = rejection_stage(run / "dev2", run / "dev3.jsonl", cfg.rejection(), device, quiet, cfg.smoke)
    print("   " + describe_rejection(dev3_stats), flush=True)
    clock.stage("Dev3", f"SFT of the base on Dev2's {len(rows)} samples ({cfg.dev3_steps} steps)")
    sft_stage(base, run / "dev3", [(r["prompt"], r["completion"]) for r in rows], cfg.sft(cfg.dev3_steps),
              device, quiet, str(run / "dev3.jsonl"))

    clock.stage("R1", f"RL from Dev3 ({cfg.final_rl_steps} steps, same rewards)")
    grpo_stage(run / "dev3", run / "r1", cfg.rl(cfg.final_rl_steps, cfg.consistency_weight), device, quiet)

    stages = evaluate_runs({"base": base, "R1-Zero": r1_zero, "Dev1": run / "dev1", "Dev2": run / "dev2",
                            "Dev3": run / "dev3", "R1": run / "r1"}, cfg, device, clock)
    dist = distill(run / "r1", run / "distill", cfg, device, quiet, clock, student_base=student_base)
    clock.end()

    keys = table_keys(cfg.eval_k)
    table1 = rows_by_task(stages)
    table2 = rows_by_task({"R1 (teacher)": stages["R1"]} | dist["eval"])
    print("\nStages (like R1 Table 3):\n" + format_table(table1, keys))
    print("\nDistillation (like R1 Table 6):\n" + format_table(table2, keys))
    results = {"config": asdict(cfg), "zero": str(zero_run), "wall_s": clock.total(), "stage_s": clock.times,
               "stages": stages, "distill": dist, "dev3_rejection": dev3_stats}
    write_json_atomic(run / "results.json", results)
    write_recipe_report(run, table1, table2, cfg.eval_k, clock.total(), clock.times, describe_rejection(dev3_stats))
    print(f"wrote {run / 'results.json'} and {run / 'report.md'} ({clock.total():.0f} s in all)")
    return results
