"""r1: DeepSeek-R1 from scratch, small enough to read. The entry point.

    python r1.py                      the whole R1-Zero story on the tiny config (tokenizer, base
                                      model, base eval, GRPO, eval again, table, report.md, plots)
                                      in runs/zero: 10 to 14 minutes on 2 CPU cores
    python r1.py ask runs/zero "123+456"            ask the trained model a question, watch it think (ask.py)
    python r1.py eval runs/zero                     R1's evaluation protocol (evaluate.py)
    python r1.py sample runs/zero --task add        print a few completions of held-out problems
    python r1.py plot runs/zero                     redraw a run's plots
    python r1.py pretrain --run runs/base           pre-train a base model (train.py)
    python r1.py grpo --init runs/base --run runs/rl          R1-Zero RL from a base (train_grpo.py)
    python r1.py cold-start --out runs/cold_start.jsonl       readable cold-start SFT data (data/cold_start.py)
    python r1.py sft --data runs/cold_start.jsonl --init runs/base --run runs/sft   supervised fine-tuning
    python r1.py recipe --zero runs/zero            the full R1 recipe after R1-Zero (recipe.py): Dev1,
                                                    Dev2, Dev3, R1, distillation, the two tables
    python r1.py rejection-sample runs/recipe/dev2 --out runs/dev3.jsonl   verified training answers for SFT
    python r1.py sweep --init runs/zero/base        GRPO arms (controls, KL, loss types, DAPO) x 3 seeds from
                                                    one base: a table of mean +- std and a figure (sweep.py)
    python r1.py distill --teacher runs/recipe/r1 --student-preset student   distilled vs RL-only student
    python r1.py export runs/zero/rl --hf out/     a Hugging Face DeepSeek-V3 folder (interop.py)
    python r1.py import out/ --out runs/imported    and back, from any local DeepSeek-V3-format folder
    python r1.py params --preset deepseek-v3-671b   parameter and KV-cache counts (meta device)
    python r1.py bench                              throughput and MFU (bench.py)
    python r1.py --smoke --run runs/smoke           every stage of the story in a few steps (<10 s)

Every stage writes a run directory (runs.py); RUN of ask, eval and sample may also be a story run
(runs/zero), whose RL model runs/zero/rl is then used. Bad input ends with one line on stderr and exit
code 2, before any work starts. --overwrite empties only a folder r1 made, a checkpoint never runs code,
and a killed run resumes exactly with --resume (docs/safety.md).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import sys
from pathlib import Path

from runs import MAX_EVAL_K, MAX_EVAL_N, MAX_EXAMPLES, MAX_INT, R1Error, error_line, release_runs


# --------------------------------------------------------------------------------------------
# argparse from dataclasses: each config field becomes --field-name (one source of truth)
# --------------------------------------------------------------------------------------------


def add_config_args(parser: argparse.ArgumentParser, cls, skip=()):
    group = parser.add_argument_group(f"{cls.__name__} (defaults shown)")
    helps = CONFIG_HELP.get(cls.__name__, {})
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + f.name.replace("_", "-")
        text = helps.get(f.name, "")  # a field without a text still works; tests/test_cli.py catches it
        if isinstance(default, bool):
            group.add_argument(flag, type=_bool, default=None, metavar="BOOL", help=f"{text} (default {default})")
        elif isinstance(default, tuple):
            group.add_argument(flag, type=lambda s: tuple(x for x in s.split(",") if x), default=None,
                               metavar="A,B", help=f"{text} (default {','.join(default)})")
        elif default is None:
            group.add_argument(flag, type=int, default=None,
                               help=f"{text} (default: each task's own, add 5, mul 3, countdown 4, linear 2)")
        else:
            group.add_argument(flag, type=type(default), default=None, help=f"{text} (default {default})")


# One line per config field: what it means, its unit and its allowed values (the default is added).
_TASKS_HELP = "comma-separated tasks: add, mul, countdown, linear"
_DIFFICULTY_HELP = ("task difficulty, one for every task: add 1-8 (operand width), mul 1-6 (digits of the first "
                    "number), countdown 3-6 (d-1 or d numbers given), linear 1-3 (3: x on both sides)")
_CKPT_HELP = "write a checkpoint every N steps (>= 0; 0 = only at the end)"
CONFIG_HELP = {
    "TrainConfig": {
        "steps": "optimizer steps (>= 1)",
        "batch_size": "examples per step (>= 1)",
        "lr": "peak AdamW learning rate, reached after the warm-up and held, then the decay (> 0)",
        "min_lr_frac": "the cosine decays to lr x this (0 to 1)",
        "warmup": "steps of linear learning-rate warm-up (>= 0)",
        "decay_steps": "the lr is constant after the warm-up, then a cosine decay over N steps, ending where the "
                       "final mix begins (>= 1)",
        "decay_at_greedy": "hold the lr until held-out accuracy (greedy, or sampled: --gate-temperature) reaches "
                           "this, then decay and end (0 to 1; 0 = train for --steps; --steps is then a cap)",
        "gate_temperature": "the skill gate reads greedy accuracy (0) or the pass@1 of 8 samples a problem at this "
                            "temperature (0 to 2; the story uses 0.6 for countdown)",
        "weight_decay": "AdamW weight decay of the matrices (>= 0; V3: 0.1)",
        "beta1": "AdamW beta1 (0 <= beta1 < 1)",
        "beta2": "AdamW beta2 (0 <= beta2 < 1; V3: 0.95)",
        "grad_clip": "clip the gradient norm to this (> 0)",
        "seed": "seed of the initial weights and the batches (an integer)",
        "tasks": _TASKS_HELP,
        "long_frac": "share of LONG examples, every thinking step written (0 to 1; long + short <= 1, "
                     "the rest GRADED)",
        "short_frac": "share of SHORT examples, no thinking at all (0 to 1)",
        "final_mix_steps": "the last N steps use the final mix below, at the lowest lr (>= 0; 0 = never)",
        "final_long_frac": "share of LONG examples in the last final-mix-steps steps (0 to 1)",
        "final_short_frac": "share of SHORT examples in the last final-mix-steps steps (0 to 1)",
        "reflect_rate": "share of early stops that guess wrong, say ' wait' and work out the rest (0 to 1)",
        "difficulty": _DIFFICULTY_HELP,
        "eval_every": "held-out loss and greedy accuracy every N steps (>= 0; 0 = only at the end)",
        "eval_n": "held-out problems per task in those evaluations (>= 1)",
        "ckpt_every": _CKPT_HELP,
        "completion_only": "loss on the completion tokens only, as SFT does (true/false)",
    },
    "GRPOConfig": {
        "steps": "GRPO steps, one rollout and its updates each (>= 1)",
        "prompts_per_step": "B: distinct prompts per step (>= 1)",
        "num_generations": "G: completions per prompt, the group its advantages are relative to (>= 2)",
        "learning_rate": "AdamW learning rate (> 0)",
        "beta": "KL coefficient against the reference model (>= 0; 0 = no reference model; R1: 0.001)",
        "epsilon": "the ratio is clipped below at 1 - epsilon (> 0)",
        "epsilon_high": "the ratio is clipped above at 1 + epsilon-high (>= 0; 0 = epsilon; DAPO: 0.28)",
        "loss_type": "how token terms are averaged: grpo (per sequence, R1), dapo (per token) or dr_grpo "
                     "(a constant)",
        "scale_rewards": "group (advantages divided by the group's reward std) or none (Dr. GRPO)",
        "num_iterations": "mu: optimizer epochs over each rollout (>= 1)",
        "num_minibatches": "mini-batches per epoch (>= 1, at most prompts-per-step x num-generations)",
        "microbatch_size": "rows per training forward, sorted by length so each is trimmed to its longest "
                           "completion; gradients add up over them (>= 1; a memory and speed knob, same result)",
        "temperature": "rollout sampling temperature (> 0; R1: 1.0)",
        "top_p": "rollout nucleus sampling (0 < top-p <= 1; 1 = off)",
        "max_completion_length": "most tokens per completion (>= 1; prompt + this must fit the model's max_seq_len)",
        "format_weight": "weight of the format reward next to accuracy's 1 (R1: 1; 0 = none, Dr. GRPO)",
        "consistency_weight": "weight of the readability (language-consistency) reward (>= 0; 0 = R1-Zero)",
        "reward": "rules (accuracy + format as weighted above, R1), or a control that cannot tell right from "
                  "wrong: format (the format reward alone) or random (1 or 0 with even odds, blind to the text)",
        "dynamic_sampling": "drop groups whose rewards are all equal, they carry no signal (DAPO; true/false)",
        "refill_rounds": "DAPO's refill: up to N more rounds of prompts while fewer than prompts-per-step groups "
                         "carry signal (0-16; 0 = drop only)",
        "mask_truncated_completions": "no loss on completions cut at max-completion-length (DAPO; true/false)",
        "overlong_cache": "DAPO's soft overlong punishment: the reward falls linearly to -1 over the last N tokens "
                          "before max-completion-length (0 = off; below max-completion-length)",
        "ref_reset_every": "with beta > 0, the reference becomes the current policy every N steps (>= 1; R1: 400)",
        "grad_clip": "clip the gradient norm to this (> 0)",
        "weight_decay": "AdamW weight decay (>= 0)",
        "seed": "seed of the prompts and the rollouts (an integer)",
        "tasks": _TASKS_HELP,
        "difficulty": _DIFFICULTY_HELP,
        "eval_every": "held-out evaluation every N steps (>= 0; 0 = only at the end)",
        "eval_n": "held-out problems per task in each evaluation (>= 1)",
        "eval_k": "samples per held-out problem in each evaluation, at T=0.6 and top-p 0.95 (>= 1)",
        "ckpt_every": _CKPT_HELP,
        "dump_every": "append a few rollouts to samples.txt every N steps (>= 0; 0 = never)",
        "routing_replay": "MoE rollout routing replay: the training forward uses the experts each token was routed "
                          "to while sampling, its gates from the current router (true/false; needs an MoE model)",
    },
    "RecipeConfig": {
        "seed": "seed of every stage (an integer)",
        "tasks": _TASKS_HELP,
        "cold_start_n": "Dev1: readable cold-start examples (>= 1)",
        "cold_start_summary": "end the cold-start thinking with a summary line (true/false; false is an ablation)",
        "sft_lr": "learning rate of every SFT stage (> 0)",
        "sft_batch_size": "examples per SFT step (>= 1)",
        "cold_start_steps": "Dev1: SFT steps on the cold-start set (>= 1)",
        "rl_steps": "Dev2: GRPO steps of reasoning RL (>= 1)",
        "final_rl_steps": "R1: GRPO steps of the last RL stage (>= 1)",
        "consistency_weight": "weight of the readability reward in the RL of Dev2 and R1 (>= 0)",
        "max_completion_length": "most tokens per RL completion (>= 1)",
        "rs_prompts": "rejection sampling: training prompts per task (>= 1)",
        "rs_k": "rejection sampling: samples per prompt (>= 1)",
        "dev3_steps": "Dev3: SFT steps of the base on Dev2's rejection-sampled answers (>= 1)",
        "student_preset": "model preset of the small dense student (see pretrain --preset)",
        "student_corpus": "what the student's pre-training holds: answers (direct answers only, the paper's "
                          "setting: its base lacks the reasoning pattern) or worked (the teacher's corpus and "
                          "schedule: the control)",
        "student_pretrain_steps": "pre-training steps of an answers student's base (>= 1; a worked student trains "
                                  "until the skill appears)",
        "distill_prompts": "training prompts R1 answers once each for distillation; right, readable answers are "
                           "kept (>= 1)",
        "distill_steps": "SFT steps of the student base on R1's samples (>= 1)",
        "distill_lr": "learning rate of that SFT (> 0)",
        "distill_batch_size": "examples per step of that SFT (>= 1)",
        "student_rl_steps": "GRPO steps of the RL-only student (>= 1)",
        "eval_k": "samples per held-out problem in every evaluation, at T=0.6 and top-p 0.95 (>= 1)",
        "eval_n": "held-out problems per task in every evaluation (>= 1)",
        "smoke": "tiny stages for tests: every code path runs, the numbers mean nothing (true/false)",
    },
    "SweepConfig": {
        "arms": "the arms to run, comma-separated, out of those of the default (what each changes: sweep.py)",
        "seeds": "seeds per arm, 0 to N-1 (1..100)",
        "steps": "GRPO steps per cell (>= 1)",
        "eval_every": "held-out evaluation (and checkpoint) every N steps, for the curves; always at the end (>= 1)",
        "n": "held-out problems per task in every evaluation (>= 1)",
        "k": "samples per held-out problem (pass@1, cons@k at T=0.6; >= 1)",
    },
    "RejectionConfig": {
        "n_prompts": "distinct training prompts per task (>= 1)",
        "k": "samples per prompt (>= 1)",
        "temperature": "sampling temperature (> 0)",
        "top_p": "nucleus sampling (0 < top-p <= 1; 1 = off)",
        "max_new_tokens": "most tokens per sample (>= 1)",
        "max_run": "a thinking step repeated more than N times in a row makes a sample repetitive (>= 1)",
        "min_consistency": "keep samples at least this readable (0 to 1; 0 keeps any layout)",
        "tasks": _TASKS_HELP,
        "difficulty": _DIFFICULTY_HELP,
        "seed": "seed of the training prompts and the samples (an integer)",
    },
}


def _bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def config_from_args(cls, args, **fixed):
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if getattr(args, f.name, None) is not None}
    try:
        return cls(**(values | fixed))
    except ValueError as e:
        raise R1Error(str(e)) from None


def add_run_args(p, default_run: str | None):
    p.add_argument("--run", default=default_run, help="run directory (default %(default)s)")
    p.add_argument("--resume", action="store_true", help="continue the run from its latest checkpoint")
    p.add_argument("--overwrite", action="store_true", help="delete an existing run directory and start again")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress output")


def add_sampling_args(p):
    """The sampling options of ask, eval and sample (checked by _check_sampling)."""
    p.add_argument("--temperature", type=float, default=0.6, help="sampling temperature (a finite number >= 0; "
                                                                  "0 = greedy; default 0.6, as R1's evaluation)")
    p.add_argument("--top-p", type=float, default=0.95, help="nucleus sampling (0 < top-p <= 1; 1 = off; "
                                                             "default 0.95)")
    p.add_argument("--max-new-tokens", type=int, default=None, help="most tokens per completion (>= 1; with the "
                                                                    "prompt at most the model's max_seq_len; default: "
                                                                    "the tasks' budget, add 80, mul 128, countdown "
                                                                    "160, linear 64)")
    p.add_argument("--seed", type=int, default=0, help="seed of the sampling (0 to 2**31 - 1, default 0)")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")


# --------------------------------------------------------------------------------------------
# Commands
# --------------------------------------------------------------------------------------------


def cmd_pretrain(args, world=None):
    """`world`: the processes training together (scale/launch.py); None = this process alone."""
    from data import default_tokenizer
    from model import preset
    from runs import World, check_memory, open_run
    from train import TrainConfig, pretrain_batches, train_lm

    world = world or World()
    cfg = config_from_args(TrainConfig, args)
    device = world.pick_device(args.device)
    tok = default_tokenizer()
    model_cfg = _value_error(preset, args.preset, vocab_size=tok.vocab_size)
    check_memory(model_cfg, device, train_rows=cfg.batch_size // world.world_size, seq=model_cfg.max_seq_len,
                 what=f"pre-training --preset {args.preset} with --batch-size {cfg.batch_size}")
    run, model, tok, state = open_run(args.run, "pretrain", model_cfg, cfg, device,
                                      new=lambda: (world.build_model(model_cfg, device, seed=cfg.seed), tok),
                                      resume=args.resume, overwrite=args.overwrite, extra={"preset": args.preset},
                                      world=world)
    _print_config(model_cfg, cfg, run, args.quiet or not world.is_main)
    last = train_lm(run, model, tok, cfg, pretrain_batches(cfg), device, state, quiet=args.quiet, world=world)
    if world.is_main:
        print(f"done: {run} (step {last.get('step')}, loss {last.get('loss', float('nan')):.4f})")


def cmd_sft(args, world=None):
    from runs import World, check_memory, default_run, open_run
    from train import TrainConfig, check_sft_pairs, read_jsonl, sft_batches, train_lm

    world = world or World()
    # SFT: one data mix and no skill gate; the lr decays all along unless --decay-steps says otherwise
    cfg = config_from_args(TrainConfig, args, completion_only=True, decay_at_greedy=0.0, final_mix_steps=0)
    if args.decay_steps is None:
        cfg = dataclasses.replace(cfg, decay_steps=cfg.steps)
    pairs = read_jsonl(args.data)
    device = world.pick_device(args.device)
    args.run = default_run(args.init, "sft", args.run)
    init, tok, _ = world.load_run(args.init, device)
    check_sft_pairs(pairs, tok, args.data)
    check_memory(init.cfg, device, train_rows=cfg.batch_size // world.world_size, seq=init.cfg.max_seq_len,
                 what=f"SFT with --batch-size {cfg.batch_size}")
    run, model, tok, state = open_run(args.run, "sft", init.cfg, cfg, device, new=lambda: (init, tok),
                                      resume=args.resume, overwrite=args.overwrite, sources=(args.init, args.data),
                                      extra={"init": str(args.init), "data": str(args.data)}, world=world)
    _print_config(model.cfg, cfg, run, args.quiet or not world.is_main)
    last = train_lm(run, model, tok, cfg, sft_batches(pairs, cfg), device, state, quiet=args.quiet, stage="sft",
                    world=world)
    if world.is_main:
        print(f"done: {run} (step {last.get('step')}, loss {last.get('loss', float('nan')):.4f})")


def cmd_eval(args):
    from data import prompt
    from evaluate import evaluate
    from report import format_table, table_keys
    from runs import check_output_file, pick_device, write_json_atomic
    from runs import load_run

    _check_sampling(args)
    device = pick_device(args.device)
    run = _model_run(args.run)
    model, tok, _ = load_run(run, device)
    out = run / "eval.json" if args.json is None else args.json
    out = check_output_file(out, "--json", overwrite=True, kind="json")  # an earlier eval's results, or new
    _check_writable(out, "--json")
    trained = _trained(run)
    tasks = _tasks(args.tasks) if args.tasks else list(trained)
    _default_budget(args, tasks)
    problems = _held_out(tasks, args.n, trained, harder=args.harder)
    if not problems:
        raise R1Error(f"no harder level exists for {', '.join(tasks)}: they were trained at their hardest")
    _check_length(model, max(len(tok.encode(prompt(p), bos=True)) for p in problems), args.max_new_tokens)
    level = " one level harder than training" if args.harder else ""
    print(f"evaluating {run}: {args.n} held-out problems{level} of {', '.join(tasks)} x {args.k} samples at "
          f"T={args.temperature}, top-p {args.top_p}, and greedy")
    res = evaluate(model, tok, problems, k=args.k, temperature=args.temperature, top_p=args.top_p,
                   max_new_tokens=args.max_new_tokens, seed=args.seed, progress=True)
    print(format_table(res["tasks"] | {"overall": res["overall"]}, table_keys(args.k, protocol=True)))
    write_json_atomic(out, {k: v for k, v in res.items() if k != "examples"})
    print(f"wrote {out}")


def cmd_cold_start(args):
    from data.cold_start import cold_start_set
    from recipe import write_jsonl
    from runs import check_output_file

    _positive(n=args.n)
    if args.n > MAX_EXAMPLES or not 0 <= args.seed <= MAX_INT:
        raise R1Error(f"--n must be at most {MAX_EXAMPLES:,} and --seed in [0, {MAX_INT}]")
    tasks = _tasks(args.tasks)
    check_output_file(args.out, "--out", overwrite=args.overwrite, kind="jsonl")
    print(f"writing {args.n} readable cold-start examples of {', '.join(tasks)} (train split, seed {args.seed})")
    rows = _value_error(cold_start_set, args.n, tasks=tuple(tasks), seed=args.seed, with_summary=not args.no_summary)
    write_jsonl(rows, args.out, overwrite=args.overwrite)
    print(f"e.g. {rows[0]['prompt'].splitlines()[-2]}\n{rows[0]['completion']}")
    print(f"wrote {len(rows)} readable cold-start examples to {args.out} "
          f"(next: python r1.py sft --data {args.out} --init BASE --run DEV1)")


def cmd_rejection_sample(args):
    from recipe import RejectionConfig, describe_rejection, rejection_sample, write_jsonl
    from runs import check_output_file, pick_device, write_json_atomic
    from runs import load_run

    cfg = config_from_args(RejectionConfig, args)
    out = check_output_file(args.out, "--out", overwrite=args.overwrite, kind="jsonl")
    stats_out = check_output_file(out.with_suffix(".stats.json"), "--out's statistics file", overwrite=args.overwrite,
                                  kind="json")
    device = pick_device(args.device)
    model, tok, _ = load_run(args.run, device)
    rows, stats = rejection_sample(model, tok, cfg, device, quiet=args.quiet)
    print(describe_rejection(stats))
    if not rows:
        raise R1Error(f"no sample of {args.run} passed the filters: nothing written to {out}")
    write_jsonl(rows, out, overwrite=args.overwrite)
    write_json_atomic(stats_out, stats)
    print(f"wrote {out} (next: python r1.py sft --data {out} --init BASE --run OUT)")


def _recipe_config(args):
    from recipe import RecipeConfig

    cfg = config_from_args(RecipeConfig, args)
    return RecipeConfig.for_smoke(**{k: v for k, v in dataclasses.asdict(cfg).items()
                                     if getattr(args, k, None) is not None}) if args.smoke else cfg


def cmd_distill(args):
    from recipe import Stopwatch, check_distill, distill
    from report import format_table, rows_by_task, table_keys
    from runs import pick_device, prepare_run_dir

    cfg = _recipe_config(args)
    if args.student_preset is not None:
        cfg = dataclasses.replace(cfg, student_preset=args.student_preset)
    student_base = Path(args.student_base) if args.student_base else None
    data = Path(args.data) if args.data else None
    check_distill(Path(args.teacher), cfg, student_base, data)  # before the run directory is made
    device = pick_device(args.device)
    run = prepare_run_dir(args.run, resume=args.resume, overwrite=args.overwrite,
                          sources=(args.teacher, args.student_base, args.data))
    res = distill(Path(args.teacher), run, cfg, device, args.quiet, Stopwatch(args.quiet), student_base, data)
    print("\n" + format_table(rows_by_task(res["eval"]), table_keys(cfg.eval_k)))
    print(f"wrote {run / 'results.json'}")


def cmd_recipe(args):
    """The R1-Zero story (reused with --zero, else run in RUN/zero), then recipe.run_recipe."""
    from recipe import Stopwatch, run_recipe, zero
    from runs import load_checkpoint, pick_device, prepare_run_dir

    cfg = _recipe_config(args)
    zero_run = Path(args.zero) if args.zero else None
    if zero_run is not None:
        for part in ("base", "rl"):
            load_checkpoint(zero_run / part)
    student_base = Path(args.student_base) if args.student_base else None
    if student_base is not None:
        load_checkpoint(student_base)
    device = pick_device(args.device)
    run = prepare_run_dir(args.run, resume=args.resume, overwrite=args.overwrite, sources=(args.zero, args.student_base))
    clock = Stopwatch(args.quiet)
    if zero_run is None:
        zero_run = run / "zero"
        clock.stage("R1-Zero", f"the R1-Zero story (python r1.py) -> {zero_run}")
        # the story as `python r1.py` runs it (its own evaluations: 100 problems); the recipe's tables
        # evaluate its base and R1-Zero again with the recipe's protocol
        zero(zero_run, seed=cfg.seed, smoke=cfg.smoke, device=device, resume=(zero_run / "base").exists(),
             quiet=args.quiet)
    run_recipe(run, zero_run, cfg, device, args.quiet, student_base, clock)


def cmd_sample(args):
    import torch

    from data import prompt
    from evaluate import score
    from runs import load_run, pick_device
    from sampler import complete

    _check_sampling(args)
    device = pick_device(args.device)
    run = _model_run(args.run)
    model, tok, _ = load_run(run, device)
    trained = _trained(run)
    task = _tasks(args.task)[0] if args.task else next(iter(trained))
    _default_budget(args, [task])
    problems = _held_out([task], args.n, trained)
    ids = [tok.encode(prompt(p), bos=True) for p in problems]
    _check_length(model, max(map(len, ids)), args.max_new_tokens)
    print(f"sampling {run}: {args.n} held-out {task} problems at T={args.temperature}, top-p {args.top_p}")
    gen = torch.Generator(device=device).manual_seed(args.seed)
    for start in range(0, len(problems), SAMPLE_BATCH):  # print each batch as it is done
        batch = problems[start:start + SAMPLE_BATCH]
        _, texts = complete(model, tok, [prompt(p) for p in batch], stop="</answer>", max_new_tokens=args.max_new_tokens,
                            temperature=args.temperature, top_p=args.top_p, generator=gen)
        for p, text in zip(batch, texts):
            print(f"{p.question}  ->  {text}   [{'right' if score(p, text) else 'wrong'}, answer {p.answer}]",
                  flush=True)


def cmd_ask(args):
    """Ask a run questions typed by a person (ask.py): the question is written the way the run was
    trained on, the thinking is printed as it is sampled, and the answer is checked."""
    import torch

    from tools.ask import answers, problem_for, think, verdict
    from data import prompt
    from runs import pick_device
    from runs import load_run

    _check_sampling(args)
    device = pick_device(args.device)
    run = _model_run(args.run)
    model, tok, _ = load_run(run, device)
    trained = _trained(run)
    if args.task is not None and args.task not in trained:
        _tasks(args.task)  # an unknown task's error names the choices
        raise R1Error(f"--task {args.task}: {run} was not trained on it; it answers {answers(trained)}")
    _default_budget(args, [args.task] if args.task else trained)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    one = args.question is not None
    for question in [args.question] if one else _typed_questions(run, trained):
        try:
            problem = problem_for(question, trained, tok, args.task)
            ids = tok.encode(prompt(problem), bos=True)
            _check_length(model, len(ids), args.max_new_tokens)
        except R1Error as e:
            if one:
                raise
            print(f"error: {e}", file=sys.stderr, flush=True)  # a session goes on to the next question
            continue
        print(f"User: {problem.question}\nAssistant:", end="", flush=True)
        text, truncated = think(model, tok, ids, temperature=args.temperature, top_p=args.top_p,
                                max_new_tokens=args.max_new_tokens, generator=gen,
                                on_text=lambda piece: print(piece, end="", flush=True))
        print("\n" + verdict(problem, text, truncated), flush=True)


def _typed_questions(run, trained):
    """Questions from stdin, one a line: at a terminal with a prompt, until an empty line, "quit" or
    end of input; from a pipe or file, every non-empty line until its end (or "quit")."""
    from tools.ask import answers

    tty = sys.stdin.isatty()
    if tty:
        print(f"{run} answers {answers(trained)}. An empty line or quit ends.")
    while True:
        try:
            line = input("question> ") if tty else sys.stdin.readline()
        except EOFError:  # Ctrl-D at the terminal
            return
        if not tty and not line:
            return  # the end of the pipe or file
        line = line.strip()
        if line.lower() in ("quit", "exit") or (tty and not line):
            return
        if line:
            yield line


def cmd_grpo(args, world=None):
    from runs import World, check_memory, default_run, open_run
    from train_grpo import GRPOConfig, train_grpo

    world = world or World()
    cfg = config_from_args(GRPOConfig, args)
    device = world.pick_device(args.device)
    args.run = default_run(args.init, "grpo", args.run)
    init, tok, _ = world.load_run(args.init, device)
    cfg.check_fits(init.cfg)
    rows = cfg.prompts_per_step * cfg.num_generations
    check_memory(init.cfg, device, train_rows=rows // world.world_size, seq=init.cfg.max_seq_len, cache_rows=rows,
                 models=2 if cfg.beta > 0 else 1, what=f"GRPO with {cfg.prompts_per_step} x {cfg.num_generations} "
                 f"samples a step")
    run, model, tok, state = open_run(args.run, "grpo", init.cfg, cfg, device, new=lambda: (init, tok),
                                      resume=args.resume, overwrite=args.overwrite, sources=(args.init,),
                                      extra={"init": str(args.init)}, world=world)
    _print_config(model.cfg, cfg, run, args.quiet or not world.is_main)
    last = train_grpo(run, model, tok, cfg, device, state, quiet=args.quiet, world=world)
    if world.is_main:
        print(f"done: {run} (step {last.get('step')}, reward {last.get('reward', float('nan')):.3f})")


def cmd_zero(args):
    """The R1-Zero story (recipe.zero): base model, base check, GRPO, evaluations, report."""
    from recipe import zero
    from runs import pick_device

    zero(args.run, seed=args.seed, preset_name=args.preset, k=args.k, n=args.n, smoke=args.smoke,
         skip_base_check=args.skip_base_check, device=pick_device(args.device), resume=args.resume,
         overwrite=args.overwrite, quiet=args.quiet, tasks=tuple(_tasks(args.tasks)))


def cmd_sweep(args):
    """A grid of GRPO arms x seeds from one base (sweep.py)."""
    from runs import pick_device
    from sweep import SMOKE, SweepConfig, sweep

    given = {f.name: getattr(args, f.name) for f in dataclasses.fields(SweepConfig) if getattr(args, f.name, None) is not None}
    try:
        cfg = SweepConfig(**((SMOKE if args.smoke else {}) | given))
    except ValueError as e:
        raise R1Error(str(e)) from None
    sweep(args.run, args.init, cfg, pick_device(args.device), resume=args.resume, overwrite=args.overwrite,
          quiet=args.quiet)


def cmd_plot(args):
    from report import plot_run
    from runs import read_json

    run = Path(args.run)
    results = run / "results.json"
    base = None
    if results.is_file():
        try:
            base = read_json(results)["base"]
            base = {t: {"pass@1": r["pass@1"], "reflect": r.get("reflect")} for t, r in base.items()}
        except (KeyError, TypeError, AttributeError):
            raise R1Error(f"{results} is not a story's results.json (no base pass@1 per task)") from None
    for p in plot_run(run, base):
        print(f"wrote {p}")


def cmd_bench(args):
    from tools import bench

    bench.main(args.only, compile=args.compile, run=args.run)


def cmd_export(args):
    from tools.interop import export_hf

    out = export_hf(args.run, args.hf, overwrite=args.overwrite)
    print(f"wrote a Hugging Face DeepSeek-V3 folder: {out}")


def cmd_import(args):
    from tools.interop import import_hf

    out = import_hf(args.hf_dir, args.out, overwrite=args.overwrite)
    print(f"wrote run {out} (use it with grpo, sft, eval or sample)")


def cmd_params(args):
    from model import count_params, preset

    cfg = _value_error(preset, args.preset)
    c = count_params(cfg)
    print(f"preset {args.preset}")
    print(f"  total parameters        {c['total'] / 1e9:10.3f} B   ({c['total']:,})")
    print(f"  activated per token     {c['activated'] / 1e9:10.3f} B")
    print(f"  MTP modules (unique)    {c['mtp'] / 1e9:10.3f} B   (embedding and head shared)")
    print(f"  embedding / head        {c['embedding'] / 1e9:10.3f} B each")
    print(f"  MLA KV cache per token  {c['kv_cache_bytes_bf16']:,} bytes in bf16 "
          f"(a per-head K/V cache would take {c['naive_kv_cache_bytes_bf16']:,})")


# --------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------


def _value_error(fn, *a, **kw):
    try:
        return fn(*a, **kw)
    except ValueError as e:
        raise R1Error(str(e)) from None


def _positive(**values):
    for name, v in values.items():
        if v <= 0:
            raise R1Error(f"--{name} must be > 0, got {v}")


# Bounds of the sampling options of eval, sample and ask. The protocol at its defaults, n=100 x k=8 = 800
# samples, takes 20 to 75 s for the tiny model on 2 CPU cores, so MAX_SAMPLES is up to about two hours
MAX_K, MAX_N = MAX_EVAL_K, MAX_EVAL_N  # runs.py says why
MAX_SAMPLES = 100_000  # n x k per task
SAMPLE_BATCH = 64  # sample prints its completions this many problems at a time


def _check_sampling(args):
    """The sampling options of eval, sample and ask, each in its range, before any work starts (the
    ones a command lacks are skipped). The prompt length is checked once the model is loaded."""
    t, p, seed = args.temperature, args.top_p, args.seed
    checks = [(math.isfinite(t) and t >= 0, f"--temperature must be a finite number >= 0 (0 = greedy), got {t}"),
              (0 < p <= 1, f"--top-p must be in (0, 1], got {p}"),
              (args.max_new_tokens is None or args.max_new_tokens >= 1,
               f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"),
              (0 <= seed < 2 ** 31, f"--seed must be in [0, 2**31), got {seed}")]
    k, n = getattr(args, "k", None), getattr(args, "n", None)
    if k is not None:
        checks.append((1 <= k <= MAX_K, f"--k must be from 1 to {MAX_K}, got {k}"))
    if n is not None:
        checks.append((1 <= n <= MAX_N, f"--n must be from 1 to {MAX_N} held-out problems per task, got {n}"))
    if k is not None and n is not None:
        checks.append((n * k <= MAX_SAMPLES, f"--n x --k is {n * k} samples per task, more than the {MAX_SAMPLES:,} "
                                             f"allowed (hours of sampling): lower --n or --k"))
    for ok, message in checks:
        if not ok:
            raise R1Error(message)


def _default_budget(args, tasks) -> None:
    """--max-new-tokens, when not given, is the sampling budget of the tasks (data.tasks.completion_budget)."""
    from data import completion_budget

    if args.max_new_tokens is None:
        args.max_new_tokens = completion_budget(list(tasks))


def _check_length(model, prompt_len: int, max_new_tokens: int):
    """The longest prompt plus --max-new-tokens must fit the model's context (max_seq_len)."""
    limit = model.cfg.max_seq_len
    if prompt_len + max_new_tokens > limit:
        raise R1Error(f"--max-new-tokens {max_new_tokens}: with the prompt ({prompt_len} tokens) that is more than "
                      f"the model's max_seq_len {limit}; use at most {limit - prompt_len}")


def _check_writable(path: Path, option: str):
    """A file can be written at `path` (its folder exists and takes files), asked before the work
    whose result goes there, so that a typo does not lose an hour's results. Nothing is written."""
    folder = path.parent  # a folder given as the file: runs.check_output_file, called first
    if not folder.is_dir():
        raise R1Error(f"{option} {path}: {folder} " + ("is not a folder" if folder.exists() else "does not exist"))
    if not os.access(folder, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise R1Error(f"{option} {path}: no permission to write there")


def _model_run(run: str) -> Path:
    """The run whose model ask, eval and sample use: RUN itself, or for a story run of `python r1.py`
    (which keeps its two models in base/ and rl/, and no checkpoint of its own) its RL model RUN/rl."""
    path = Path(run)
    if not (path / "ckpt").exists() and (path / "rl").is_dir():
        print(f"{path} is an R1-Zero story run: using its RL model, {path / 'rl'}")
        return path / "rl"
    return path


def _trained(run: Path) -> dict[str, int]:
    """{task: difficulty} the run's model was trained on (ask.trained_on), or, when its config.json
    does not say (an imported model), every task at its default difficulty."""
    from tools.ask import trained_on
    from data import DEFAULT_DIFFICULTY

    trained = trained_on(run)
    if trained is None:
        print(f"{run / 'config.json'} does not say what the model was trained on: assuming every task "
              f"at its default difficulty")
        return dict(DEFAULT_DIFFICULTY)
    return trained


def _held_out(tasks: list[str], n: int, trained: dict[str, int], harder: bool = False) -> list:
    """n held-out problems of each task, at the difficulty the run was trained on (or one level above it)."""
    from data import eval_set, harder_problems
    if harder:
        return [p for t in tasks for p in _value_error(harder_problems, [t], n, trained.get(t))]
    return [p for t in tasks for p in _value_error(eval_set, t, n, difficulty=trained.get(t))]


def _tasks(spec: str) -> list[str]:
    from data import check_task
    tasks = [t for t in spec.split(",") if t]
    for t in tasks:
        _value_error(check_task, t)
    if not tasks:
        raise R1Error("no task given")
    return tasks


def _print_config(model_cfg, stage_cfg, run, quiet):
    if quiet:
        return
    from model import count_params
    c = count_params(model_cfg)
    print(f"run {run}: {c['total'] / 1e6:.2f}M params ({c['activated'] / 1e6:.2f}M activated, "
          f"{c['mtp'] / 1e6:.2f}M MTP)")
    print("  model: " + ", ".join(f"{k}={v}" for k, v in model_cfg.to_dict().items()))
    print("  stage: " + ", ".join(f"{k}={v}" for k, v in dataclasses.asdict(stage_cfg).items()))


class Parser(argparse.ArgumentParser):
    """argparse with r1's error contract: a bad option is one "error:" line (naming where the help is)
    and exit code 2, like every other bad input. Subcommands inherit the class."""

    def error(self, message):
        self.exit(2, f"error: {message} (see: python {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    from model import PRESETS
    from recipe import RecipeConfig, RejectionConfig
    from sweep import SweepConfig
    from train import TrainConfig
    from train_grpo import GRPOConfig

    parser = Parser(prog="r1.py", description=__doc__.split("\n\n")[0],
                    formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    sub = parser.add_subparsers(dest="command")
    presets = f"model size: {', '.join(PRESETS)}"
    model_run = "run directory (a story run such as runs/zero means its RL model, runs/zero/rl)"

    p = sub.add_parser("pretrain", help="pre-train a base model on the task corpus")
    add_run_args(p, "runs/base")
    p.add_argument("--preset", default="tiny", help=f"{presets} (default %(default)s)")
    add_config_args(p, TrainConfig, skip=("completion_only",))
    p.set_defaults(fn=cmd_pretrain)

    p = sub.add_parser("sft", help="supervised fine-tuning on prompt/completion JSONL (loss on completions)")
    add_run_args(p, None)
    p.add_argument("--data", required=True, help="JSONL file, one {\"prompt\": ..., \"completion\": ...} a line")
    p.add_argument("--init", required=True, help="run directory to start from")
    add_config_args(p, TrainConfig, skip=("completion_only", "tasks", "long_frac", "short_frac", "final_mix_steps",
                                          "final_long_frac", "final_short_frac", "reflect_rate", "difficulty",
                                          "decay_at_greedy", "gate_temperature"))
    p.set_defaults(fn=cmd_sft)

    p = sub.add_parser("zero", help="(the default) the whole R1-Zero story on the tiny config")
    add_run_args(p, "runs/zero")
    p.add_argument("--preset", default="tiny", help=f"{presets} (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="seed of pre-training, GRPO and the evaluations (default 0)")
    p.add_argument("--k", type=int, default=8, help="samples per held-out problem in the evaluations (>= 1, "
                                                    "default 8)")
    p.add_argument("--n", type=int, default=100, help="held-out problems per task in the evaluations (>= 1, "
                                                      "default 100)")
    p.add_argument("--tasks", default="add", help=f"{_TASKS_HELP}; one model learns them all (default add)")
    p.add_argument("--skip-base-check", action="store_true", help="run RL even when the base looks unready")
    p.add_argument("--smoke", action="store_true", help="a few steps of every stage (under 10 s; for tests)")
    p.set_defaults(fn=cmd_zero)

    p = sub.add_parser("grpo", help="R1-Zero: GRPO with rule-based rewards from a base run")
    add_run_args(p, None)
    p.add_argument("--init", required=True, help="run directory to start from (a base or SFT model)")
    add_config_args(p, GRPOConfig)
    p.set_defaults(fn=cmd_grpo)

    p = sub.add_parser("sweep", help="GRPO arms (controls, KL, loss types, DAPO) x seeds from one base, with "
                                     "error bars (sweep.py)")
    add_run_args(p, "runs/sweep")
    p.add_argument("--init", default="runs/zero/base", help="the base every cell starts from (default %(default)s, "
                                                            "the story's)")
    p.add_argument("--smoke", action="store_true", help="two seeds of every arm, a few tiny steps each (for tests)")
    add_config_args(p, SweepConfig, skip=("grpo",))
    p.set_defaults(fn=cmd_sweep)

    p = sub.add_parser("plot", help="redraw a run's plots from its metrics")
    p.add_argument("run", help="run directory (its metrics.jsonl; a story run also gives the base's accuracy)")
    p.set_defaults(fn=cmd_plot)

    p = sub.add_parser("ask", help="ask a trained run a question and watch it think (ask.py)")
    p.add_argument("run", help=model_run)
    p.add_argument("question", nargs="?", default=None,
                   help='e.g. "123+456" or "What is 5242-1663?", written the way the run was trained on; '
                        "without it, questions are read from stdin, one a line")
    p.add_argument("--task", default=None, help="read the question as this task (default: the task its "
                                                "operator names); one the run was trained on")
    add_sampling_args(p)
    p.set_defaults(fn=cmd_ask)

    p = sub.add_parser("eval", help="R1's evaluation protocol on the held-out sets")
    p.add_argument("run", help=model_run)
    p.add_argument("--k", type=int, default=8, help=f"samples per problem (1 to {MAX_K}, default 8)")
    p.add_argument("--n", type=int, default=100, help=f"held-out problems per task (1 to {MAX_N}, default 100; "
                                                      f"n x k at most {MAX_SAMPLES:,})")
    p.add_argument("--tasks", default=None, help=f"{_TASKS_HELP} (default: those the run was trained on)")
    p.add_argument("--harder", action="store_true", help="held-out problems one difficulty level above the one "
                                                         "the run was trained at (out of distribution)")
    add_sampling_args(p)
    p.add_argument("--json", default=None, help="where to write the results (default RUN/eval.json); its folder "
                                                "must exist")
    p.set_defaults(fn=cmd_eval)

    p = sub.add_parser("recipe", help="the full R1 recipe: Dev1, Dev2, Dev3, R1, distillation, two tables")
    add_run_args(p, "runs/recipe")
    p.add_argument("--zero", default=None, help="an existing R1-Zero run (python r1.py) whose base/ and rl/ "
                                                "are used; without it the R1-Zero story runs first in RUN/zero")
    p.add_argument("--student-base", default=None, help="an existing pre-trained student run (skips its pre-training)")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (for tests)")
    add_config_args(p, RecipeConfig, skip=("smoke",))
    p.set_defaults(fn=cmd_recipe)

    p = sub.add_parser("cold-start", help="write readable cold-start SFT examples (JSONL)")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--n", type=int, default=1000, help="examples (>= 1; default 1000, as the recipe)")
    p.add_argument("--tasks", default="add", help=f"{_TASKS_HELP} (default add)")
    p.add_argument("--seed", type=int, default=0, help="seed of the training-split problems (default 0)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--no-summary", action="store_true",
                   help="drop the summary line (an ablation; the recipe always writes it)")
    p.set_defaults(fn=cmd_cold_start)

    p = sub.add_parser("rejection-sample", help="k samples per training prompt, keep the verified ones (JSONL)")
    p.add_argument("run", help="run directory of the model to sample")
    p.add_argument("--out", required=True, help="JSONL file to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out")
    p.add_argument("--device", default="auto", help="auto (cuda, mps, cpu), cpu, cuda or mps")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    add_config_args(p, RejectionConfig)
    p.set_defaults(fn=cmd_rejection_sample)

    p = sub.add_parser("distill", help="a small dense student: SFT on a teacher's samples vs RL alone")
    add_run_args(p, "runs/distill")
    p.add_argument("--teacher", required=True, help="the teacher run (e.g. RUN/r1 of a recipe)")
    p.add_argument("--student-preset", default=None, help="dense student size (default student)")
    p.add_argument("--student-base", default=None, help="an existing pre-trained student run (skips its pre-training)")
    p.add_argument("--data", default=None, help="SFT JSONL to distill from (default: rejection-sample the teacher)")
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (for tests)")
    add_config_args(p, RecipeConfig, skip=("smoke", "student_preset", "cold_start_n", "cold_start_summary",
                                           "cold_start_steps", "sft_lr", "sft_batch_size", "rl_steps",
                                           "final_rl_steps", "consistency_weight", "rs_prompts", "rs_k",
                                           "dev3_steps"))
    p.set_defaults(fn=cmd_distill)

    p = sub.add_parser("sample", help="print completions of held-out problems")
    p.add_argument("run", help=model_run)
    p.add_argument("--task", default=None, help="add, mul, countdown or linear (default: the first the run was "
                                                "trained on)")
    p.add_argument("--n", type=int, default=8, help=f"held-out problems (1 to {MAX_N}, default 8)")
    add_sampling_args(p)
    p.set_defaults(fn=cmd_sample)

    p = sub.add_parser("bench", help="throughput, FLOPs per token and MFU against this machine's matmul peak")
    p.add_argument("--only", choices=["train", "decode", "sampler", "grpo", "rewards"], default=None,
                   help="one part only")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step (slow to start)")
    p.add_argument("--run", default=None, help="also benchmark the sampler, and the GRPO step, on this trained run")
    p.set_defaults(fn=cmd_bench)

    p = sub.add_parser("export", help="write a run as a Hugging Face DeepSeek-V3 folder (transformers loads it)")
    p.add_argument("run", help="run directory to export (its newest checkpoint)")
    p.add_argument("--hf", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    p.set_defaults(fn=cmd_export)

    p = sub.add_parser("import", help="turn a local Hugging Face DeepSeek-V3-format folder into a run")
    p.add_argument("hf_dir", help="a local folder with config.json, safetensors weights and tokenizer files")
    p.add_argument("--out", required=True, help="run directory to write")
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")
    p.set_defaults(fn=cmd_import)

    p = sub.add_parser("params", help="parameter counts and KV-cache size of a preset (meta device)")
    p.add_argument("--preset", default="deepseek-v3-671b", help=f"one of {', '.join(PRESETS)} (default %(default)s)")
    p.set_defaults(fn=cmd_params)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["zero"] + argv  # `python r1.py [options]` = the R1-Zero story
    args = parser.parse_args(argv)
    try:
        args.fn(args)
    except (R1Error, OSError) as e:  # OSError: permissions, a file where a folder should be, a full disk
        print(error_line(e), file=sys.stderr)
        return 2
    except MemoryError:
        print("error: out of memory: choose a smaller preset, batch or number of samples", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted: the last complete checkpoint is kept; continue with --resume", file=sys.stderr)
        return 130
    finally:
        release_runs()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
