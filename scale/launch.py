"""The torchrun entry: r1.py's pretrain, sft and grpo stages on many processes, GPUs and nodes.

    torchrun --standalone --nproc-per-node=8 -m -- scale.launch pretrain --run runs/base --preset small
    torchrun --standalone --nproc-per-node=8 -m -- scale.launch grpo --init runs/base --run runs/zero
    torchrun --nproc-per-node=2 --max-restarts=1 -m -- scale.launch pretrain --run runs/base --device cpu

(`--` ends torchrun's own options: without it torchrun reads our --run as its --run-path.) The
options are r1.py's (same parser, same configs, same defaults) plus --backend; the stages are r1.py's
own cmd_pretrain / cmd_sft / cmd_grpo, handed a DistWorld (scale/dist.py), so the training loops of
train.py and train_grpo.py are the only ones. The batch options are global: --batch-size 64 on 8
ranks is 8 examples per rank and the same training as --batch-size 64 in one process.

Fault tolerance: torchrun --max-restarts=K restarts every rank when one dies; a restarted group
(TORCHELASTIC_RESTART_COUNT > 0) continues the run with --resume: from its last checkpoint, or from
step 0 when none was written yet. Bad input (NCCL without CUDA, more processes than GPUs, a global
batch the world size does not divide, a resume with other options) ends every rank with exit code 2
and one line from rank 0.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import r1
from runs import R1Error, default_run, error_line

STAGES = {"pretrain": r1.cmd_pretrain, "sft": r1.cmd_sft, "grpo": r1.cmd_grpo}


def parse(argv: list[str]) -> tuple[argparse.Namespace, str]:
    """r1.py's parser for the stage and its options; --backend (auto, nccl, gloo) is ours."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--backend", default="auto")
    ours, rest = pre.parse_known_args(argv)
    if not rest or rest[0] not in STAGES:
        raise R1Error(f"usage: torchrun ... -m -- scale.launch {{{','.join(STAGES)}}} [r1.py options] [--backend "
                      f"auto|nccl|gloo] (the options of `python r1.py STAGE --help`)")
    return r1.build_parser().parse_args(rest), ours.backend


def check_global_batch(args, world_size: int):
    """The global batch must split evenly over the ranks (checked before anything is written)."""
    from train import TrainConfig
    from train_grpo import GRPOConfig

    if args.command == "grpo":
        cfg = r1.config_from_args(GRPOConfig, args)
        if cfg.prompts_per_step % world_size:
            raise R1Error(f"--prompts-per-step {cfg.prompts_per_step} does not split over {world_size} ranks: "
                          f"use a multiple of {world_size} (each rank samples whole groups)")
        if cfg.beta > 0:
            raise R1Error("scale/: a GRPO reference model (--beta > 0) is not supported yet; use --beta 0")
    else:
        cfg = r1.config_from_args(TrainConfig, args, **({"completion_only": True} if args.command == "sft" else {}))
        if cfg.batch_size % world_size:
            raise R1Error(f"--batch-size {cfg.batch_size} does not split over {world_size} ranks: "
                          f"use a multiple of {world_size}")


def auto_resume(args):
    """After a torchrun restart, continue the run: --resume picks up its last checkpoint, or starts it
    again from step 0 if none was written yet."""
    if int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) == 0:
        return
    if args.command != "pretrain":
        args.run = default_run(args.init, args.command, args.run)
    run = Path(args.run)
    args.resume, args.overwrite = run.is_dir() and any(run.iterdir()), False


def main(argv=None) -> int:
    from scale.dist import init_world

    rank, world_size = int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))
    world = None
    try:
        args, backend = parse(list(sys.argv[1:] if argv is None else argv))
        check_global_batch(args, world_size)
        auto_resume(args)
        world = init_world(args.device, backend)
        if world.is_main and not args.quiet:
            print(f"{world.world_size} ranks, {world.device.type} ({'nccl' if world.device.type == 'cuda' else 'gloo'})")
        STAGES[args.command](args, world)
        world.close()
        return 0
    except (R1Error, OSError) as e:
        if rank == 0:
            print(error_line(e), file=sys.stderr)
        if world is not None:
            import torch.distributed as dist
            dist.destroy_process_group()
        return 2


if __name__ == "__main__":
    sys.exit(main())
