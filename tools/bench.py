"""Benchmarks: measured on this machine, printed, never asserted (speed is not a test).

    python r1.py bench                 everything below on the default sizes
    python r1.py bench --only train    training throughput and MFU only (also: decode, sampler, grpo, rewards)
    python r1.py bench --only sampler --run runs/zero/rl   the sampler also on a trained model

- machine: the CPU model, the ISA features that decide matmul speed (avx2, avx512f, avx512_bf16,
  amx_bf16... from /proc/cpuinfo; platform's names where there is none), the kernels torch picked, and
  torch's thread count. Machines of one kind are not all the same CPU, so every report says which it was;
- matmul peak: the machine's own fp32 and bf16 GEMM throughput, the denominator of MFU. bf16 counts as
  a fast path only when its measured peak is at least fp32's: then it is this machine's peak, and MFU
  against it says how far a run is from the best the CPU can do; against a slower peak MFU would
  overstate (past 100%). Measured, not read from flags: a flag says an instruction exists, not that it
  is fast (an AVX2-only Zen 3 runs bf16 at 0.33 GFLOP/s, 540x slower than fp32; a Xeon with avx512_bf16
  but no AMX at half of fp32). Without a fast path no bf16 MFU is printed, only a line saying why;
- training: tokens/s of forward + backward + AdamW for the `tiny` and `small` presets, model FLOPs per
  token (model.flops_per_token), MFU against each fast-path peak, and a dense model of equal activated
  width (the cost of MoE dispatch); where bf16 is a fast path, also the same steps under bf16 autocast
  against fp32: the measurement behind runs.autocast keeping CPU training in fp32;
- decode: one decode step of the tiny preset (batch 128, 64 cached tokens) against its roofline, its
  FLOPs (model.decode_flops) at the measured fp32 peak;
- sampler: tokens/s with the latent KV cache (greedy and sampled) vs re-running the whole sequence, and
  self-speculative MTP decoding vs plain (bench_sampler below);
- grpo: a GRPO step on the default settings split into sampling and training (on --run's model when
  given); tools/race.py races both halves against transformers' generate and TRL;
- rewards: calls/s and the worst call over rewards.HOSTILE_ANSWERS (bench_rewards below).
"""

from __future__ import annotations

import os
import platform
import random
import time
from dataclasses import replace
from pathlib import Path

import torch

import rewards
from model import build_model, count_params, decode_flops, flops_per_token, preset
from sampler import generate

# The /proc/cpuinfo flags that decide fp32/bf16 matmul speed: x86 ("flags") and arm64 ("Features").
# Informational only: whether a path is fast is measured (matmul_peaks), not read from a flag.
MATMUL_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_fp16", "amx_bf16", "amx_fp16", "asimd", "sve", "bf16")


def parse_cpuinfo(text: str) -> tuple[str | None, list[str]]:
    """(CPU model name or None, the MATMUL_FLAGS it lists) from the text of /proc/cpuinfo."""
    model, flags = None, set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip().lower()
        if key == "model name" and model is None:
            model = value.strip()
        elif key in ("flags", "features"):
            flags.update(value.split())
    return model, [f for f in MATMUL_FLAGS if f in flags]


def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """One line: CPU model, its matmul ISA features, torch's kernel level, torch version and threads, and
    the load average (other processes on the same cores slow every figure of the benchmark)."""
    if cpuinfo.is_file():
        model, flags = parse_cpuinfo(cpuinfo.read_text())
        isa = " ".join(flags) or "none of " + "/".join(MATMUL_FLAGS)
    else:  # macOS, Windows
        model, isa = None, "ISA flags unknown (no /proc/cpuinfo)"
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    load = f", load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs" if hasattr(os, "getloadavg") else ""
    return (f"{model}, {isa} (torch kernels: {torch.backends.cpu.get_cpu_capability()}); "
            f"torch {torch.__version__}, {torch.get_num_threads()} threads{load}")


def _product_seconds(a: torch.Tensor, b: torch.Tensor) -> float:
    """Wall time of one a @ b (tests replace this to stand for a fast or a slow machine)."""
    t = time.perf_counter()
    a @ b
    return time.perf_counter() - t


def _operands(dtype, n: int, max_s: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Two random n x n matrices, n halved (down to 256) while one product would take over `max_s` as
    predicted from a 256^3 probe: bf16 without native support runs at ~0.3 GFLOP/s, a minute per 2048^3
    product, and a path that slow is slow at every n."""
    a, b = torch.randn(256, 256, dtype=dtype), torch.randn(256, 256, dtype=dtype)
    probe = min(_product_seconds(a, b) for _ in range(2))  # the first call also pays one-time set-up
    while n > 256 and probe * (n / 256) ** 3 > max_s:
        n //= 2
    return torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)


def matmul_peaks(dtypes=(torch.float32, torch.bfloat16), n: int = 2048, reps: int = 10,
                 max_s: float = 0.5) -> dict:
    """{dtype: best GFLOP/s of an n x n x n matmul over `reps` rounds}. Each round times every dtype in
    turn, so all see the same load from whatever else shares the CPU: the peaks are compared."""
    operands = {d: _operands(d, n, max_s) for d in dtypes}
    best = dict.fromkeys(operands, float("inf"))
    for _ in range(reps + 1):  # one warm-up round: its slower times never win the min
        for d, (a, b) in operands.items():
            best[d] = min(best[d], _product_seconds(a, b))
    return {d: 2 * a.shape[0] ** 3 / best[d] / 1e9 for d, (a, _) in operands.items()}


def train_throughput(cfg, batch: int = 64, seq: int = 80, steps: int = 6, compile: bool = False,
                     dtype=torch.float32) -> dict:
    """Tokens/s of full training steps (forward, backward, AdamW) on random tokens, in fp32 or under
    bf16 autocast (dtype=torch.bfloat16)."""
    model = build_model(cfg, seed=0)
    step_model = torch.compile(model) if compile else model
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)  # as train.make_optimizer
    x = torch.randint(4, cfg.vocab_size, (batch, seq))
    y = torch.roll(x, -1, 1)
    times = []
    for i in range(steps + 2):  # two warm-up steps
        t = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
            out = step_model(x, y)
        out["total"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - t)
    dt = sorted(times[2:])[len(times[2:]) // 2]  # median
    fpt = flops_per_token(cfg, seq)
    return {"tokens_per_s": batch * seq / dt, "flops_per_token": fpt, "gflops": fpt * batch * seq / dt / 1e9}


def _num(x: float) -> str:
    """179, 416; 0.33, 1.9: whole numbers from 10 up, two significant digits below."""
    return f"{x:.0f}" if x >= 10 else f"{x:.2g}"


def bench_train(compile: bool = False):
    print(f"machine: {machine()}")
    measured = matmul_peaks((torch.float32, torch.bfloat16))
    p32, p16 = measured[torch.float32], measured[torch.bfloat16]
    print(f"matmul peak: fp32 {_num(p32)} GFLOP/s, bf16 {_num(p16)} GFLOP/s")
    peaks = {"fp32": p32}  # the peaks MFU is shown against: fp32, and bf16 only where it is a fast path
    if p16 >= p32:
        peaks["bf16"] = p16
    else:
        print(f"bf16: no fast path here ({_num(p16)} GFLOP/s, {_num(p32 / p16)}x slower than fp32): "
              f"MFU shown against fp32 only")
    print(f"{'model':<34}{'params':>9}{'active':>9}{'tok/s':>9}{'MFLOP/tok':>11}{'GFLOP/s':>9}"
          + "".join(f"{'MFU ' + k:>10}" for k in peaks))
    rows = [("tiny", preset("tiny")), ("small", preset("small"))]
    for name, cfg in list(rows):
        # a dense model with the same activated FFN width: (K + shared) experts x moe_inter_dim
        width = (cfg.n_activated_experts + cfg.n_shared_experts) * cfg.moe_inter_dim
        rows.append((f"{name}, dense of equal width", replace(cfg, n_routed_experts=0, n_shared_experts=0,
                                                                n_dense_layers=cfg.n_layers, inter_dim=width)))
    fp32_tokens_per_s, best_gflops = {}, 0.0
    for name, cfg in rows:
        r = train_throughput(cfg, compile=compile)
        fp32_tokens_per_s[name], best_gflops = r["tokens_per_s"], max(best_gflops, r["gflops"])
        c = count_params(cfg)
        print(f"{name:<34}{c['total'] / 1e6:>8.2f}M{c['activated'] / 1e6:>8.2f}M{r['tokens_per_s']:>9.0f}"
              f"{r['flops_per_token'] / 1e6:>11.2f}{r['gflops']:>9.1f}"
              + "".join(f"{100 * r['gflops'] / p:>9.1f}%" for p in peaks.values()))
    if best_gflops > p32:  # a training step cannot beat the GEMM peak: the load changed between the two
        print("MFU over 100%: the fp32 peak was measured under more load than the training; "
              "rerun on a quiet machine")
    # bf16 autocast training is timed only where bf16 is a fast path: with slower bf16 matmuls it trained
    # slower (runs.autocast has the numbers), and without native bf16 it would take hours
    if "bf16" in peaks:
        speed = []
        for name, cfg in rows[:2]:  # tiny, small
            r = train_throughput(cfg, compile=compile, dtype=torch.bfloat16)
            tps = r["tokens_per_s"]
            speed.append(f"{name} {tps:,.0f} tok/s ({tps / fp32_tokens_per_s[name]:.2f}x fp32)")
        print(f"bf16 autocast training: {', '.join(speed)}; runs.autocast keeps CPU training in fp32")


def bench_sampling(run: str | None = None):
    """Random-weight tiny and small models; with `run`, also that trained model on real prompts
    (where the MTP draft is worth something: acceptance on random weights is ~0)."""
    models = [(f"{name} preset (random weights)", build_model(preset(name), seed=0), None) for name in ("tiny", "small")]
    if run is not None:
        from data import eval_set, prompt
        from runs import load_run

        model, tok, _ = load_run(run)
        prompts = [tok.encode(prompt(p), bos=True) for p in eval_set("add", 64)]
        models.append((f"trained model {run} (held-out add prompts)", model, prompts))
    for name, model, prompts in models:
        print(f"sampler, {name}:")
        for row in bench_sampler(model.eval(), prompts=prompts):
            print("  " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in row.items()))
    if run is not None:
        r = bench_speculative(model, tok, prompts[:32])
        print(f"speculative, {run}, batch 1, {len(prompts[:32])} held-out prompts answered in full (stop at "
              f"</answer>, {r['tokens'] / len(prompts[:32]):.0f} tokens each): {r['speedup']:.2f}x plain greedy "
              f"({r['spec_tok_s']:.0f} vs {r['plain_tok_s']:.0f} tok/s), acceptance {r['acceptance']:.1%}, "
              f"identical output {r['identical']}")
        print(f"  a step's parts, in plain steps: verify (2 tokens) {r['verify']:.2f}, MTP draft {r['draft']:.2f}: "
              f"the speed-up can reach at most (1 + acceptance) / (verify + draft) = {r['ceiling']:.2f}x")


def bench_reward_fns():
    r = bench_rewards()
    print("rewards: " + ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.items()))


def main(only: str | None = None, compile: bool = False, run: str | None = None):
    if only in (None, "train"):
        bench_train(compile)
    if only in (None, "decode"):
        bench_decode()
    if only in (None, "sampler"):
        bench_sampling(run)
    if only in (None, "grpo"):
        bench_grpo(run)
    if only in (None, "rewards"):
        bench_reward_fns()


# --------------------------------------------------------------------------------------------
# Decoding, the sampler, a GRPO step and the rewards
# --------------------------------------------------------------------------------------------


@torch.no_grad()
def decode_step(model, batch: int = 128, cached: int = 64, reps: int = 20) -> dict:
    """Best wall time of one absorbed decode step: `batch` rows, one new token each, over `cached` columns
    already in the cache (random tokens: the cost does not depend on them), and its FLOPs."""
    cfg = model.cfg
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(0)
    cache = model.new_cache(batch, cached + 1)
    model(torch.randint(cfg.vocab_size, (batch, cached), generator=gen), cache=cache)
    token = torch.randint(cfg.vocab_size, (batch, 1), generator=gen)
    best = float("inf")
    for _ in range(reps + 3):  # three warm-up steps
        cache.len, cache.n_real[:] = cached, cached  # the same step again
        t = time.perf_counter()
        model(token, cache=cache)
        best = min(best, time.perf_counter() - t)
    model.train(was_training)
    return {"seconds": best, "flops": decode_flops(cfg, batch, cached)}


def bench_decode(batch: int = 128, cached: int = 64):
    """One decode step of the tiny preset against its roofline: its FLOPs at the measured fp32 peak."""
    peak = matmul_peaks((torch.float32,))[torch.float32]
    r = decode_step(build_model(preset("tiny"), seed=0), batch, cached)
    roofline = r["flops"] / (peak * 1e9)
    print(f"decode step (tiny, batch {batch}, {cached} cached tokens): {r['seconds'] * 1e3:.2f} ms for "
          f"{r['flops'] / 1e6:.0f} MFLOP = {r['flops'] / r['seconds'] / 1e9:.1f} GFLOP/s; roofline at the fp32 "
          f"peak ({_num(peak)} GFLOP/s) {roofline * 1e3:.2f} ms: {r['seconds'] / roofline:.1f}x the roofline")


def bench_grpo(run: str | None = None, steps: int = 3, **overrides):
    """GRPO steps on the default settings (train_grpo.GRPOConfig), split into sampling (rollout and
    rewards) and training (grpo_update); median of `steps` after one warm-up step. On `run` (a trained
    base: completions of realistic lengths) or else a random tiny model (every completion max length).
    `overrides` change GRPOConfig fields (the tests run a small step)."""
    from data import default_tokenizer
    from runs import World, load_run
    from train_grpo import GRPOConfig, grpo_update, make_optimizer, rollout

    if run is not None:
        model, tok, _ = load_run(run)
        name = f"base {run}"
    else:
        tok = default_tokenizer()
        model, name = build_model(preset("tiny", vocab_size=tok.vocab_size), seed=0), "random tiny model"
    cfg = GRPOConfig(**overrides)
    opt, cpu = make_optimizer(model, cfg), torch.device("cpu")
    sampling, training, tokens = [], [], []
    for step in range(steps + 1):
        t0 = time.perf_counter()
        ro, *_ = rollout(model, tok, cfg, step, cpu)
        t1 = time.perf_counter()
        grpo_update(model, None, opt, ro, None, cfg, step, cpu, World())
        t2 = time.perf_counter()
        if step:  # the first step warms up
            sampling.append(t1 - t0), training.append(t2 - t1), tokens.append(int(ro.completion_mask.sum()))
    med = lambda xs: sorted(xs)[len(xs) // 2]  # noqa: E731
    s, t = med(sampling), med(training)
    print(f"grpo step ({name}, {cfg.prompts_per_step} prompts x {cfg.num_generations} samples, "
          f"{med(tokens) / (cfg.prompts_per_step * cfg.num_generations):.0f} tokens a completion): "
          f"{s + t:.2f} s = sampling {s:.2f} s + training {t:.2f} s")


@torch.no_grad()
def _greedy_no_cache(model, prompts: list[list[int]], new_tokens: int, pad_id: int) -> torch.Tensor:
    """The baseline: re-run the whole left-padded sequence every step, no cache. -> [N, L]."""
    device = next(model.parameters()).device
    P = max(len(p) for p in prompts)
    seq = torch.tensor([[pad_id] * (P - len(p)) + p for p in prompts], device=device)  # [N, P]
    mask = torch.tensor([[False] * (P - len(p)) + [True] * len(p) for p in prompts], device=device)
    for _ in range(new_tokens):
        nxt = model(seq, pad_mask=mask)[:, -1].argmax(-1, keepdim=True)  # [N, 1]
        seq, mask = torch.cat([seq, nxt], 1), torch.cat([mask, torch.ones_like(nxt, dtype=torch.bool)], 1)
    return seq[:, P:]


def bench_sampler(model, batch_sizes=(1, 16, 64), new_tokens: int = 128, prompt_len: int = 30,
                  no_cache_max_batch: int = 16, seed: int = 0, prompts: list[list[int]] | None = None) -> list[dict]:
    """Decode tokens/s: greedy with the cache, sampled (temperature 1) with the cache, greedy re-running the
    full sequence each step (skipped above `no_cache_max_batch` rows: quadratic and slow), and speculative
    vs plain greedy (with the MTP acceptance rate). No EOS, so every row makes exactly `new_tokens` tokens. Random prompts
    unless `prompts` (say, real task prompts for a trained model) are given."""
    rng = random.Random(seed)
    was_training = model.training
    model.eval()
    W = model.cfg.vocab_size
    rows = []
    for B in batch_sizes:
        batch = ([[rng.randrange(W) for _ in range(prompt_len - rng.randrange(4))] for _ in range(B)]
                 if prompts is None else [prompts[i % len(prompts)] for i in range(B)])
        kw = dict(max_new_tokens=new_tokens, temperature=0.0, eos_id=-1, pad_id=0)
        row = {"batch": B, "new_tokens": new_tokens}
        t0 = time.perf_counter()
        plain = generate(model, batch, **kw)
        row["cached_tok_s"] = B * new_tokens / (time.perf_counter() - t0)
        t0 = time.perf_counter()
        generate(model, batch, **dict(kw, temperature=1.0), generator=torch.Generator().manual_seed(seed))
        row["sampled_tok_s"] = B * new_tokens / (time.perf_counter() - t0)
        if B <= no_cache_max_batch:
            t0 = time.perf_counter()
            _greedy_no_cache(model, batch, new_tokens, pad_id=0)
            row["no_cache_tok_s"] = B * new_tokens / (time.perf_counter() - t0)
            row["cache_speedup"] = row["cached_tok_s"] / row["no_cache_tok_s"]
        else:
            row["no_cache_tok_s"] = row["cache_speedup"] = None
            row["note"] = f"no-cache run skipped above batch {no_cache_max_batch} (quadratic)"
        if model.cfg.mtp_depth >= 1:
            t0 = time.perf_counter()
            spec = generate(model, batch, speculative=True, **kw)
            row["spec_tok_s"] = B * new_tokens / (time.perf_counter() - t0)
            row["spec_speedup"] = row["spec_tok_s"] / row["cached_tok_s"]
            row["acceptance"] = spec.accepted / max(spec.proposed, 1)
            row["spec_matches_plain"] = bool(torch.equal(spec.tokens, plain.tokens))
        rows.append(row)
    model.train(was_training)
    return rows


@torch.no_grad()
def bench_speculative(model, tok, prompts: list[list[int]]) -> dict:
    """Self-speculative vs plain greedy decoding at batch 1, each prompt answered in full (EOS or
    "</answer>" stops it, as in evaluation): tokens/s of both, the MTP draft's acceptance, whether the
    outputs are identical, and what one speculative step costs in plain steps: the verify forward (2 tokens)
    and the MTP draft. A step makes 1 + acceptance tokens for verify + draft plain steps' time, which bounds
    the speed-up at (1 + acceptance) / (verify + draft)."""
    from sampler import _mtp

    kw = dict(max_new_tokens=96, temperature=0.0, eos_id=tok.eos_id, pad_id=tok.pad_id,
              stop_sequences=[tok.encode("</answer>")])
    plain_s = spec_s = 0.0
    proposed = accepted = tokens = 0
    identical = True
    for p in prompts:
        t0 = time.perf_counter()
        plain = generate(model, [p], **kw)
        t1 = time.perf_counter()
        spec = generate(model, [p], speculative=True, **kw)
        plain_s, spec_s = plain_s + t1 - t0, spec_s + time.perf_counter() - t1
        proposed, accepted, tokens = proposed + spec.proposed, accepted + spec.accepted, tokens + int(plain.mask.sum())
        identical &= torch.equal(plain.tokens, spec.tokens)
    # the parts of one step at batch 1, 30 tokens in the caches, best of 20
    ids = torch.tensor([prompts[0][:30]])
    n = ids.shape[1]
    cache, mcache = model.new_cache(1, n + 2), model.new_cache(1, n + 2, mtp=True)
    model.eval()
    model(ids, cache=cache)
    _mtp(model, mcache, torch.zeros(1, n - 1, model.cfg.dim), ids[:, 1:], torch.ones(1, n - 1, dtype=torch.bool))

    def best(fn):
        times = []
        for _ in range(20):
            cache.len = mcache.len = n - 1
            cache.n_real[:] = mcache.n_real[:] = n - 1
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        return min(times)

    one = best(lambda: model(ids[:, :1], cache=cache))
    verify = best(lambda: model(ids[:, :2], cache=cache, return_hidden=True)) / one
    draft = best(lambda: _mtp(model, mcache, torch.zeros(1, 1, model.cfg.dim), ids[:, :1],
                              torch.ones(1, 1, dtype=torch.bool))) / one
    acceptance = accepted / max(proposed, 1)
    return {"plain_tok_s": tokens / plain_s, "spec_tok_s": tokens / spec_s, "speedup": plain_s / spec_s,
            "acceptance": acceptance, "identical": identical, "tokens": tokens, "verify": verify, "draft": draft,
            "ceiling": (1 + acceptance) / (verify + draft)}


def bench_rewards(n: int = 1000, seed: int = 0) -> dict:
    """Throughput of `reward` on a mix of right, wrong, malformed and countdown completions, and the
    slowest single call over rewards.HOSTILE_ANSWERS (each wrapped in a well-formed completion)."""
    rng = random.Random(seed)
    cases = []
    for _ in range(n):
        a, b = rng.randrange(10_000), rng.randrange(10_000)
        steps = " ".join(str(rng.randrange(10)) for _ in range(rng.randrange(200)))
        think = f"<think>{a}+{b} {steps}</think>"
        kind = rng.random()
        if kind < 0.4:
            cases.append((f"{think} <answer>{a + b}</answer>\n", str(a + b), None))
        elif kind < 0.7:
            cases.append((f"{think}<answer>{a + b + rng.randrange(1, 9)}</answer>", str(a + b), None))
        elif kind < 0.9:
            cases.append((f"{think}<answer>{a + b}", str(a + b), None))  # truncated
        else:
            cases.append((f"{think}<answer>(3*25-50)*7</answer>", "175", (3, 7, 25, 50)))
    start = time.perf_counter()
    for completion, ref, numbers in cases:
        rewards.reward(completion, ref, numbers)
    elapsed = time.perf_counter() - start
    worst, worst_case = 0.0, ""
    for case in rewards.HOSTILE_ANSWERS:
        completion = f"<think>x</think><answer>{case}</answer>"
        t0 = time.perf_counter()
        rewards.reward(completion, "6905")
        rewards.reward(completion, "175", (3, 7, 25, 50))
        rewards.answers_equal(case, "6905")
        took = time.perf_counter() - t0
        if took > worst:
            worst, worst_case = took, case[:40]
    return {"calls_per_s": round(n / elapsed), "n_completions": n,
            "adversarial_worst_s": worst, "adversarial_worst_case": worst_case}
