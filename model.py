"""A DeepSeek-V3 decoder from scratch: MLA, DeepSeekMoE and multi-token prediction.

This file is the architecture of DeepSeek-V3 (and of R1, which is the same network), written so
that the tiny default trains on a CPU in minutes and the `deepseek-v3-671b` preset describes the
real model exactly (its parameter count and KV-cache size come out of the same code).

    section of the V3 report            class here
    2.1.1 Multi-head latent attention   MLA          (naive and "absorbed" paths, latent KV cache)
    2.1.2 DeepSeekMoE                   Gate, Expert, MoE   (sigmoid routing, group-limited top-k,
          aux-loss-free balancing                           bias updated from expert loads)
          sequence-wise balance loss    MoE.balance_loss
    2.2   Multi-token prediction        MTP          (sequential modules sharing embedding and head)
    4.3   YaRN long-context RoPE        precompute_rope

Names follow the reference implementation (deepseek-ai/DeepSeek-V3 `inference/model.py`) so that
code, paper and checkpoint keys line up: wq_a, q_norm, wq_b, wkv_a, kv_norm, wkv_b, wo, attn, ffn,
attn_norm, ffn_norm, experts, shared_experts, enorm, hnorm, eh_proj.

This file imports torch and the standard library only: no distributed code (scale/ wraps it from outside).

What differs from DeepSeek-V3, on purpose (everything else follows the reference code; the logits equal
transformers' DeepseekV3 to 1e-4, tests/test_interop.py):
- Initialisation: normal(0, 0.02) with GPT-2's 1/sqrt(2 L) on the residual projections, not V3's 0.006
  (a std chosen for d = 7168; the toy widths here, d = 128-256, train with GPT-2's).
- gamma (bias_update_speed) and lambda (mtp_lambda) are constants. V3 sets gamma to 0 for its last 0.5T of
  14.8T tokens and lowers lambda from 0.3 to 0.1 after 10T; a toy run of ~10^7 tokens never reaches
  either switch, so a schedule would be dead code here.
- The V2-Lite preset keeps V2's softmax routing but none of V2's auxiliary balance losses (expert- and
  device-level), which are not built here; it gets neither V3's bias nor the sequence-wise loss either
  (bias_update_speed = seq_aux_alpha = 0), so it routes without balancing. It exists to count parameters
  and KV cache, and to load V2-style checkpoints.
- Nothing of FP8 training, node-limited routing across machines, or DualPipe (V3 §3): those are
  systems work; scale/ shows FSDP2 instead.

Shape legend: B batch, T new tokens, S key positions (cache + new), D model dim, H heads,
C kv latent rank (kv_lora_rank), Q query latent rank, N nope head dim, R rope head dim,
V value head dim, E routed experts, K experts per token, F expert hidden, L layers, W vocab.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

import torch
import torch.nn as nn
import torch.nn.functional as F


# --------------------------------------------------------------------------------------------
# Config
# --------------------------------------------------------------------------------------------


@dataclass
class ModelConfig:
    """Field names are those of the reference `ModelArgs`; defaults are the CPU `tiny` preset."""

    vocab_size: int = 128  # set from the tokenizer when a run is built
    dim: int = 128  # model width D
    inter_dim: int = 384  # hidden size of the dense SwiGLU FFN (first n_dense_layers layers)
    moe_inter_dim: int = 128  # hidden size of one expert F
    n_layers: int = 4
    n_dense_layers: int = 1  # the first k layers use a dense FFN, the rest MoE
    n_heads: int = 4
    # MoE
    n_routed_experts: int = 8  # E (0 = dense model: every layer uses the dense FFN)
    n_shared_experts: int = 1  # fused into one SwiGLU of width n_shared_experts * moe_inter_dim
    n_activated_experts: int = 2  # K, top-k per token
    n_expert_groups: int = 1  # groups for group-limited routing (V3: 8, one per node)
    n_limited_groups: int = 1  # groups a token may use (V3: 4)
    score_func: str = "sigmoid"  # "sigmoid" (V3) or "softmax" (V2)
    route_scale: float = 1.0  # multiplies the routed gates (V3: 2.5)
    bias_update_speed: float = 1e-3  # gamma of aux-loss-free balancing (V3: 0.001)
    seq_aux_alpha: float = 1e-4  # alpha of the complementary sequence-wise balance loss
    # MLA
    q_lora_rank: int = 0  # Q; 0 = full-rank query projection (V2-Lite)
    kv_lora_rank: int = 64  # C
    qk_nope_head_dim: int = 32  # N
    qk_rope_head_dim: int = 16  # R
    v_head_dim: int = 32  # V
    # RoPE / YaRN (YaRN is active only when max_seq_len > original_seq_len)
    max_seq_len: int = 256
    original_seq_len: int = 256
    rope_theta: float = 10000.0
    rope_factor: float = 40.0
    beta_fast: int = 32
    beta_slow: int = 1
    mscale: float = 1.0
    # Multi-token prediction
    mtp_depth: int = 1  # D sequential MTP modules (V3: 1); 0 = none
    mtp_lambda: float = 0.3  # weight of the MTP loss (V3: 0.3, later 0.1)
    norm_eps: float = 1e-6

    def __post_init__(self):
        def bad(name, why):
            raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}: {why}")

        for name in ("vocab_size", "dim", "n_layers", "n_heads", "kv_lora_rank", "qk_nope_head_dim",
                     "v_head_dim", "max_seq_len", "original_seq_len", "inter_dim"):
            if getattr(self, name) <= 0:
                bad(name, "must be > 0")
        if self.qk_rope_head_dim <= 0 or self.qk_rope_head_dim % 2:
            bad("qk_rope_head_dim", "must be a positive even number (RoPE rotates pairs)")
        if not 0 <= self.n_dense_layers <= self.n_layers:
            bad("n_dense_layers", f"must be in [0, n_layers={self.n_layers}]")
        if self.q_lora_rank < 0:
            bad("q_lora_rank", "must be >= 0 (0 = full-rank query)")
        if self.mtp_depth < 0:
            bad("mtp_depth", "must be >= 0")
        if self.score_func not in ("sigmoid", "softmax"):
            bad("score_func", "must be 'sigmoid' or 'softmax'")
        if self.n_routed_experts < 0:
            bad("n_routed_experts", "must be >= 0")
        if self.n_routed_experts > 0:
            if self.moe_inter_dim <= 0:
                bad("moe_inter_dim", "must be > 0")
            if not 1 <= self.n_activated_experts <= self.n_routed_experts:
                bad("n_activated_experts", f"must be in [1, n_routed_experts={self.n_routed_experts}]")
            if self.n_expert_groups < 1 or self.n_routed_experts % self.n_expert_groups:
                bad("n_expert_groups", f"must divide n_routed_experts={self.n_routed_experts}")
            if not 1 <= self.n_limited_groups <= self.n_expert_groups:
                bad("n_limited_groups", f"must be in [1, n_expert_groups={self.n_expert_groups}]")
            per_group = self.n_routed_experts // self.n_expert_groups
            if self.n_activated_experts > self.n_limited_groups * per_group:
                bad("n_activated_experts", "exceeds the experts reachable in n_limited_groups groups")
            if self.n_expert_groups > 1 and self.score_func == "sigmoid" and per_group < 2:
                bad("n_expert_groups", "sigmoid routing scores a group by its top-2 experts: "
                    "each group needs >= 2 experts")

    @property
    def qk_head_dim(self) -> int:
        return self.qk_nope_head_dim + self.qk_rope_head_dim

    @property
    def is_moe(self) -> bool:
        return self.n_routed_experts > 0 and self.n_dense_layers < self.n_layers

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ModelConfig fields: {', '.join(unknown)}")
        return cls(**d)


PRESETS: dict[str, ModelConfig] = {
    # Trains on 2 CPU cores in minutes; every mechanism of V3 is alive.
    "tiny": ModelConfig(),
    # Larger CPU / laptop-GPU size: low-rank queries and group-limited routing switched on.
    "small": ModelConfig(dim=256, inter_dim=768, moe_inter_dim=256, n_layers=6, n_heads=8,
                         n_routed_experts=16, n_activated_experts=2, n_expert_groups=4,
                         n_limited_groups=2, route_scale=2.5, q_lora_rank=128, kv_lora_rank=128,
                         qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32),
    # Dense (no MoE, no MTP) student for distillation: smaller than `tiny`.
    "student": ModelConfig(dim=96, inter_dim=288, n_layers=3, n_dense_layers=3, n_heads=4,
                           n_routed_experts=0, n_shared_experts=0, n_activated_experts=0,
                           kv_lora_rank=48, qk_nope_head_dim=24, qk_rope_head_dim=12,
                           v_head_dim=24, mtp_depth=0),
    # DeepSeek-V2-Lite (the 16B config of the V3 repo): softmax routing, full-rank queries.
    "deepseek-v2-lite-16b": ModelConfig(
        vocab_size=102400, dim=2048, inter_dim=10944, moe_inter_dim=1408, n_layers=27,
        n_dense_layers=1, n_heads=16, n_routed_experts=64, n_shared_experts=2,
        n_activated_experts=6, n_expert_groups=1, n_limited_groups=1, score_func="softmax",
        route_scale=1.0, q_lora_rank=0, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, max_seq_len=16384, original_seq_len=4096,
        mscale=0.707, mtp_depth=0, bias_update_speed=0.0, seq_aux_alpha=0.0),  # V2 balanced by aux losses
                                                                                # (not built here): see the docstring
    # DeepSeek-V3 / R1 (671B): the config_671B.json of the reference repo, plus its MTP module.
    "deepseek-v3-671b": ModelConfig(
        vocab_size=129280, dim=7168, inter_dim=18432, moe_inter_dim=2048, n_layers=61,
        n_dense_layers=3, n_heads=128, n_routed_experts=256, n_shared_experts=1,
        n_activated_experts=8, n_expert_groups=8, n_limited_groups=4, score_func="sigmoid",
        route_scale=2.5, q_lora_rank=1536, kv_lora_rank=512, qk_nope_head_dim=128,
        qk_rope_head_dim=64, v_head_dim=128, max_seq_len=16384, original_seq_len=4096,
        mtp_depth=1, mtp_lambda=0.3),
}


def preset(name: str, **overrides) -> ModelConfig:
    if name not in PRESETS:
        raise ValueError(f"unknown preset '{name}'; choose from {', '.join(PRESETS)}")
    return replace(PRESETS[name], **overrides)


# --------------------------------------------------------------------------------------------
# Building blocks
# --------------------------------------------------------------------------------------------


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.empty(dim))

    def forward(self, x):
        # normalise in fp32 (as the reference does), return in the input dtype
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return (xf * self.weight.float()).to(x.dtype)


def precompute_rope(cfg: ModelConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin tables [max_seq_len, R/2] for the decoupled rope dims, with YaRN (V3 §4.3).

    YaRN keeps the fast-rotating pairs (wavelength well inside the original context) as they are,
    slows the slow ones by `rope_factor`, and blends linearly in between.
    """
    R = cfg.qk_rope_head_dim
    freqs = 1.0 / (cfg.rope_theta ** (torch.arange(0, R, 2, dtype=torch.float64) / R))  # [R/2]
    if cfg.max_seq_len > cfg.original_seq_len:
        def correction_dim(rotations):  # the pair index that makes `rotations` turns in the context
            return R * math.log(cfg.original_seq_len / (rotations * 2 * math.pi)) / (2 * math.log(cfg.rope_theta))
        low = max(math.floor(correction_dim(cfg.beta_fast)), 0)
        high = min(math.ceil(correction_dim(cfg.beta_slow)), R - 1)
        ramp = ((torch.arange(R // 2, dtype=torch.float64) - low) / max(high - low, 1e-3)).clamp(0, 1)
        freqs = freqs / cfg.rope_factor * ramp + freqs * (1 - ramp)
    angles = torch.outer(torch.arange(cfg.max_seq_len, dtype=torch.float64), freqs)  # [S, R/2]
    return angles.cos().float(), angles.sin().float()


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate consecutive pairs (2i, 2i+1) of the last dim, the reference's interleaved layout.

    x [B, T, ..., R]; cos, sin [B, T, R/2] (already gathered at each token's position).
    A pair (a, b) is the complex number a + ib, and the rotation multiplies it by cos + i sin, as the
    reference does: one complex product (forward and backward) instead of six real elementwise ops
    and a stack, five times faster at the training sizes.
    """
    rot = torch.complex(cos, sin)  # [B, T, R/2]
    if x.dim() == 4:  # [B, T, H, R]: the same rotation for every head
        rot = rot.unsqueeze(2)
    xc = torch.view_as_complex(x.float().unflatten(-1, (-1, 2)).contiguous())  # [..., R/2]
    return torch.view_as_real(xc * rot).flatten(-2).to(x.dtype)


# --------------------------------------------------------------------------------------------
# KV cache: only the normalised latent and the rotary key (V3 §2.1.1, eq. 1-5)
# --------------------------------------------------------------------------------------------


class KVCache:
    """The caller-owned MLA cache. Per layer one preallocated buffer kv [B, S_max, C + R]: the
    normalised latent (first C numbers) and the rotary key (last R) of every token, written in place.

    That is kv_lora_rank + qk_rope_head_dim numbers per token per layer, instead of
    H * (N + R + V) for a standard per-head K/V cache: the reason MLA exists. Latent and rotary key
    sit side by side so that the absorbed attention reads both with one matmul (MLA.forward).
    Rows may be left-padded (prompts of different lengths): `valid` marks real key columns and
    `n_real` is the number of real tokens per row, which is also the next rotary position.
    """

    def __init__(self, cfg: ModelConfig, batch: int, max_len: int, device=None, dtype=torch.float32,
                 n_layers: int | None = None):
        n_layers = cfg.n_layers if n_layers is None else n_layers  # the MTP modules get their own
        self.max_len, self.rank = max_len, cfg.kv_lora_rank
        self.kv = [torch.zeros(batch, max_len, cfg.kv_lora_rank + cfg.qk_rope_head_dim, device=device, dtype=dtype)
                   for _ in range(n_layers)]
        self.valid = torch.zeros(batch, max_len, dtype=torch.bool, device=device)
        self.n_real = torch.zeros(batch, dtype=torch.long, device=device)
        self.len = 0  # columns written so far (same for every row)

    @property
    def latent(self) -> list[torch.Tensor]:
        """Per layer, the latent half of the buffer [B, S_max, C] (a view)."""
        return [t[..., :self.rank] for t in self.kv]

    @property
    def k_rope(self) -> list[torch.Tensor]:
        """Per layer, the rotary-key half of the buffer [B, S_max, R] (a view)."""
        return [t[..., self.rank:] for t in self.kv]

    @property
    def batch(self) -> int:
        return self.valid.shape[0]

    def numel_per_token(self) -> int:
        return sum(t.shape[-1] for t in self.kv)

    def index_select(self, rows: torch.Tensor) -> "KVCache":
        """A new cache whose row i is row rows[i] of this one: one prefill, copied to G samples."""
        new = object.__new__(KVCache)
        new.max_len, new.rank, new.len = self.max_len, self.rank, self.len
        new.kv = [t.index_select(0, rows) for t in self.kv]
        new.valid = self.valid.index_select(0, rows)
        new.n_real = self.n_real.index_select(0, rows)
        return new


# --------------------------------------------------------------------------------------------
# Multi-head latent attention (V3 §2.1.1, V2 §2.1.2-2.1.3)
# --------------------------------------------------------------------------------------------


# The two latent norms use eps 1e-6 whatever norm_eps says: the reference code and transformers fix it
# there (and only there), so a checkpoint made with another norm_eps gives the same logits in both.
LATENT_NORM_EPS = 1e-6


def attention(q, k, v, mask, scale: float):
    """Softmax attention, written out: q [B, H, T, K], k [B, H, S, K], v [B, H, S, V] -> [B, H, T, V].

    mask [B, 1, T, S] bool (True = attend), or None: causal, the T queries being the last T of the S
    positions. Not F.scaled_dot_product_attention because MLA's keys (N+R dims) and values (V dims)
    differ in width, which CPU's fused kernel refuses: torch then falls back to a math path that scales q
    and k separately and checks every row for being all-masked, three times the time of this at the
    training sizes. Here the scale and the mask ride in the scores' matmul: baddbmm writes
    bias + scale * q k^T in one pass.
    """
    B, H, T, _ = q.shape
    S = k.shape[2]
    if mask is None:  # additive causal mask: -inf right of each query's own position [T, S]
        bias = torch.full((T, S), float("-inf"), device=q.device, dtype=q.dtype).triu_(S - T + 1)
    else:  # [B, 1, T, S] -> one [T, S] slab per (batch, head) [B*H, T, S]
        bias = torch.zeros(mask.shape, device=q.device, dtype=q.dtype).masked_fill_(~mask, float("-inf"))
        bias = bias.expand(B, H, T, S).reshape(B * H, T, S)
    scores = torch.baddbmm(bias, q.reshape(B * H, T, -1), k.reshape(B * H, S, -1).transpose(1, 2), alpha=scale)
    return torch.bmm(scores.softmax(-1), v.reshape(B * H, S, -1)).view(B, H, T, -1)  # [B, H, T, V]


class MLA(nn.Module):
    """Queries (optionally through a low-rank latent), one joint KV latent per token, and a
    decoupled rotary key shared by all heads.

    Two ways to attend, numerically the same:
      naive:    expand the latent to per-head keys and values with wkv_b, then attend.
      absorbed: fold wkv_b's key half into the query and its value half into the output, and
                attend directly over the cached latent (V2 App. C). Keys/values are never built
                per head, which is what makes decoding from the small cache cheap.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        H, N, R, V, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
        if cfg.q_lora_rank == 0:
            self.wq = nn.Linear(cfg.dim, H * (N + R), bias=False)
        else:
            self.wq_a = nn.Linear(cfg.dim, cfg.q_lora_rank, bias=False)
            self.q_norm = RMSNorm(cfg.q_lora_rank, LATENT_NORM_EPS)
            self.wq_b = nn.Linear(cfg.q_lora_rank, H * (N + R), bias=False)
        self.wkv_a = nn.Linear(cfg.dim, C + R, bias=False)  # latent and rotary key in one matmul
        self.kv_norm = RMSNorm(C, LATENT_NORM_EPS)
        self.wkv_b = nn.Linear(C, H * (N + V), bias=False)  # per head: N key dims then V value dims
        self.wo = nn.Linear(H * V, cfg.dim, bias=False)
        self.softmax_scale = cfg.qk_head_dim ** -0.5
        if cfg.max_seq_len > cfg.original_seq_len:  # YaRN attention-temperature correction
            m = 0.1 * cfg.mscale * math.log(cfg.rope_factor) + 1.0
            self.softmax_scale *= m * m

    def forward(self, x, cos, sin, mask, cache: KVCache | None = None, layer: int = 0,
                absorb: bool = False):
        """x [B, T, D]; cos/sin [B, T, R/2]; mask [B, 1, T, S] bool (True = attend) or None for
        plain causal. With a cache, this chunk is written at columns [cache.len, cache.len + T)."""
        cfg = self.cfg
        B, T, _ = x.shape
        H, N, R, V, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank

        q = self.wq(x) if cfg.q_lora_rank == 0 else self.wq_b(self.q_norm(self.wq_a(x)))
        q = q.view(B, T, H, N + R)
        q_nope, q_rope = q.split([N, R], dim=-1)  # [B, T, H, N], [B, T, H, R]
        q_rope = apply_rope(q_rope, cos, sin)

        latent, k_rope = self.wkv_a(x).split([C, R], dim=-1)
        latent = self.kv_norm(latent)  # [B, T, C]   (what is cached: normalised latent ...)
        k_rope = apply_rope(k_rope, cos, sin)  # [B, T, R]   (... and the rotated shared key)
        if cache is not None:  # write this chunk in place, then attend over everything so far
            start, buf = cache.len, cache.kv[layer]  # buf [B, S_max, C + R]
            buf[:, start:start + T, :C] = latent
            buf[:, start:start + T, C:] = k_rope
            latent, k_rope = buf[:, :start + T].split([C, R], dim=-1)  # [B, S, C], [B, S, R] (views)
        S = latent.shape[1]

        if not absorb:
            kv = self.wkv_b(latent).view(B, S, H, N + V)  # per-head keys and values
            k_nope, v = kv.split([N, V], dim=-1)  # [B, S, H, N], [B, S, H, V]
            # concatenating the head-major views writes q and k straight into [B, H, *, N+R] order (one copy)
            k = torch.cat([k_nope.transpose(1, 2), k_rope.unsqueeze(1).expand(B, H, S, R)], dim=-1)  # [B, H, S, N+R]
            qh = torch.cat([q_nope.transpose(1, 2), q_rope.transpose(1, 2)], dim=-1)  # [B, H, T, N+R]
            o = attention(qh, k, v.transpose(1, 2), mask, self.softmax_scale).transpose(1, 2)  # [B, T, H, V]
        else:
            # fold the heads into the query axis: all H heads of a token read the same latent key and
            # value, so attention over the cache is two plain batched matmuls per row [B, T*H, S]
            w = self.wkv_b.weight.view(H, N + V, C)
            w_uk, w_uv = w[:, :N], w[:, N:]  # [H, N, C], [H, V, C]
            q_lat = torch.einsum("bthn,hnc->bthc", q_nope, w_uk)  # query in latent space [B, T, H, C]
            q = torch.cat([q_lat, q_rope], dim=-1).view(B, T * H, C + R)  # one row per (token, head)
            kv = torch.cat([latent, k_rope], dim=-1) if cache is None else cache.kv[layer][:, :S]  # [B, S, C + R]
            scores = (q @ kv.mT) * self.softmax_scale  # [B, T*H, S]: latent and rotary parts in one matmul
            if mask is None and T > 1:  # plain causal (absorbed without a cache: tests compare the paths)
                mask = torch.ones(T, S, dtype=torch.bool, device=x.device).tril(S - T)
            if mask is not None:  # [B or 1, 1, T, S] -> one row per (token, head)
                scores = scores.view(B, T, H, S).masked_fill(~mask.reshape(-1, T, 1, S), float("-inf")).view(B, T * H, S)
            o = scores.softmax(-1).to(latent.dtype) @ latent  # [B, T*H, C]
            o = torch.einsum("bthc,hvc->bthv", o.view(B, T, H, C), w_uv)  # values leave the latent space [B, T, H, V]
        return self.wo(o.flatten(2))  # [B, T, D]


# --------------------------------------------------------------------------------------------
# Feed-forward: dense SwiGLU and DeepSeekMoE (V3 §2.1.2)
# --------------------------------------------------------------------------------------------


class MLP(nn.Module):
    """SwiGLU: w2(silu(w1 x) * w3 x). Used for dense layers and for the fused shared experts."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.w1 = nn.Linear(dim, hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)
        self.w3 = nn.Linear(dim, hidden, bias=False)

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Expert(MLP):
    """One routed expert (a SwiGLU of width moe_inter_dim)."""


class Gate(nn.Module):
    """The router. Scores choose experts with a load-balancing bias; gates come from the
    unbiased scores, so the bias steers *which* experts but never *how much* they count."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.weight = nn.Parameter(torch.empty(cfg.n_routed_experts, cfg.dim))  # [E, D]
        # aux-loss-free balancing bias: fp32, no gradient, changed only by update_bias()
        self.register_buffer("bias", torch.zeros(cfg.n_routed_experts, dtype=torch.float32))

    def forward(self, x, idx=None):
        """x [M, D] -> gates [M, K], expert indices [M, K], unbiased scores [M, E] (fp32).

        idx [M, K], if given, are the experts to use instead of this router's own top-k (routing
        replay in RL: the choices made while sampling). The gates still come from the current
        scores at those experts, so the router keeps its gradient; the idx returned is the given one.
        """
        cfg = self.cfg
        logits = F.linear(x.float(), self.weight.float())  # router in fp32, as HF does [M, E]
        scores = logits.sigmoid() if cfg.score_func == "sigmoid" else logits.softmax(-1)
        if idx is None:  # choose: biased top-k, within the best groups
            biased = scores + self.bias  # selection scores [M, E]
            if cfg.n_expert_groups > 1:
                g = biased.view(-1, cfg.n_expert_groups, cfg.n_routed_experts // cfg.n_expert_groups)  # [M, G, E/G]
                # a group's score: sum of its top-2 (V3, with bias) or its max (V2, softmax)
                group_score = g.topk(2, dim=-1).values.sum(-1) if cfg.score_func == "sigmoid" else g.amax(-1)
                keep = group_score.topk(cfg.n_limited_groups, dim=-1).indices  # [M, n_limited_groups]
                masked = torch.ones_like(group_score, dtype=torch.bool).scatter(1, keep, False)  # [M, G]
                biased = g.masked_fill(masked.unsqueeze(-1), float("-inf")).flatten(1)  # [M, E]
            idx = biased.topk(cfg.n_activated_experts, dim=-1).indices  # [M, K]
        gates = scores.gather(1, idx)  # unbiased [M, K]
        if cfg.score_func == "sigmoid":
            gates = gates / gates.sum(-1, keepdim=True)
        return gates * cfg.route_scale, idx, scores


class MoE(nn.Module):
    """Shared experts (every token, weight 1) plus the top-K routed experts of each token."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.gate = Gate(cfg)
        self.experts = nn.ModuleList(Expert(cfg.dim, cfg.moe_inter_dim) for _ in range(cfg.n_routed_experts))
        self.shared_experts = (MLP(cfg.dim, cfg.n_shared_experts * cfg.moe_inter_dim)
                               if cfg.n_shared_experts > 0 else None)
        # tokens routed to each expert since the last reset_load(): read by the training loop
        self.register_buffer("load", torch.zeros(cfg.n_routed_experts), persistent=False)
        # while the sampler decodes: every expert's weights stacked (stack_experts), else None
        self.stacked: tuple[torch.Tensor, torch.Tensor] | None = None

    def forward(self, x, token_mask=None, routes=None):
        """x [B, T, D]; token_mask [B, T] (True = real token) -> (y [B, T, D], balance loss).
        routes [B, T, K], if given, are each token's experts (routing replay; see Gate.forward)."""
        B, T, D = x.shape
        cfg = self.cfg
        flat = x.reshape(-1, D)  # [M, D], M = B*T
        idx = None if routes is None else routes.reshape(B * T, cfg.n_activated_experts)  # [M, K]
        gates, idx, scores = self.gate(flat, idx)
        with torch.no_grad():
            counted = idx if token_mask is None else idx[token_mask.reshape(-1)]
            self.load += torch.bincount(counted.flatten(), minlength=cfg.n_routed_experts).to(self.load)
        # dispatch: sort the M*K (token, expert) pairs by expert, run each expert on its slice only
        order = idx.flatten().argsort(stable=True)  # [M*K]
        token = order // cfg.n_activated_experts  # which token each sorted slot belongs to
        if self.stacked is None:
            counts = torch.bincount(idx.flatten(), minlength=cfg.n_routed_experts).tolist()
            xs = flat.index_select(0, token)  # [M*K, D]
            # every expert is called, even on an empty slice, so each one is in the autograd graph
            # (FSDP2 gives silently wrong gradients otherwise; docs/traps.md)
            ys = torch.cat([e(chunk) for e, chunk in zip(self.experts, xs.split(counts))])  # [M*K, D]
        else:
            ys = self.grouped_experts(flat, idx.flatten()[order], token)
        ys = ys * gates.flatten()[order].unsqueeze(1).to(ys.dtype)
        # the routed outputs are added into the shared experts' output in place (no zero tensor, no extra add)
        y = (self.shared_experts(flat) if self.shared_experts is not None
             else flat.new_zeros(flat.shape, dtype=ys.dtype))  # [M, D]; bf16 under autocast
        y = y.index_add_(0, token, ys.to(y.dtype))
        bal = self.balance_loss(scores.view(B, T, -1), token_mask) if self.training and cfg.seq_aux_alpha > 0 \
            else flat.new_zeros(())
        return y.view(B, T, D), bal

    @torch.no_grad()
    def stack_experts(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Every expert's weights in two tensors: w13 [E, D, 2F] (w1 and w3 side by side) and w2 [E, F, D].
        A copy, so the sampler makes it once per call (the weights do not change while it decodes) and
        sets `stacked` to it: decoding then runs the experts as two batched matmuls (grouped_experts)."""
        w13 = torch.stack([torch.cat([e.w1.weight, e.w3.weight]).t() for e in self.experts])
        w2 = torch.stack([e.w2.weight.t() for e in self.experts])
        return w13.contiguous(), w2.contiguous()

    def grouped_experts(self, flat, expert, token):
        """The routed experts on a few tokens (decoding: one per row), all at once: flat [M, D], and the
        M*K (token, expert) pairs sorted by expert (expert [M*K], token [M*K]) -> outputs [M*K, D] in that
        order. Each expert's tokens fill its row of a capacity buffer [E, cap, D] (cap: the busiest expert's
        count, the other rows zero-padded), then two batched matmuls do every expert's SwiGLU: a few
        kernel calls instead of three small matmuls per expert, which is what a step of a few tokens
        per expert costs on a CPU."""
        E, D = self.cfg.n_routed_experts, flat.shape[1]
        w13, w2 = self.stacked
        counts = torch.bincount(expert, minlength=E)  # [E]
        first = counts.cumsum(0) - counts  # where each expert's pairs start in the sorted order [E]
        slot = torch.arange(len(expert), device=flat.device) - first[expert]  # rank within its expert [M*K]
        buf = flat.new_zeros(E, int(counts.max()), D)  # [E, cap, D]
        buf[expert, slot] = flat[token]
        a, b = torch.bmm(buf, w13).chunk(2, dim=-1)  # [E, cap, F] each
        return torch.bmm(F.silu(a) * b, w2)[expert, slot]  # [M*K, D]

    def balance_loss(self, scores, token_mask=None):
        """Complementary sequence-wise balance loss (V3 eqs. 17-20), averaged over sequences.

        scores [B, T, E] unbiased affinities. f_i: share of routing slots expert i gets in the
        sequence (1 = balanced), from the top-K of the plain affinities; P_i: mean normalised
        affinity. Gradient flows through P only.
        """
        cfg = self.cfg
        E, K = cfg.n_routed_experts, cfg.n_activated_experts
        m = torch.ones(scores.shape[:2], device=scores.device) if token_mask is None else token_mask.float()
        n_tok = m.sum(1).clamp(min=1)  # [B]
        top = scores.topk(K, dim=-1).indices  # [B, T, K]
        hits = torch.zeros_like(scores).scatter(-1, top, 1.0) * m.unsqueeze(-1)  # [B, T, E]
        f = hits.sum(1) * E / (K * n_tok.unsqueeze(1))  # [B, E]
        p = (scores / scores.sum(-1, keepdim=True) * m.unsqueeze(-1)).sum(1) / n_tok.unsqueeze(1)  # [B, E]
        return cfg.seq_aux_alpha * (f * p).sum(-1).mean()

    @torch.no_grad()
    def update_bias(self, load: torch.Tensor, gamma: float):
        """Aux-loss-free balancing (V3 eq. 16): b_i += gamma * sign(mean load - load_i).

        `load` [E] is the step's token count per expert (all-reduced first when distributed).
        """
        self.gate.bias += gamma * torch.sign(load.float().mean() - load.float())


# --------------------------------------------------------------------------------------------
# Decoder block, MTP module, and the model
# --------------------------------------------------------------------------------------------


class Block(nn.Module):
    """Pre-norm residual block: x += MLA(norm(x)); x += FFN(norm(x)); FFN dense or MoE."""

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.attn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.attn = MLA(cfg)
        self.ffn_norm = RMSNorm(cfg.dim, cfg.norm_eps)
        use_moe = cfg.n_routed_experts > 0 and layer_id >= cfg.n_dense_layers
        self.ffn = MoE(cfg) if use_moe else MLP(cfg.dim, cfg.inter_dim)

    def forward(self, x, cos, sin, mask, token_mask=None, cache=None, layer=0, absorb=False, routes=None):
        """routes [B, T, K]: the experts to replay in an MoE block (None = route as usual)."""
        x = x + self.attn(self.attn_norm(x), cos, sin, mask, cache, layer, absorb)
        h = self.ffn_norm(x)
        if isinstance(self.ffn, MoE):
            y, bal = self.ffn(h, token_mask, routes)
        else:
            y, bal = self.ffn(h), x.new_zeros(())
        return x + y, bal


class MTP(nn.Module):
    """One multi-token-prediction module (V3 §2.2, eq. 21-23).

    h'_i = eh_proj([enorm(Emb(t_{i+k})) ; hnorm(h^{k-1}_i)]), h^k = block(h'), logits = head(norm(h^k)).
    The embedding and output head are the main model's own objects (shared, not copied).
    The concatenation order [embedding; hidden] is that of the released V3 weights.
    """

    def __init__(self, cfg: ModelConfig, layer_id: int):
        super().__init__()
        self.enorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.hnorm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.eh_proj = nn.Linear(2 * cfg.dim, cfg.dim, bias=False)
        self.block = Block(cfg, layer_id)  # a full MLA + (MoE) block, like the main layers
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)  # the MTP head's own final norm

    def forward(self, e, h_prev, cos, sin, mask, token_mask=None, cache=None, layer: int = 0, absorb: bool = False):
        """e [B, T, D] embeddings of the tokens one step ahead (the shared embedding's output), h_prev
        [B, T, D] the previous depth's hidden states -> (h [B, T, D], balance loss)."""
        x = self.eh_proj(torch.cat([self.enorm(e), self.hnorm(h_prev)], dim=-1))  # [B, T, D]
        return self.block(x, cos, sin, mask, token_mask, cache, layer, absorb)


class Transformer(nn.Module):
    """Embedding, n_layers blocks, final norm, output head (untied), plus mtp_depth MTP modules."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.vocab_size, cfg.dim)
        self.layers = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm = RMSNorm(cfg.dim, cfg.norm_eps)
        self.head = nn.Linear(cfg.dim, cfg.vocab_size, bias=False)
        self.mtp = nn.ModuleList(MTP(cfg, cfg.n_layers) for _ in range(cfg.mtp_depth))
        cos, sin = precompute_rope(cfg)
        self.register_buffer("rope_cos", cos, persistent=False)  # [max_seq_len, R/2]
        self.register_buffer("rope_sin", sin, persistent=False)

    # ---- initialisation (build on meta, to_empty, then this) ----
    @torch.no_grad()
    def init_weights(self, std: float = 0.02, seed: int | None = None):
        """Every tensor of the model, in one place:
        - every Linear weight (wq/wq_a/wq_b, wkv_a, wkv_b, expert and MLP w1/w3, eh_proj, head,
          the gate): normal(0, std); the residual output projections (wo, w2) are further
          scaled by 1/sqrt(2 * n_layers) so the residual stream does not grow with depth (GPT-2);
        - the embedding: normal(0, std);
        - every RMSNorm weight: 1; the routing biases: 0; the rope tables: recomputed (they are
          non-persistent buffers, so a model built on the meta device gets them here).
        """
        gen = None if seed is None else torch.Generator(device=self.embed.weight.device).manual_seed(seed)
        resid_std = std / math.sqrt(2 * self.cfg.n_layers)
        for name, p in self.named_parameters():
            if name.endswith(("wo.weight", "w2.weight")):
                p.normal_(0.0, resid_std, generator=gen)
            elif p.dim() == 2:
                p.normal_(0.0, std, generator=gen)
            else:  # RMSNorm weights
                p.fill_(1.0)
        for m in self.modules():
            if isinstance(m, Gate):
                m.bias.zero_()
            if isinstance(m, MoE):
                m.load.zero_()
        cos, sin = precompute_rope(self.cfg)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    # ---- helpers ----
    def moe_layers(self) -> list[MoE]:
        return [m for m in self.modules() if isinstance(m, MoE)]

    def expert_load(self) -> torch.Tensor:
        """Tokens per expert since the last reset, one row per MoE layer [n_moe, E]."""
        moes = self.moe_layers()
        return torch.stack([m.load for m in moes]) if moes else torch.zeros(0, 0)

    @staticmethod
    def load_imbalance(load: torch.Tensor) -> float | None:
        """Mean over MoE layers of (busiest expert's tokens / mean tokens per expert); 1 = balanced.
        Layers that saw no tokens (say, the MTP block when only the main model ran) are skipped."""
        rows = load[load.sum(1) > 0] if load.numel() else load
        return float((rows.max(1).values / rows.mean(1)).mean()) if len(rows) else None

    def reset_expert_load(self):
        for m in self.moe_layers():
            m.load.zero_()

    def update_biases(self, load: torch.Tensor | None = None, gamma: float | None = None):
        """Move every routing bias by +/- gamma from the given (or accumulated) loads."""
        load = self.expert_load() if load is None else load
        gamma = self.cfg.bias_update_speed if gamma is None else gamma
        for m, l in zip(self.moe_layers(), load):
            m.update_bias(l, gamma)

    def positions_and_mask(self, B, T, device, pad_mask, cache):
        """Rotary positions [B, T] and the attention mask [B, 1, T, S] (None = plain causal).

        Rows may be left-padded: pad_mask [B, T] is False on padding. A token's position counts
        only real tokens before it, so a prompt gets the same positions whatever its padding.
        """
        start = 0 if cache is None else cache.len
        if pad_mask is None:
            pad_mask = torch.ones(B, T, dtype=torch.bool, device=device)
        offset = 0 if cache is None else cache.n_real.unsqueeze(1)
        pos = (offset + pad_mask.long().cumsum(1) - 1).clamp(min=0)  # [B, T]
        if cache is None and bool(pad_mask.all()):
            return pos, None, pad_mask
        valid = pad_mask if cache is None else torch.cat([cache.valid[:, :start], pad_mask], 1)  # [B, S]
        S = start + T
        q_col = torch.arange(start, S, device=device).view(1, T, 1)
        k_col = torch.arange(S, device=device).view(1, 1, S)
        # attend to real keys at or before the query; a query always sees itself, so padded rows
        # never get an all-masked (NaN) softmax
        mask = ((k_col <= q_col) & valid.unsqueeze(1)) | (k_col == q_col)  # [B, T, S]
        return pos, mask.unsqueeze(1), pad_mask

    def forward(self, tokens, targets=None, *, pad_mask=None, cache: KVCache | None = None,
                absorb: bool | None = None, return_hidden: bool = False, moe_mask=None,
                routes: list | None = None):
        """tokens [B, T] -> logits [B, T, W] (or losses when targets are given).

        targets [B, T] (next tokens, -100 = ignore) -> dict of losses: "main", "mtp" (a list, one
        per depth), "balance", and the weighted "total" = main + lambda/D * sum(mtp) + balance.
        pad_mask [B, T] marks real tokens (False = left padding). With a cache, the chunk is
        appended at column cache.len and attends to everything cached before it.
        absorb picks the MLA path; by default: absorbed when decoding from a cache, naive otherwise.
        moe_mask [B, T] marks the tokens that count in the MoE expert loads and the balance loss; by
        default the real tokens that have a target. SFT passes every real token (prompt included): the
        prompt goes through the experts, so it is part of their load, as in V3's balancing.
        routes: one [B, T, K] expert-index tensor per main-layer MoE, in layer order, replayed instead
        of the routers' own choices (GRPO's routing replay); the MTP modules always route themselves.
        """
        B, T = tokens.shape
        absorb = (cache is not None) if absorb is None else absorb
        pos, mask, pad_mask = self.positions_and_mask(B, T, tokens.device, pad_mask, cache)
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]  # [B, T, R/2]
        token_mask = pad_mask if targets is None else (pad_mask & (targets != -100))
        if moe_mask is not None:
            token_mask = pad_mask & moe_mask
        x = self.embed(tokens)  # [B, T, D]
        bal = x.new_zeros(())
        moe_routes = iter(routes or [])  # the MoE blocks take them in order; dense blocks take none
        for i, layer in enumerate(self.layers):
            r = next(moe_routes) if routes is not None and isinstance(layer.ffn, MoE) else None
            x, b = layer(x, cos, sin, mask, token_mask, cache, i, absorb, r)
            bal = bal + b
        h = self.norm(x)  # [B, T, D]
        if cache is not None:
            self.advance_cache(cache, pad_mask)
        logits = self.head(h)  # [B, T, W]
        if targets is None:
            return (logits, h) if return_hidden else logits

        main = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=-100)
        n_main = (targets != -100).sum().clamp(min=1)  # V3 eq. 24: each depth's sum is divided by T, not T - k
        mtp_losses = []
        for k, mod in enumerate(self.mtp, start=1):
            if T - k < 1:
                break
            # depth k at position i: hidden of depth k-1 at i and the embedding of token i+k
            # predict token i+k+1, which is targets[:, i+k]
            tgt = targets[:, k:].masked_fill(~pad_mask[:, :T - k], -100)  # position i itself must be real
            h, b = self.mtp_forward(k - 1, h[:, :T - k], tokens[:, k:], pos[:, :T - k],
                                    None if mask is None else mask[:, :, :T - k, :T - k],
                                    token_mask[:, k:] & pad_mask[:, :T - k])
            lg = self.head(mod.norm(h))  # [B, T-k, W]
            mtp_losses.append(F.cross_entropy(lg.flatten(0, 1).float(), tgt.flatten(), ignore_index=-100,
                                              reduction="sum") / n_main)
            bal = bal + b
        total = main + bal
        if mtp_losses:
            total = total + self.cfg.mtp_lambda / len(self.mtp) * sum(mtp_losses)
        return {"main": main, "mtp": mtp_losses, "balance": bal, "total": total}

    def mtp_forward(self, depth: int, h_prev, next_tokens, pos, mask, token_mask=None,
                    cache: KVCache | None = None, absorb: bool = False):
        """Run MTP module `depth` (0-based). h_prev [B, T, D] (depth-1 hidden, after the final norm
        for depth 0), next_tokens [B, T] (the token one step ahead of each position) -> (h [B, T, D],
        balance loss). At inference the MTP blocks keep their own cache (`new_cache(..., mtp=True)`, layer
        `depth`), since they run one token behind the main model; the caller advances it."""
        cos, sin = self.rope_cos[pos], self.rope_sin[pos]
        return self.mtp[depth](self.embed(next_tokens), h_prev, cos, sin, mask, token_mask, cache, depth, absorb)

    def mtp_logits(self, depth: int, h):
        return self.head(self.mtp[depth].norm(h))  # shared head [B, T, W]

    @staticmethod
    def advance_cache(cache: KVCache, pad_mask):
        """Mark a chunk of T columns written: pad_mask [B, T] says which are real tokens."""
        T = pad_mask.shape[1]
        cache.valid[:, cache.len:cache.len + T] = pad_mask
        cache.n_real += pad_mask.long().sum(1)
        cache.len += T

    def new_cache(self, batch: int, max_len: int | None = None, dtype=None, mtp: bool = False) -> KVCache:
        """An empty cache for the main layers (or, with mtp=True, for the MTP modules' blocks)."""
        p = self.embed.weight
        n = self.cfg.mtp_depth if mtp else self.cfg.n_layers
        return KVCache(self.cfg, batch, max_len or self.cfg.max_seq_len, p.device, dtype or p.dtype, n_layers=n)


# --------------------------------------------------------------------------------------------
# Building and counting
# --------------------------------------------------------------------------------------------


def build_model(cfg: ModelConfig, device="cpu", seed: int | None = 0) -> Transformer:
    """Build on the meta device (no memory, any size), materialise on `device`, then init."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if str(device) == "meta":
        return model
    model.to_empty(device=device)
    model.init_weights(seed=seed)
    return model


def count_params(cfg: ModelConfig) -> dict[str, int]:
    """Parameter counts from the module tree itself (built on meta: free at any size).

    total: the main model (what "671B" counts); activated: per token (all but the unchosen
    routed experts); mtp: the MTP modules' own parameters (the embedding and head are shared);
    kv_cache_bytes_bf16: the MLA cache per token over all main layers, 2 bytes a number.
    """
    model = build_model(cfg, device="meta")
    numel = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
    mtp = numel(model.mtp)
    total = numel(model) - mtp
    expert = 3 * cfg.dim * cfg.moe_inter_dim
    n_moe = sum(isinstance(l.ffn, MoE) for l in model.layers)
    inactive = n_moe * (cfg.n_routed_experts - cfg.n_activated_experts) * expert
    return {
        "total": total,
        "activated": total - inactive,
        "mtp": mtp,
        "mtp_activated": mtp - sum(isinstance(m.block.ffn, MoE) for m in model.mtp)
        * (cfg.n_routed_experts - cfg.n_activated_experts) * expert,
        "embedding": model.embed.weight.numel(),
        "head": model.head.weight.numel(),
        "kv_cache_bytes_bf16": cfg.n_layers * (cfg.kv_lora_rank + cfg.qk_rope_head_dim) * 2,
        "naive_kv_cache_bytes_bf16": cfg.n_layers * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * 2,
    }


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token (forward + backward = 3x forward; 2 FLOPs a multiply-add) of the
    activated weights, plus attention scores and values (naive path), MTP included (PaLM-style)."""
    c = count_params(cfg)
    matmul_params = c["activated"] - c["embedding"] + c["mtp_activated"]
    attn = (cfg.n_layers + cfg.mtp_depth) * cfg.n_heads * (cfg.qk_head_dim + cfg.v_head_dim) * seq_len  # causal avg ~ T/2, x2 flops
    return 3 * (2 * matmul_params + attn)


def decode_flops(cfg: ModelConfig, batch: int, cached: int) -> float:
    """FLOPs of one absorbed decode step of the main model (no MTP): `batch` rows of one new token each,
    attending over `cached` + 1 columns. The activated weights once per token (the absorbed path folds
    wkv_b into the query and the output, which costs the same multiply-adds as applying it to the one
    new token), plus the attention over the latent cache: scores over C + R numbers and values over C,
    per head and column. The decode roofline: this over the measured matmul peak."""
    c = count_params(cfg)
    norms = cfg.n_layers * (2 * cfg.dim + cfg.kv_lora_rank + cfg.q_lora_rank) + cfg.dim  # RMSNorm weights: no matmul
    S = cached + 1
    attention = cfg.n_layers * cfg.n_heads * S * (2 * cfg.kv_lora_rank + cfg.qk_rope_head_dim)
    return 2.0 * batch * (c["activated"] - c["embedding"] - norms + attention)


def activation_numbers(cfg: ModelConfig, moe: bool) -> int:
    """Numbers autograd keeps per token for one block (MLA + FFN), without recomputation: the
    activation memory of training (scale/plan.py's planner, runs.check_memory)."""
    H, D = cfg.n_heads, cfg.dim
    qk, v = cfg.qk_head_dim, cfg.v_head_dim
    attn = (2 * D  # block input, normed input
            + cfg.q_lora_rank  # query latent (0 = full-rank query)
            + cfg.kv_lora_rank + cfg.qk_rope_head_dim  # kv latent and rotary key
            + 2 * H * qk + H * v  # per-head q, k, v
            + H * v)  # attention output (input of wo)
    if moe:
        F, K, S, E = cfg.moe_inter_dim, cfg.n_activated_experts, cfg.n_shared_experts, cfg.n_routed_experts
        ffn = 2 * D + E + K * (D + 3 * F) + 3 * S * F  # input, normed, router scores, K routed + shared SwiGLUs
    else:
        ffn = 2 * D + 3 * cfg.inter_dim  # input, normed, w1/w3 outputs and their product
    return attn + ffn
