"""What sharding buys: per-rank bytes of parameters + gradients + AdamW state, and training tokens/s.

    python -m scale.bench --steps 20                                   one process, no FSDP
    torchrun --standalone --nproc_per_node=2 -m -- scale.bench --steps 20   two ranks, FSDP2

Both run train.py's loop (train_lm) on the same global batches of the `tiny` preset, then one more
optimizer step whose gradients are kept, and count the bytes each rank holds: its parameter
shards, their gradients and the AdamW moments (on FSDP, the local shards of the DTensors).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from data import default_tokenizer
from model import preset
from runs import Metrics, World
from train import TrainConfig, collate, make_optimizer, pretrain_batches, train_lm


def local_bytes(t: torch.Tensor) -> int:
    t = t.to_local() if hasattr(t, "to_local") else t  # a DTensor's shard on this rank
    return t.numel() * t.element_size()


def state_bytes(model, opt) -> dict:
    params = list(model.parameters())
    return {"params": sum(local_bytes(p) for p in params),
            "grads": sum(local_bytes(p.grad) for p in params if p.grad is not None),
            "adam": sum(local_bytes(v) for s in opt.state.values() for v in s.values()
                        if torch.is_tensor(v) and v.dim() > 0)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch-size", type=int, default=64, help="global batch (examples)")
    args = ap.parse_args(argv)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    world = World()
    if "WORLD_SIZE" in os.environ:
        from scale.dist import init_world
        world = init_world("cpu", "gloo")
    device, tok = torch.device("cpu"), default_tokenizer()
    cfg = TrainConfig(steps=args.steps, batch_size=args.batch_size, eval_every=0, ckpt_every=0, eval_n=1)
    model = world.build_model(preset(args.preset, vocab_size=tok.vocab_size), device, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(world.on_main(lambda: tmp))  # rank 0's folder: only rank 0 writes metrics
        train_lm(run, model, tok, cfg, pretrain_batches(cfg), device, quiet=True, world=world)
        tps = Metrics(run / "metrics.jsonl").read()[-2]["tokens_per_s"] if world.is_main else 0.0
        world.barrier()
    # one more step, keeping its gradients, to count what each rank holds
    opt = make_optimizer(model, cfg)
    tokens, targets = collate(world.shard(pretrain_batches(cfg)(0)), tok, model.cfg.max_seq_len, False)
    model(tokens, targets)["total"].backward()
    opt.step()
    mine = state_bytes(model, opt)
    total = sum(mine.values())
    if world.is_main:
        print(f"{world.world_size} rank(s), preset {args.preset}, global batch {args.batch_size}, {args.steps} steps")
        print(f"  per rank: params {mine['params']:,} B, grads {mine['grads']:,} B, AdamW {mine['adam']:,} B, "
              f"total {total:,} B ({total / 2**20:.2f} MiB)")
        print(f"  training tokens/s (all ranks): {tps:,.0f}")
    if world.world_size > 1:
        world.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
