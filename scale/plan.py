"""The memory planner: would a preset train under pure FSDP on G GPUs of M GiB, and if not, why not.

    python -m scale.plan --preset deepseek-v3-671b --gpus 2048 --gpu-mem 80
    python -m scale.plan --preset small --gpus 2 --gpu-mem 24

Per GPU, for what scale/dist.py does (FSDP2 / ZeRO-3 with MixedPrecisionPolicy(bf16, fp32)):

    parameters   fp32 shards (the master weights)            4 B x P / G
    gradients    fp32 shards (reduce-scattered in fp32)       4 B x P / G
    AdamW        exp_avg and exp_avg_sq, fp32 shards          8 B x P / G
    gathered     bf16 copy of the unit being computed and of the next one (prefetch): 2 x 2 B x unit
    activations  per token, bf16: every tensor autograd keeps (no recomputation), or only each
                 block's input (full recomputation) plus one block's tensors while it is recomputed
    rollouts     the MLA KV cache (model.py's count: latent + rotary key per layer and token), and
                 a whole bf16 copy of the weights, which a rank needs to sample on its own

P counts the MTP modules too (they are trained). The parameter counts and cache bytes come from
model.py's count_params (the model built on the meta device); the activation counts follow the
shapes of model.py's MLA, MoE and MLP, with attention by a fused kernel (no T x T scores kept), and
are estimates (a framework adds workspace and fragmentation). Communication per step for FSDP: an
all-gather of the bf16 weights in the forward and again in the backward, a reduce-scatter of fp32
gradients: about 8 B x P per GPU, whatever G.
"""

from __future__ import annotations

import argparse
import sys

from model import ModelConfig, activation_numbers, count_params, preset
from runs import R1Error

GiB = 2 ** 30
BF16, FP32 = 2, 4


def plan(cfg: ModelConfig, gpus: int, gpu_mem_gib: float, *, tokens_per_gpu: int = 4096, rollout_seqs: int = 16,
         rollout_len: int = 32768, net_gbs: float = 50.0, counts: dict | None = None) -> dict:
    """Every figure in bytes per GPU (see the module docstring); `counts` = count_params(cfg) if given."""
    if gpus < 1 or gpu_mem_gib <= 0 or tokens_per_gpu < 1:
        raise R1Error("--gpus, --gpu-mem and --tokens-per-gpu must be > 0")
    c = counts or count_params(cfg)
    P = c["total"] + c["mtp"]
    n_moe = (cfg.n_layers - cfg.n_dense_layers) if cfg.n_routed_experts else 0
    expert = 3 * cfg.dim * cfg.moe_inter_dim
    mla = (P - c["embedding"] - c["head"] - c["mtp"]  # the main blocks' parameters ...
           - n_moe * (cfg.n_routed_experts * expert + 3 * cfg.dim * cfg.n_shared_experts * cfg.moe_inter_dim
                      + cfg.n_routed_experts * cfg.dim)
           - (cfg.n_layers - n_moe) * 3 * cfg.dim * cfg.inter_dim - cfg.dim) // cfg.n_layers  # ... less FFNs, final norm
    moe_block = mla + cfg.n_routed_experts * expert + 3 * cfg.dim * cfg.n_shared_experts * cfg.moe_inter_dim \
        + cfg.n_routed_experts * cfg.dim
    unit = max(moe_block if n_moe else 0, mla + 3 * cfg.dim * cfg.inter_dim, c["embedding"] + c["head"])
    layers = cfg.n_layers + cfg.mtp_depth
    per_token_full = BF16 * ((cfg.n_layers - n_moe) * activation_numbers(cfg, False)
                             + (n_moe + cfg.mtp_depth) * activation_numbers(cfg, n_moe > 0) + cfg.vocab_size)
    per_token_recompute = BF16 * (layers * cfg.dim + activation_numbers(cfg, n_moe > 0) + cfg.vocab_size)
    out = {
        "params": P, "total": c["total"], "mtp": c["mtp"], "gpus": gpus, "gpu_mem": gpu_mem_gib * GiB,
        "param_shards": FP32 * P / gpus, "grad_shards": FP32 * P / gpus, "adam": 2 * FP32 * P / gpus,
        "gathered": 2 * BF16 * unit, "unit": unit,
        "act_per_token": per_token_full, "act_per_token_recompute": per_token_recompute,
        "act": per_token_full * tokens_per_gpu, "act_recompute": per_token_recompute * tokens_per_gpu,
        "tokens_per_gpu": tokens_per_gpu,
        "kv_per_token": c["kv_cache_bytes_bf16"], "kv": c["kv_cache_bytes_bf16"] * rollout_seqs * rollout_len,
        "rollout_seqs": rollout_seqs, "rollout_len": rollout_len, "bf16_weights": BF16 * P,
        "comm_per_step": (2 * BF16 + FP32) * P * (gpus - 1) / gpus, "net_gbs": net_gbs,
        "activated": c["activated"] + c["mtp_activated"],
    }
    out["states"] = out["param_shards"] + out["grad_shards"] + out["adam"]
    out["train"] = out["states"] + out["gathered"] + out["act_recompute"]
    out["train_fits"] = out["train"] <= out["gpu_mem"]
    out["rollout"] = out["bf16_weights"] + out["kv"]
    out["rollout_fits"] = out["rollout"] <= out["gpu_mem"]
    return out


def report(name: str, p: dict) -> str:
    g = lambda b: f"{b / GiB:10.2f} GiB"  # noqa: E731
    fits = lambda ok: "fits" if ok else "does NOT fit"  # noqa: E731
    lines = [
        f"{name} on {p['gpus']} GPUs of {p['gpu_mem'] / GiB:.0f} GiB, pure FSDP (ZeRO-3), bf16 compute / fp32 master",
        f"  parameters P             {p['params'] / 1e9:10.3f} B   ({p['total']:,} + MTP {p['mtp']:,})",
        "per GPU, training:",
        f"  parameter shards (fp32)  {g(p['param_shards'])}   4 B x P / {p['gpus']}",
        f"  gradient shards (fp32)   {g(p['grad_shards'])}   4 B x P / {p['gpus']}",
        f"  AdamW m and v (fp32)     {g(p['adam'])}   8 B x P / {p['gpus']}",
        f"  gathered bf16 units      {g(p['gathered'])}   2 x 2 B x {p['unit'] / 1e9:.3f} B (largest unit + prefetch)",
        f"  activations per token    {p['act_per_token'] / 2**20:10.2f} MiB without recomputation, "
        f"{p['act_per_token_recompute'] / 2**20:.2f} MiB with full recomputation",
        f"  activations, {p['tokens_per_gpu']} tokens  {g(p['act'])}   without recomputation",
        f"  activations, {p['tokens_per_gpu']} tokens  {g(p['act_recompute'])}   with full recomputation",
        f"  total (recomputation)    {g(p['train'])}   {fits(p['train_fits'])}",
        f"  traffic per step         {p['comm_per_step'] / 1e9:10.1f} GB per GPU (bf16 all-gather x 2, fp32 "
        f"reduce-scatter): {p['comm_per_step'] / (p['net_gbs'] * 1e9):.1f} s at {p['net_gbs']:.0f} GB/s",
        "per GPU, GRPO rollouts (each rank samples alone, on a whole bf16 copy):",
        f"  bf16 weights             {g(p['bf16_weights'])}   2 B x P",
        f"  MLA KV cache             {g(p['kv'])}   {p['kv_per_token']:,} B/token x {p['rollout_seqs']} "
        f"sequences x {p['rollout_len']} tokens",
        f"  total                    {g(p['rollout'])}   {fits(p['rollout_fits'])}",
    ]
    if not p["train_fits"] or not p["rollout_fits"]:
        lines.append("verdict: pure FSDP cannot run this" + ("" if p["train_fits"] else ": the training state alone "
                     "does not fit") + ("" if p["rollout_fits"] else "; rollouts need weights split across GPUs"))
    else:
        lines.append("verdict: fits in memory under pure FSDP")
    if p["activated"] < p["params"] / 4:
        lines += [f"  and only {p['activated'] / 1e9:.1f} B of the {p['params'] / 1e9:.1f} B parameters work on each "
                  f"token, yet FSDP moves all of them",
                  "  to every GPU twice a step. DeepSeek-V3 kept the experts in place instead: 64-way expert "
                  "parallelism over 8 nodes",
                  "  (tokens travel by all-to-all, to at most 4 nodes each), 16-way pipeline parallelism (DualPipe), "
                  "ZeRO-1 data",
                  "  parallelism, no tensor parallelism, on 2048 H800s (V3 §3.2); R1's rollouts ran on vLLM "
                  "workers with",
                  "  expert parallelism and MTP self-speculative decoding (R1 Supp. B.1)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    from model import PRESETS

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--preset", default="deepseek-v3-671b", help=f"one of {', '.join(PRESETS)}")
    ap.add_argument("--gpus", type=int, default=2048)
    ap.add_argument("--gpu-mem", type=float, default=80, help="GiB per GPU")
    ap.add_argument("--tokens-per-gpu", type=int, default=4096, help="tokens of a micro-batch on one GPU")
    ap.add_argument("--rollout-seqs", type=int, default=16, help="sequences one GPU samples at once")
    ap.add_argument("--rollout-len", type=int, default=32768, help="tokens per sequence (R1: 32,768)")
    ap.add_argument("--net-gbs", type=float, default=50, help="network GB/s per GPU (400 Gb/s InfiniBand = 50)")
    args = ap.parse_args(argv)
    try:
        if args.preset not in PRESETS:
            raise R1Error(f"unknown preset '{args.preset}'; choose from {', '.join(PRESETS)}")
        p = plan(preset(args.preset), args.gpus, args.gpu_mem, tokens_per_gpu=args.tokens_per_gpu,
                 rollout_seqs=args.rollout_seqs, rollout_len=args.rollout_len, net_gbs=args.net_gbs)
    except R1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(report(args.preset, p))
    return 0


if __name__ == "__main__":
    sys.exit(main())
