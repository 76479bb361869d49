"""Benchmarks: measured on this machine, printed, never asserted (speed is not a test).

    python r1.py bench                 everything below on the default sizes
    python r1.py bench --only train    training throughput and MFU only (also: sampler, rewards)
    python r1.py bench --only sampler --run runs/zero/rl   the sampler also on a trained model

- matmul peak: the machine's own fp32 and bf16 GEMM throughput, the denominator of MFU;
- training: tokens/s of forward + backward + AdamW for the `tiny` and `small` presets, model FLOPs per
  token (model.flops_per_token), MFU against both peaks, and a dense model of equal activated width
  (the cost of MoE dispatch);
- sampler: tokens/s with the latent KV cache vs re-running the whole sequence, and self-speculative
  MTP decoding vs plain (sampler.bench_sampler);
- rewards: calls/s and the worst adversarial call (rewards.bench_rewards).
"""

from __future__ import annotations

import time
from dataclasses import replace

import torch

from model import build_model, count_params, flops_per_token, preset


def matmul_peak(dtype=torch.float32, n: int = 2048, reps: int = 10) -> float:
    """Best GFLOP/s of an n x n x n matmul over `reps` runs."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    best = float("inf")
    for _ in range(reps):
        t = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t)
    return 2 * n ** 3 / best / 1e9


def train_throughput(cfg, batch: int = 64, seq: int = 80, steps: int = 6, compile: bool = False) -> dict:
    """Tokens/s of full training steps (forward, backward, AdamW) on random tokens."""
    model = build_model(cfg, seed=0)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randint(4, cfg.vocab_size, (batch, seq))
    y = torch.roll(x, -1, 1)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        out = step_model(x, y)
        out["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    dt = sorted(times[2:])[len(times[2:]) // 2]  # median
    fpt = flops_per_token(cfg, seq)
    return {"tokens_per_s": batch * seq / dt, "flops_per_token": fpt, "gflops": fpt * batch * seq / dt / 1e9}


def bench_train(compile: bool = False):
    p32, p16 = matmul_peak(torch.float32), matmul_peak(torch.bfloat16)
    print(f"matmul peak on this machine ({torch.get_num_threads()} threads): fp32 {p32:.0f} GFLOP/s, bf16 {p16:.0f} GFLOP/s")
    print(f"{'model':<34}{'params':>9}{'active':>9}{'tok/s':>9}{'MFLOP/tok':>11}{'GFLOP/s':>9}{'MFU fp32':>10}{'MFU bf16':>10}")
    rows = [("tiny", preset("tiny")), ("small", preset("small"))]
    for name, cfg in list(rows):
        # a dense model with the same activated FFN width: (K + shared) experts x moe_inter_dim
        width = (cfg.n_activated_experts + cfg.n_shared_experts) * cfg.moe_inter_dim
        rows.append((f"{name}, dense of equal width", replace(cfg, n_routed_experts=0, n_shared_experts=0,
                                                                n_dense_layers=cfg.n_layers, inter_dim=width)))
    for name, cfg in rows:
        r = train_throughput(cfg, compile=compile)
        c = count_params(cfg)
        print(f"{name:<34}{c['total'] / 1e6:>8.2f}M{c['activated'] / 1e6:>8.2f}M{r['tokens_per_s']:>9.0f}"
              f"{r['flops_per_token'] / 1e6:>11.2f}{r['gflops']:>9.1f}{100 * r['gflops'] / p32:>9.1f}%"
              f"{100 * r['gflops'] / p16:>9.1f}%")


def bench_sampling(run: str | None = None):
    """Random-weight tiny and small models; with `run`, also that trained model on real prompts
    (where the MTP draft is worth something: acceptance on random weights is ~0)."""
    from sampler import bench_sampler

    models = [(f"{name} preset (random weights)", build_model(preset(name), seed=0), None) for name in ("tiny", "small")]
    if run is not None:
        from data import eval_set, prompt
        from train import load_run

        model, tok, _ = load_run(run)
        prompts = [tok.encode(prompt(p), bos=True) for p in eval_set("add", 64)]
        models.append((f"trained model {run} (held-out add prompts)", model, prompts))
    for name, model, prompts in models:
        print(f"sampler, {name}:")
        for row in bench_sampler(model.eval(), prompts=prompts):
            print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))


def bench_reward_fns():
    import rewards

    r = rewards.bench_rewards()
    print("rewards: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


def main(only: str | None = None, compile: bool = False, run: str | None = None):
    if only in (None, "train"):
        bench_train(compile)
    if only in (None, "sampler"):
        bench_sampling(run)
    if only in (None, "rewards"):
        bench_reward_fns()
