"""Tests for model.py: shapes, MLA (absorbed == naive == a hand-written loop reference), the latent KV
cache (incremental == full forward, ragged prompts, row copies), the router and aux-loss-free balancing,
the sequence-wise balance loss, MTP alignment and sharing, gradients, parameter counts, configs, init.

Every reference here is written independently of model.py (explicit loops, hand-computed tables, the
numbers of the papers and the released V3 config), never by calling the code path under test a second time. Hermetic and CPU-only;
equivalence tests run float64 models (`.double()`) with tiny shapes.
"""
import math
import time

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st

import model as M
from model import (KVCache, MLA, MoE, PRESETS, Gate, ModelConfig, RMSNorm, Transformer, build_model,
                   count_params, precompute_rope, preset)

# A micro config with every mechanism alive (MLA, dense + MoE layers, shared expert, MTP) and tiny dims.
MICRO = dict(vocab_size=32, dim=32, inter_dim=64, moe_inter_dim=16, n_layers=3, n_dense_layers=1, n_heads=2,
             n_routed_experts=4, n_shared_experts=1, n_activated_experts=2, kv_lora_rank=16,
             qk_nope_head_dim=8, qk_rope_head_dim=4, v_head_dim=8, max_seq_len=64, original_seq_len=64,
             mtp_depth=1)
YARN = dict(max_seq_len=256, original_seq_len=64, rope_theta=500.0, rope_factor=8.0, mscale=0.9)



def micro_cfg(**overrides) -> ModelConfig:
    return ModelConfig(**{**MICRO, **overrides})


def micro_model(std: float = 0.3, seed: int = 0, **overrides) -> Transformer:
    """A float64 micro model in eval mode. std is large on purpose: sharp attention and well separated
    routing scores make every mismatch visible (with std 0.02 attention is almost uniform)."""
    torch.manual_seed(seed)
    m = build_model(micro_cfg(**overrides), seed=seed)
    m.init_weights(std=std, seed=seed)
    return m.double().eval()


# The model runs RMSNorm, RoPE and the router in fp32 even in a float64 model, so two equivalent paths
# (chunked vs full, absorbed vs naive) differ at the ~1e-8 level; a real bug differs at O(1).
FP32_TOL = 1e-6


def close(a, b, tol=1e-6):
    """Max abs difference relative to the scale of b: robust to fp32 rounding inside RMSNorm/RoPE."""
    a, b = a.double(), b.double()
    assert a.shape == b.shape, (a.shape, b.shape)
    err = (a - b).abs().max().item()
    scale = max(b.abs().max().item(), 1.0)
    assert err <= tol * scale, f"max abs err {err:.3e} > {tol:.1e} * {scale:.3e}"


# ================================================================ independent references

def ref_rms(x, w, eps=1e-6):
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps) * w


def ref_freqs(cfg: ModelConfig) -> list[float]:
    """RoPE frequencies per pair i: theta^(-2i/R), with YaRN (V3 §4.3) when max_seq_len > original."""
    R = cfg.qk_rope_head_dim
    freqs = [cfg.rope_theta ** (-2 * i / R) for i in range(R // 2)]
    if cfg.max_seq_len <= cfg.original_seq_len:
        return freqs

    def corr(rot):  # pair index that makes `rot` full turns over the original context
        return R * math.log(cfg.original_seq_len / (2 * math.pi * rot)) / (2 * math.log(cfg.rope_theta))

    lo, hi = max(math.floor(corr(cfg.beta_fast)), 0), min(math.ceil(corr(cfg.beta_slow)), R - 1)
    out = []
    for i, f in enumerate(freqs):
        rho = min(max((i - lo) / max(hi - lo, 1e-3), 0.0), 1.0)
        out.append(f * (1 - rho) + f / cfg.rope_factor * rho)
    return out


def ref_rope(v, p, freqs):
    """Rotate consecutive pairs (2i, 2i+1) of a 1-D vector by angle p * freqs[i]."""
    out = v.clone()
    for i, f in enumerate(freqs):
        c, s = math.cos(p * f), math.sin(p * f)
        out[2 * i] = v[2 * i] * c - v[2 * i + 1] * s
        out[2 * i + 1] = v[2 * i] * s + v[2 * i + 1] * c
    return out


def ref_scale(cfg):
    s = cfg.qk_head_dim ** -0.5
    if cfg.max_seq_len > cfg.original_seq_len:
        s *= (0.1 * cfg.mscale * math.log(cfg.rope_factor) + 1.0) ** 2
    return s


def ref_mla(attn: MLA, x, positions, freqs):
    """One MLA layer on one sequence x [T, D], causal, with explicit loops over heads, queries, keys.

    wkv_b rows: per head, first qk_nope_head_dim key rows then v_head_dim value rows."""
    cfg = attn.cfg
    H, N, R, V, C = cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim, cfg.kv_lora_rank
    T = x.shape[0]
    if cfg.q_lora_rank:
        q = ref_rms(x @ attn.wq_a.weight.T, attn.q_norm.weight, cfg.norm_eps) @ attn.wq_b.weight.T
    else:
        q = x @ attn.wq.weight.T  # [T, H*(N+R)]
    kv = x @ attn.wkv_a.weight.T  # [T, C+R]
    c = ref_rms(kv[:, :C], attn.kv_norm.weight, cfg.norm_eps)
    k_rope = [ref_rope(kv[s, C:], positions[s], freqs) for s in range(T)]
    scale = ref_scale(cfg)
    wb = attn.wkv_b.weight
    heads = []
    for h in range(H):
        w_k, w_v = wb[h * (N + V):h * (N + V) + N], wb[h * (N + V) + N:(h + 1) * (N + V)]
        o = torch.zeros(T, V, dtype=x.dtype)
        for t in range(T):
            qh = q[t, h * (N + R):(h + 1) * (N + R)]
            q_nope, q_rope = qh[:N], ref_rope(qh[N:], positions[t], freqs)
            logits = torch.stack([(q_nope @ (w_k @ c[s]) + q_rope @ k_rope[s]) * scale for s in range(t + 1)])
            p = torch.softmax(logits, 0)
            for s in range(t + 1):
                o[t] += p[s] * (w_v @ c[s])
        heads.append(o)
    return torch.cat(heads, -1) @ attn.wo.weight.T  # [T, D]


def hand_param_count(cfg: ModelConfig) -> tuple[int, int]:
    """(main model total, MTP unique) from the config by formula (from the released V3 config), no module tree."""
    D, H, N, R, V, C, Q = (cfg.dim, cfg.n_heads, cfg.qk_nope_head_dim, cfg.qk_rope_head_dim, cfg.v_head_dim,
                           cfg.kv_lora_rank, cfg.q_lora_rank)
    q = D * H * (N + R) if Q == 0 else D * Q + Q + Q * H * (N + R)
    mla = q + D * (C + R) + C + C * H * (N + V) + H * V * D
    dense = 3 * D * cfg.inter_dim
    moe = (cfg.n_routed_experts * 3 * D * cfg.moe_inter_dim + 3 * D * cfg.n_shared_experts * cfg.moe_inter_dim
           + cfg.n_routed_experts * D)
    n_moe = cfg.n_layers - cfg.n_dense_layers if cfg.n_routed_experts else 0
    blocks = cfg.n_layers * (2 * D + mla) + (cfg.n_layers - n_moe) * dense + n_moe * moe
    total = 2 * cfg.vocab_size * D + D + blocks
    mtp_block = 2 * D + mla + (moe if cfg.n_routed_experts else dense)
    mtp = cfg.mtp_depth * (3 * D + 2 * D * D + mtp_block)
    return total, mtp


# ================================================================ 1. shapes

@pytest.mark.parametrize("name", ["tiny", "small", "student"])
def test_real_forward_shapes(name):
    torch.manual_seed(0)
    cfg = preset(name)
    m = build_model(cfg, seed=0)
    B, T = 2, 7
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    logits, h = m(tokens, return_hidden=True)
    assert logits.shape == (B, T, cfg.vocab_size) and h.shape == (B, T, cfg.dim)
    assert torch.isfinite(logits).all()
    out = m(tokens, tokens)
    assert set(out) == {"main", "mtp", "balance", "total"}
    assert len(out["mtp"]) == cfg.mtp_depth
    assert all(v.shape == () for v in [out["main"], out["balance"], out["total"], *out["mtp"]])
    assert len(m.moe_layers()) == (cfg.n_layers - cfg.n_dense_layers + cfg.mtp_depth if cfg.n_routed_experts else 0)
    cache = m.new_cache(B, 16)
    assert m(tokens, cache=cache).shape == (B, T, cfg.vocab_size)
    assert m(tokens[:, :1], cache=cache).shape == (B, 1, cfg.vocab_size)
    assert cache.len == T + 1 and cache.n_real.tolist() == [T + 1] * B


@pytest.fixture(scope="module")
def v3():
    """count_params of the 671B preset, its wall time, and the meta model it built.

    Building the 671B tree on meta takes ~5 s here (46k nn.Linear); one build serves every test:
    we keep the model that count_params builds through build_model."""
    built = []

    def spy(*args, **kwargs):
        built.append(real(*args, **kwargs))
        return built[-1]

    real = M.build_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(M, "build_model", spy)
        t0 = time.perf_counter()
        counts = count_params(preset("deepseek-v3-671b"))
        seconds = time.perf_counter() - t0
    model = built[0] if built else real(preset("deepseek-v3-671b"), device="meta")
    return counts, seconds, model


@pytest.fixture(scope="module")
def v3_meta(v3):
    return v3[2]


@pytest.fixture(scope="module")
def v2_lite_meta():
    return build_model(preset("deepseek-v2-lite-16b"), device="meta")


def test_meta_shapes_671b(v3_meta):
    m = v3_meta
    assert all(p.device.type == "meta" for p in m.parameters())
    assert m.embed.weight.shape == (129280, 7168) and m.head.weight.shape == (129280, 7168)
    a = m.layers[0].attn
    assert a.wq_a.weight.shape == (1536, 7168) and a.q_norm.weight.shape == (1536,)
    assert a.wq_b.weight.shape == (128 * 192, 1536)
    assert a.wkv_a.weight.shape == (576, 7168) and a.kv_norm.weight.shape == (512,)
    assert a.wkv_b.weight.shape == (128 * 256, 512) and a.wo.weight.shape == (7168, 128 * 128)
    assert not hasattr(a, "wq")
    assert len(m.layers) == 61 and len(m.mtp) == 1
    for i, layer in enumerate(m.layers):
        if i < 3:
            assert isinstance(layer.ffn, M.MLP) and layer.ffn.w1.weight.shape == (18432, 7168)
        else:
            assert isinstance(layer.ffn, MoE)
    moe = m.layers[3].ffn
    assert len(moe.experts) == 256 and moe.experts[0].w1.weight.shape == (2048, 7168)
    assert moe.shared_experts.w1.weight.shape == (2048, 7168)  # 1 shared expert
    assert moe.gate.weight.shape == (256, 7168) and moe.gate.bias.shape == (256,)
    assert isinstance(m.mtp[0].block.ffn, MoE) and m.mtp[0].eh_proj.weight.shape == (7168, 2 * 7168)
    # pieces that can run on meta: attention, a dense block, the router
    B, T = 2, 3
    x = torch.empty(B, T, 7168, device="meta")
    pos = torch.zeros(B, T, dtype=torch.long, device="meta")
    cos, sin = m.rope_cos[pos], m.rope_sin[pos]
    assert a(x, cos, sin, None).shape == (B, T, 7168)
    assert a(x, cos, sin, None, absorb=True).shape == (B, T, 7168)
    y, bal = m.layers[0](x, cos, sin, None)
    assert y.shape == (B, T, 7168)
    gates, idx, scores = moe.gate(x.flatten(0, 1))
    assert gates.shape == idx.shape == (B * T, 8) and scores.shape == (B * T, 256)


def test_meta_shapes_16b(v2_lite_meta):
    m = v2_lite_meta
    a = m.layers[0].attn
    assert a.wq.weight.shape == (16 * 192, 2048) and not hasattr(a, "wq_a")
    assert a.wkv_a.weight.shape == (576, 2048) and a.wkv_b.weight.shape == (16 * 256, 512)
    assert isinstance(m.layers[0].ffn, M.MLP) and m.layers[0].ffn.w1.weight.shape == (10944, 2048)
    moe = m.layers[1].ffn
    assert len(moe.experts) == 64 and moe.shared_experts.w1.weight.shape == (2 * 1408, 2048)
    assert len(m.mtp) == 0
    x = torch.empty(1, 4, 2048, device="meta")
    pos = torch.zeros(1, 4, dtype=torch.long, device="meta")
    assert a(x, m.rope_cos[pos], m.rope_sin[pos], None, absorb=True).shape == (1, 4, 2048)


def test_softmax_scale_and_yarn_numbers_from_spec(v3_meta, v2_lite_meta):
    """YaRN (V3 §4.3): final scale 0.13523 (V3) and 0.11472 (16B); YaRN keeps pairs 0-10, slows 23-31 by 40x."""
    assert v3_meta.layers[0].attn.softmax_scale == pytest.approx(0.13523, abs=1e-5)
    assert v2_lite_meta.layers[0].attn.softmax_scale == pytest.approx(0.11472, abs=1e-5)
    assert MLA(micro_cfg()).softmax_scale == pytest.approx(12 ** -0.5)  # no YaRN: plain 1/sqrt(N+R)
    cos, sin = precompute_rope(preset("deepseek-v3-671b"))  # [16384, 32], YaRN active (16384 > 4096)
    assert cos.shape == sin.shape == (16384, 32)
    base = torch.tensor([10000.0 ** (-2 * i / 64) for i in range(32)], dtype=torch.float64)
    angle1 = torch.atan2(sin[1].double(), cos[1].double())  # the angle at position 1 is the frequency
    assert torch.allclose(angle1[:11], base[:11], rtol=1e-6)
    assert torch.allclose(angle1[23:], base[23:] / 40, rtol=1e-5)
    mid = angle1[11:23]
    assert ((mid < base[11:23] * (1 - 1e-3)) & (mid > base[11:23] / 40 * (1 + 1e-3))).all()


# ================================================================ 2. MLA: absorbed == naive == loop reference

MLA_VARIANTS = {
    "full_rank_q": {},
    "low_rank_q": dict(q_lora_rank=12),
    "yarn": dict(q_lora_rank=12, **YARN),
}


@pytest.mark.parametrize("variant", list(MLA_VARIANTS))
def test_absorbed_equals_naive_full_model(variant):
    m = micro_model(**MLA_VARIANTS[variant])
    torch.manual_seed(1)
    T = 80 if "yarn" in variant else 12  # YaRN: run past original_seq_len (64)
    tokens = torch.randint(0, m.cfg.vocab_size, (2, T))
    with torch.no_grad():
        naive = m(tokens, absorb=False)
        absorbed = m(tokens, absorb=True)
    close(absorbed, naive, FP32_TOL)
    assert (naive.std(1) > 1e-2).all()  # not a degenerate (constant) output


@pytest.mark.parametrize("variant", list(MLA_VARIANTS))
@pytest.mark.parametrize("absorb", [False, True])
def test_mla_matches_loop_reference(variant, absorb):
    cfg = micro_cfg(**MLA_VARIANTS[variant])
    torch.manual_seed(2)
    attn = MLA(cfg).double()
    for p in attn.parameters():  # random everything, norm weights too (not 1): catches a skipped norm
        torch.nn.init.normal_(p, 0.0, 0.4 if p.dim() == 2 else 1.0)
        if p.dim() == 1:
            p.data = p.data.abs() + 0.5
    T, start = 6, (150 if "yarn" in variant else 3)  # YaRN: positions past original_seq_len
    x = torch.randn(1, T, cfg.dim, dtype=torch.float64)
    positions = list(range(start, start + T))
    freqs = ref_freqs(cfg)
    ang = torch.tensor([[p * f for f in freqs] for p in positions], dtype=torch.float64)[None]  # [1, T, R/2]
    with torch.no_grad():
        got = attn(x, ang.cos(), ang.sin(), None, absorb=absorb)[0]
        want = ref_mla(attn, x[0], positions, freqs)
    close(got, want, 1e-5)  # RMSNorm and RoPE run in fp32 inside the model
    # and the model's own rope table is the same as this reference's
    cos, sin = precompute_rope(cfg)
    full = torch.tensor([[p * f for f in freqs] for p in range(cfg.max_seq_len)], dtype=torch.float64)
    close(cos, full.cos(), 1e-6)
    close(sin, full.sin(), 1e-6)


def test_model_rope_buffers_and_mla_scale():
    m = micro_model(**YARN)
    freqs = ref_freqs(m.cfg)
    full = torch.tensor([[p * f for f in freqs] for p in range(m.cfg.max_seq_len)], dtype=torch.float64)
    close(m.rope_cos, full.cos(), 1e-6)
    close(m.rope_sin, full.sin(), 1e-6)
    assert m.layers[0].attn.softmax_scale == pytest.approx(ref_scale(m.cfg))
    assert ref_scale(m.cfg) != pytest.approx(m.cfg.qk_head_dim ** -0.5)  # YaRN temperature is on


def test_mla_decoupled_rope_is_relative():
    """Shifting every position by the same offset leaves attention unchanged (RoPE is relative) while
    a different relative layout changes it: the rope part really enters the logits."""
    cfg = micro_cfg()
    torch.manual_seed(3)
    attn = MLA(cfg).double()
    for p in attn.parameters():
        torch.nn.init.normal_(p, 0.0, 0.5 if p.dim() == 2 else 1.0)
    x = torch.randn(1, 5, cfg.dim, dtype=torch.float64)
    cos, sin = precompute_rope(cfg)

    def run(pos):
        pos = torch.tensor([pos])
        return attn(x, cos[pos].double(), sin[pos].double(), None)

    a, b = run([0, 1, 2, 3, 4]), run([20, 21, 22, 23, 24])
    close(a, b, 1e-5)
    c = run([0, 3, 9, 10, 30])
    assert (a - c).abs().max() > 1e-3


# ================================================================ 3. KV cache == full forward

def decode_in_chunks(m, tokens, chunks, absorb=None, pad_mask=None):
    """Feed tokens [B, T] through a cache in chunks of the given sizes; return logits [B, T, W]."""
    cache = m.new_cache(tokens.shape[0], 64)
    out, t = [], 0
    for n in chunks:
        pm = None if pad_mask is None else pad_mask[:, t:t + n]
        out.append(m(tokens[:, t:t + n], cache=cache, absorb=absorb, pad_mask=pm))
        t += n
    assert t == tokens.shape[1] and cache.len == t
    return torch.cat(out, 1), cache


@pytest.mark.parametrize("absorb", [None, True, False])
@pytest.mark.parametrize("chunks", [[5] + [1] * 7, [1] * 12, [3, 2, 4, 1, 2]])
def test_cached_decode_equals_full_forward(absorb, chunks):
    m = micro_model(q_lora_rank=12)
    torch.manual_seed(4)
    tokens = torch.randint(0, m.cfg.vocab_size, (3, 12))
    with torch.no_grad():
        full = m(tokens)
        inc, cache = decode_in_chunks(m, tokens, chunks, absorb)
    close(inc, full, FP32_TOL)
    assert cache.n_real.tolist() == [12, 12, 12] and bool(cache.valid[:, :12].all())
    assert not cache.valid[:, 12:].any()


def test_cached_decode_with_yarn_past_original_len():
    m = micro_model(**YARN)
    torch.manual_seed(5)
    tokens = torch.randint(0, m.cfg.vocab_size, (2, 70))  # crosses original_seq_len = 64
    with torch.no_grad():
        full = m(tokens)
        cache = m.new_cache(2, 80)
        inc = torch.cat([m(tokens[:, :60], cache=cache)] + [m(tokens[:, t:t + 1], cache=cache)
                                                               for t in range(60, 70)], 1)
    close(inc, full, FP32_TOL)


def test_greedy_generation_cached_equals_reforward():
    m = micro_model()
    torch.manual_seed(6)
    prompt = torch.randint(0, m.cfg.vocab_size, (2, 5))
    with torch.no_grad():
        seq = prompt
        for _ in range(8):  # no cache: re-run everything each step
            seq = torch.cat([seq, m(seq)[:, -1].argmax(-1, keepdim=True)], 1)
        cache = m.new_cache(2, 32)
        nxt = m(prompt, cache=cache)[:, -1].argmax(-1, keepdim=True)
        gen = [nxt]
        for _ in range(7):
            nxt = m(nxt, cache=cache)[:, -1].argmax(-1, keepdim=True)
            gen.append(nxt)
    assert torch.equal(torch.cat([prompt] + gen, 1), seq)
    assert len(set(seq[0, 5:].tolist())) > 1 or len(set(seq[1, 5:].tolist())) > 1  # not a constant stream


def left_pad(prompts, pad_id=0):
    T = max(len(p) for p in prompts)
    tokens = torch.full((len(prompts), T), pad_id, dtype=torch.long)
    pad_mask = torch.zeros(len(prompts), T, dtype=torch.bool)
    for i, p in enumerate(prompts):
        tokens[i, T - len(p):] = torch.tensor(p)
        pad_mask[i, T - len(p):] = True
    return tokens, pad_mask


@pytest.mark.parametrize("absorb", [False, True])
def test_ragged_left_padded_prompts(absorb):
    m = micro_model(q_lora_rank=12)
    torch.manual_seed(7)
    V = m.cfg.vocab_size
    prompts = [torch.randint(1, V, (n,)).tolist() for n in (3, 7, 5)]
    conts = torch.randint(1, V, (3, 4))  # the same continuation tokens fed to every row
    tokens, pad_mask = left_pad(prompts, pad_id=V - 1)
    T = tokens.shape[1]
    with torch.no_grad():
        padded = m(tokens, pad_mask=pad_mask, absorb=absorb)  # no cache
        cache = m.new_cache(3, 32)
        pre = m(tokens, pad_mask=pad_mask, cache=cache, absorb=absorb)
        steps = [m(conts[:, j:j + 1], cache=cache, absorb=absorb) for j in range(4)]
        for i, p in enumerate(prompts):
            alone = m(torch.tensor([p + conts[i].tolist()]))[0]  # this prompt alone, no padding
            n = len(p)
            close(padded[i, T - n:], alone[:n], FP32_TOL)
            close(pre[i, T - n:], alone[:n], FP32_TOL)
            close(torch.cat([s[i] for s in steps]), alone[n:], FP32_TOL)
            assert torch.isfinite(padded[i]).all()  # padded rows never hit an all-masked softmax
    assert cache.n_real.tolist() == [3 + 4, 7 + 4, 5 + 4] and cache.len == T + 4
    assert torch.equal(cache.valid[:, :T], pad_mask)


def test_ragged_changing_the_pad_token_changes_nothing():
    m = micro_model()
    torch.manual_seed(8)
    prompts = [[5, 6, 7], [1, 2, 3, 4, 8, 9]]
    a, pm = left_pad(prompts, pad_id=0)
    b, _ = left_pad(prompts, pad_id=17)
    with torch.no_grad():
        la, lb = m(a, pad_mask=pm), m(b, pad_mask=pm)
    close(la[pm], lb[pm], FP32_TOL)


def test_kvcache_index_select_replicates_rows():
    m = micro_model()
    torch.manual_seed(9)
    V = m.cfg.vocab_size
    prompts = [torch.randint(1, V, (n,)).tolist() for n in (4, 6)]
    tokens, pad_mask = left_pad(prompts)
    with torch.no_grad():
        cache = m.new_cache(2, 32)
        first = m(tokens, pad_mask=pad_mask, cache=cache)[:, -1]
        rows = torch.tensor([0, 0, 0, 1, 1])
        big = cache.index_select(rows)
        assert big.batch == 5 and big.len == cache.len and big.n_real.tolist() == [4, 4, 4, 6, 6]

        def greedy(c, nxt, n=6):
            out = []
            for _ in range(n):
                nxt = m(nxt, cache=c)[:, -1].argmax(-1, keepdim=True)
                out.append(nxt)
            return torch.cat(out, 1)

        start = first.argmax(-1, keepdim=True)
        gen_big = greedy(big, start.index_select(0, rows))
        gen_small = greedy(cache, start)  # the original cache is untouched by decoding the copy
    assert torch.equal(gen_big, gen_small.index_select(0, rows))
    # sampled rows diverge independently: feeding different tokens to copies of one row
    with torch.no_grad():
        c2 = m.new_cache(1, 32)
        m(torch.tensor([prompts[0]]), cache=c2)
        c3 = c2.index_select(torch.tensor([0, 0]))
        l3 = m(torch.tensor([[3], [4]]), cache=c3)
        alone3 = m(torch.tensor([prompts[0] + [3]]))[:, -1]
        alone4 = m(torch.tensor([prompts[0] + [4]]))[:, -1]
    close(l3[0, -1], alone3[0], FP32_TOL)
    close(l3[1, -1], alone4[0], FP32_TOL)


# ================================================================ 4. cache size

def test_cache_numel_per_token():
    """kv_lora_rank + qk_rope_head_dim numbers per token per layer. The main layers and the MTP blocks
    keep separate caches (the MTP runs one token behind): together (n_layers + mtp_depth) layers."""
    cfg = micro_cfg(mtp_depth=2)
    cache = KVCache(cfg, batch=2, max_len=10)
    assert cache.numel_per_token() == 3 * (16 + 4)
    assert len(cache.latent) == len(cache.k_rope) == 3
    assert cache.latent[0].shape == (2, 10, 16) and cache.k_rope[0].shape == (2, 10, 4)
    assert KVCache(cfg, 2, 10, n_layers=7).numel_per_token() == 7 * 20
    tiny = preset("tiny")
    m = build_model(tiny)
    main, mtp = m.new_cache(1, 8), m.new_cache(1, 8, mtp=True)
    per_layer = tiny.kv_lora_rank + tiny.qk_rope_head_dim
    assert main.numel_per_token() == tiny.n_layers * per_layer
    assert mtp.numel_per_token() == tiny.mtp_depth * per_layer
    assert main.numel_per_token() + mtp.numel_per_token() == (tiny.n_layers + tiny.mtp_depth) * per_layer
    assert main.latent[0].dtype == m.embed.weight.dtype and main.max_len == 8
    naive = tiny.n_heads * (tiny.qk_head_dim + tiny.v_head_dim)  # what a per-head K/V cache would hold
    assert per_layer < naive


def test_kv_cache_bytes_of_reference_presets(v3):
    assert v3[0]["kv_cache_bytes_bf16"] == 70272  # 576 x 61 x 2 B (V3 §2.1.1: latent + rotary key)
    c16 = count_params(preset("deepseek-v2-lite-16b"))
    assert c16["kv_cache_bytes_bf16"] == 31104
    assert c16["naive_kv_cache_bytes_bf16"] == 276480
    assert v3[0]["naive_kv_cache_bytes_bf16"] == 40960 * 61 * 2


# ================================================================ 5. router

def make_gate(seed=0, **overrides):
    cfg = ModelConfig(**{**dict(dim=16, n_routed_experts=8, n_activated_experts=2, route_scale=2.5), **overrides})
    torch.manual_seed(seed)
    g = Gate(cfg)
    torch.nn.init.normal_(g.weight, 0.0, 0.5)
    return g, torch.randn(64, cfg.dim)


def test_gate_bias_selects_but_never_weighs():
    g, x = make_gate()
    s = torch.sigmoid(x.double() @ g.weight.double().T)  # independent unbiased scores [M, E]
    gates0, idx0, scores0 = g(x)
    close(scores0, s, 1e-6)
    assert not (idx0 == 3).all(dim=1).any()
    g.bias[3] = 10.0  # far above any score gap: expert 3 is always chosen
    gates, idx, scores = g(x)
    assert (idx == 3).any(dim=1).all()
    close(scores, scores0, 0)  # the scores handed back are unbiased
    chosen = s.gather(1, idx)
    close(gates, chosen / chosen.sum(1, keepdim=True) * 2.5, 1e-6)
    close(gates.sum(1), torch.full((64,), 2.5), 1e-6)
    # the other chosen expert is the best unbiased one among the rest
    other = torch.where(idx[:, 0] == 3, idx[:, 1], idx[:, 0])
    best = s.clone()
    best[:, 3] = -1
    assert torch.equal(other, best.argmax(1))


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), k=st.integers(1, 4), scale=st.sampled_from([1.0, 2.5]))
def test_gate_sigmoid_gates_sum_to_route_scale(seed, k, scale):
    g, x = make_gate(seed, n_activated_experts=k, route_scale=scale)
    g.bias.copy_(torch.randn(8) * 0.3)
    gates, idx, _ = g(x)
    s = torch.sigmoid(x.double() @ g.weight.double().T)
    want_idx = (s + g.bias.double()).topk(k, dim=1).indices  # plain biased top-k (no groups)
    assert torch.equal(idx.sort(1).values, want_idx.sort(1).values)
    close(gates.sum(1), torch.full((64,), scale), 1e-6)
    chosen = s.gather(1, idx)
    close(gates, chosen / chosen.sum(1, keepdim=True) * scale, 1e-6)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_gate_group_limited_routing(seed):
    G, L, E, K = 4, 2, 16, 3
    g, x = make_gate(seed, n_routed_experts=E, n_activated_experts=K, n_expert_groups=G, n_limited_groups=L)
    g.bias.copy_(torch.randn(E) * 0.3)
    gates, idx, _ = g(x)
    biased = torch.sigmoid(x.double() @ g.weight.double().T) + g.bias.double()  # [M, E]
    for t in range(x.shape[0]):
        groups = [sorted(biased[t, j * 4:(j + 1) * 4].tolist(), reverse=True) for j in range(G)]
        group_score = [v[0] + v[1] for v in groups]  # sum of the top-2 biased scores
        kept = sorted(range(G), key=lambda j: -group_score[j])[:L]
        allowed = [e for e in range(E) if e // 4 in kept]
        want = sorted(sorted(allowed, key=lambda e: -biased[t, e].item())[:K])
        assert sorted(idx[t].tolist()) == want
        assert all(e // 4 in kept for e in idx[t].tolist())  # masked groups never get tokens


def test_gate_group_limit_changes_selection():
    """The masking has teeth: on these inputs plain top-k would pick experts in masked groups."""
    E, K = 16, 3
    g, x = make_gate(0, n_routed_experts=E, n_activated_experts=K, n_expert_groups=4, n_limited_groups=1)
    _, idx, scores = g(x)
    plain = scores.topk(K, dim=1).indices
    assert (idx // 4 == idx[:, :1] // 4).all()  # one group per token
    assert ((plain // 4) != (plain[:, :1] // 4)).any()


def test_gate_softmax_scoring():
    g, x = make_gate(1, score_func="softmax", route_scale=1.5, n_activated_experts=3)
    gates, idx, scores = g(x)
    p = torch.softmax(x.double() @ g.weight.double().T, dim=1)
    close(scores, p, 1e-6)
    assert torch.equal(idx.sort(1).values, p.topk(3, dim=1).indices.sort(1).values)
    close(gates, p.gather(1, idx) * 1.5, 1e-6)  # softmax: no renormalisation over the chosen
    assert (gates.sum(1) < 1.5 - 1e-3).all()
    # softmax with groups: a group's score is its max
    g, x = make_gate(2, score_func="softmax", n_routed_experts=8, n_activated_experts=2, n_expert_groups=4,
                     n_limited_groups=1)
    _, idx, scores = g(x)
    best_group = scores.view(-1, 4, 2).amax(-1).argmax(-1)
    assert (idx // 2 == best_group.unsqueeze(1)).all()


# ================================================================ 6. aux-loss-free bias update

def make_moe(seed=0, **overrides):
    cfg = ModelConfig(**{**dict(dim=16, moe_inter_dim=8, n_routed_experts=8, n_activated_experts=2,
                                n_shared_experts=1), **overrides})
    torch.manual_seed(seed)
    moe = MoE(cfg)
    for p in moe.parameters():
        torch.nn.init.normal_(p, 0.0, 0.3)
    return moe


def test_update_bias_moves_by_exactly_gamma():
    moe = make_moe()
    moe.update_bias(torch.tensor([5.0, 3.0, 4.0, 4.0, 6.0, 2.0, 4.0, 4.0]), 0.25)  # mean 4
    assert moe.gate.bias.tolist() == [-0.25, 0.25, 0.0, 0.0, -0.25, 0.25, 0.0, 0.0]
    assert moe.gate.bias.dtype == torch.float32
    before = moe.gate.bias.clone()
    moe.update_bias(torch.tensor([0, 0, 0, 0, 0, 0, 0, 16]), 1e-3)  # int loads work too
    delta = (moe.gate.bias - before).double()
    close(delta, torch.tensor([1e-3] * 7 + [-1e-3], dtype=torch.float64), 1e-7)  # fp32 bias
    before = moe.gate.bias.clone()
    moe.update_bias(torch.full((8,), 7.0), 1e-3)  # perfectly balanced: nothing moves
    assert torch.equal(moe.gate.bias, before)


def test_bias_updates_flatten_a_skewed_load():
    moe = make_moe(1).eval()
    torch.manual_seed(1)
    u = torch.nn.functional.normalize(torch.randn(16), dim=0)
    with torch.no_grad():
        moe.gate.weight[0] += 3.0 * u  # expert 0 likes every token below
        moe.gate.weight[1] += 1.5 * u
    x = torch.randn(4, 64, 16) * 0.5 + u

    def imbalance():
        moe.load.zero_()
        with torch.no_grad():
            moe(x)
        load = moe.load.clone()
        assert load.sum() == 4 * 64 * 2
        return load, (load.max() / load.mean()).item()

    _, start = imbalance()
    assert start > 3.0
    for _ in range(300):  # route -> count -> update
        load, _ = imbalance()
        moe.update_bias(load, 0.01)
    _, end = imbalance()
    assert end < 1.5 and end < start / 2.5, (start, end)


def test_transformer_expert_load_and_update_biases():
    m = micro_model()
    torch.manual_seed(10)
    B, T = 2, 9
    tokens = torch.randint(0, m.cfg.vocab_size, (B, T))
    n_moe = (m.cfg.n_layers - m.cfg.n_dense_layers) + m.cfg.mtp_depth
    assert m.expert_load().shape == (n_moe, 4) and not m.expert_load().any()
    with torch.no_grad():
        m(tokens)  # main layers only (no targets: no MTP)
    load = m.expert_load()
    assert load[:2].sum(1).tolist() == [B * T * 2] * 2 and load[2].sum() == 0
    tgt = tokens.clone()
    tgt[:, :2] = -100  # ignored targets are not counted
    m.reset_expert_load()
    assert not m.expert_load().any()
    with torch.no_grad():
        m(tokens, tgt)
    load = m.expert_load()
    assert load[:2].sum(1).tolist() == [B * (T - 2) * 2] * 2
    # the MTP block sees T-1 positions; position i predicts targets[:, i+1], ignored only for i = 0
    assert load[2].sum() == B * (T - 2) * 2
    # per-layer bias moves: +/- gamma from each layer's own load
    before = [mo.gate.bias.clone() for mo in m.moe_layers()]
    m.update_biases(gamma=0.5)
    for mo, b0, l in zip(m.moe_layers(), before, load):
        want = b0 + 0.5 * torch.sign(l.mean() - l)
        assert torch.equal(mo.gate.bias, want.to(mo.gate.bias.dtype))
    before = [mo.gate.bias.clone() for mo in m.moe_layers()]
    m.update_biases()  # default gamma = cfg.bias_update_speed
    for mo, b0, l in zip(m.moe_layers(), before, load):
        close(mo.gate.bias - b0, m.cfg.bias_update_speed * torch.sign(l.mean() - l), 1e-9)  # gamma in fp32
    explicit = torch.zeros(n_moe, 4)
    explicit[:, 0] = 8.0
    before = [mo.gate.bias.clone() for mo in m.moe_layers()]
    m.update_biases(explicit, gamma=0.125)
    for mo, b0 in zip(m.moe_layers(), before):
        close(mo.gate.bias - b0, torch.tensor([-0.125, 0.125, 0.125, 0.125], dtype=torch.float64), 1e-12)


def test_pad_tokens_not_counted_in_load():
    m = micro_model()
    tokens, pad_mask = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]])
    with torch.no_grad():
        m(tokens, pad_mask=pad_mask)
    assert m.expert_load()[:2].sum(1).tolist() == [8 * 2] * 2


# ================================================================ 6b. routing replay (GRPO --routing-replay)

def ref_swiglu(mlp, x):
    return F.silu(x @ mlp.w1.weight.T) * (x @ mlp.w3.weight.T) @ mlp.w2.weight.T


@pytest.mark.parametrize("score_func", ["sigmoid", "softmax"])
def test_moe_replays_given_routes_by_hand(score_func):
    """Given routes, the MoE uses exactly those experts, weighted by the current scores at them
    (normalised as the gate does): here the gate's *worst* K experts, so its own top-k is never used."""
    moe = make_moe(3, score_func=score_func, route_scale=2.5).double()
    x = torch.randn(2, 5, 16, dtype=torch.float64)
    logits = x @ moe.gate.weight.T  # [B, T, E]
    s = logits.sigmoid() if score_func == "sigmoid" else logits.softmax(-1)
    routes = (s + moe.gate.bias).topk(2, dim=-1, largest=False).indices  # [B, T, K]: the bottom 2
    own = (s + moe.gate.bias).topk(2, dim=-1).indices
    assert not (routes.unsqueeze(-1) == own.unsqueeze(-2)).any()  # disjoint from the gate's choice
    y, _ = moe(x, routes=routes)
    for b in range(2):
        for t in range(5):
            g = s[b, t, routes[b, t]]
            g = (g / g.sum() if score_func == "sigmoid" else g) * 2.5
            want = ref_swiglu(moe.shared_experts, x[b, t])
            for k in range(2):
                want = want + g[k] * ref_swiglu(moe.experts[int(routes[b, t, k])], x[b, t])
            close(y[b, t], want, 1e-6)
    assert moe.load.tolist() == torch.bincount(routes.flatten(), minlength=8).double().tolist()
    y.sum().backward()  # the router still learns: its gates come from its scores
    assert moe.gate.weight.grad.abs().sum() > 0


def test_routes_none_is_unchanged_and_own_routes_replay_bit_for_bit():
    """Replaying the routers' own choices reproduces the routed forward exactly (the same ops on the same
    numbers), and routes=None routes as always; the MTP block never takes routes."""
    m = micro_model()
    tokens, pad_mask = left_pad([[1, 2, 3], [4, 5, 6, 7, 8]])
    seen = []
    hooks = [b.ffn.gate.register_forward_hook(lambda mod, inp, out: seen.append(out[1]))
             for b in m.layers if isinstance(b.ffn, MoE)]
    with torch.no_grad():
        plain = m(tokens, pad_mask=pad_mask)
        own = [idx.view(*tokens.shape, -1) for idx in seen]  # [B, T, K] per main MoE layer
        assert len(own) == 2
        replayed = m(tokens, pad_mask=pad_mask, routes=own)
        assert torch.equal(torch.cat(seen[2:]), torch.cat(seen[:2]))  # the gates returned the given routes
        targets = torch.where(pad_mask, tokens, -100).roll(-1, 1)
        assert torch.equal(m(tokens, targets, pad_mask=pad_mask)["total"],
                           m(tokens, targets, pad_mask=pad_mask, routes=own)["total"])  # MTP included
    for h in hooks:
        h.remove()
    assert torch.equal(plain, replayed)


# ================================================================ 7. sequence-wise balance loss

# scores of 3 tokens over 4 experts, chosen by hand; top-2 per token: {0,1}, {1,2}, {0,3}
SCORES = [[0.9, 0.5, 0.25, 0.1],
          [0.25, 0.75, 0.5, 0.1],
          [0.9, 0.1, 0.25, 0.75]]


def hand_balance(rows, alpha, K=2):
    E, T = len(rows[0]), len(rows)
    top = [sorted(range(E), key=lambda i: -r[i])[:K] for r in rows]
    f = [E / (K * T) * sum(i in t for t in top) for i in range(E)]
    P = [sum(r[i] / sum(r) for r in rows) / T for i in range(E)]
    return alpha * sum(fi * pi for fi, pi in zip(f, P))


def test_balance_loss_hand_computed():
    # f = [4/3, 4/3, 2/3, 2/3]; P from the row-normalised scores
    P = [(0.9 / 1.75 + 0.25 / 1.6 + 0.9 / 2.0) / 3, (0.5 / 1.75 + 0.75 / 1.6 + 0.1 / 2.0) / 3,
         (0.25 / 1.75 + 0.5 / 1.6 + 0.25 / 2.0) / 3, (0.1 / 1.75 + 0.1 / 1.6 + 0.75 / 2.0) / 3]
    want = 0.01 * (4 / 3 * P[0] + 4 / 3 * P[1] + 2 / 3 * P[2] + 2 / 3 * P[3])
    assert hand_balance(SCORES, 0.01) == pytest.approx(want)
    moe = make_moe(dim=4, n_routed_experts=4, n_activated_experts=2, seq_aux_alpha=0.01)
    got = moe.balance_loss(torch.tensor([SCORES]))
    assert got.item() == pytest.approx(want, rel=1e-6)
    # two sequences: the mean over sequences; a token mask drops tokens from f, P and T
    rows2 = [[0.1, 0.2, 0.3, 0.9], [0.6, 0.7, 0.1, 0.2], [0.5, 0.45, 0.55, 0.4]]  # no ties in any top-2
    got = moe.balance_loss(torch.tensor([SCORES, rows2]))
    assert got.item() == pytest.approx((want + hand_balance(rows2, 0.01)) / 2, rel=1e-6)
    mask = torch.tensor([[True, False, True], [True, True, True]])
    got = moe.balance_loss(torch.tensor([SCORES, rows2]), mask)
    want_masked = (hand_balance([SCORES[0], SCORES[2]], 0.01) + hand_balance(rows2, 0.01)) / 2
    assert got.item() == pytest.approx(want_masked, rel=1e-6)


@pytest.mark.parametrize("M", [1, 5, 64])
def test_grouped_experts_equal_the_per_expert_dispatch(M):
    """Decoding runs the routed experts as two batched matmuls over stacked weights (MoE.stack_experts,
    grouped_experts); training calls each expert on its slice. Same outputs, same loads (float64)."""
    cfg = preset("small", vocab_size=40)  # 16 experts, top-2 of 2 groups of 4: some experts get nothing
    moe = build_model(cfg, seed=0).double().layers[-1].ffn
    x = torch.randn(M, 1, cfg.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(M))
    with torch.no_grad():
        loop, _ = moe(x)
        load = moe.load.clone()
        moe.stacked = moe.stack_experts()
        grouped, _ = moe(x)
        moe.stacked = None
    assert torch.allclose(grouped, loop, atol=1e-12)
    assert torch.equal(moe.load, 2 * load)


def test_balance_loss_through_moe_forward():
    """Gate weight = identity and inputs = logit(scores): MoE.forward in training mode returns the
    hand-computed loss (biases do not enter f), and 0 in eval mode."""
    moe = make_moe(dim=4, n_routed_experts=4, n_activated_experts=2, seq_aux_alpha=0.01)
    with torch.no_grad():
        moe.gate.weight.copy_(torch.eye(4))
        moe.gate.bias.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))  # changes routing, not the loss
    s = torch.tensor([SCORES])
    x = torch.log(s / (1 - s))  # sigmoid(x) = scores
    moe.train()
    _, bal = moe(x)
    assert bal.item() == pytest.approx(hand_balance(SCORES, 0.01), rel=1e-5)
    moe.eval()
    _, bal = moe(x)
    assert bal.item() == 0.0


def test_balance_loss_gradient_goes_through_p_only():
    moe = make_moe(dim=4, n_routed_experts=4, n_activated_experts=2, seq_aux_alpha=0.5)
    s = torch.tensor([SCORES], dtype=torch.float64, requires_grad=True)
    moe.balance_loss(s).backward()
    # by hand: L = alpha/T * sum_t sum_i f_i s_ti / S_t, f constant -> dL/ds_tj = alpha/T (f_j - sum_i f_i s'_ti) / S_t
    f = [4 / 3, 4 / 3, 2 / 3, 2 / 3]
    want = torch.zeros(3, 4, dtype=torch.float64)
    for t, r in enumerate(SCORES):
        S = sum(r)
        fbar = sum(fi * ri / S for fi, ri in zip(f, r))
        for j in range(4):
            want[t, j] = 0.5 / 3 * (f[j] - fbar) / S
    close(s.grad[0], want, 1e-6)


# ================================================================ 8. MTP alignment and sharing

def test_mtp_alignment_against_hand_table(monkeypatch):
    """Tokens x_0..x_6: input x_0..x_5, targets x_1..x_6 (N = 6).

    depth 1: hidden 0..4, embeddings of x_1..x_5, targets x_2..x_6
    depth 2: hidden 0..3 (of depth 1), embeddings of x_2..x_5, targets x_3..x_6"""
    m = micro_model(mtp_depth=2)
    x = torch.tensor([[10, 11, 12, 13, 14, 15, 16]])
    inp, tgt = x[:, :-1], x[:, 1:]
    table = {1: dict(hidden=[0, 1, 2, 3, 4], embed=[11, 12, 13, 14, 15], target=[12, 13, 14, 15, 16]),
             2: dict(hidden=[0, 1, 2, 3], embed=[12, 13, 14, 15], target=[13, 14, 15, 16])}
    embeds, hnorm_in, block_out, ce_targets = [], {}, {}, []
    m.embed.register_forward_hook(lambda mod, a, out: embeds.append(a[0].clone()))
    for k in (0, 1):
        m.mtp[k].hnorm.register_forward_hook(lambda mod, a, out, k=k: hnorm_in.__setitem__(k, a[0].clone()))
        m.mtp[k].block.register_forward_hook(lambda mod, a, out, k=k: block_out.__setitem__(k, out[0].clone()))
    real_ce = F.cross_entropy

    def spy_ce(logits, target, *args, **kwargs):
        ce_targets.append(target.clone())
        return real_ce(logits, target, *args, **kwargs)

    monkeypatch.setattr(F, "cross_entropy", spy_ce)
    with torch.no_grad():
        _, h = m(inp, return_hidden=True)
        embeds.clear()
        out = m(inp, tgt)
    monkeypatch.undo()
    assert [e.tolist() for e in embeds] == [inp.tolist(), [table[1]["embed"]], [table[2]["embed"]]]
    assert [t.tolist() for t in ce_targets] == [tgt.flatten().tolist(), table[1]["target"], table[2]["target"]]
    close(hnorm_in[0], h[:, table[1]["hidden"]], 0)
    close(hnorm_in[1], block_out[0][:, table[2]["hidden"]], 0)
    # and the losses recomputed by hand from mtp_forward / mtp_logits
    with torch.no_grad():
        pos = torch.arange(6).unsqueeze(0)
        h1, _ = m.mtp_forward(0, h[:, :5], inp[:, 1:], pos[:, :5], None)
        # V3 eq. 24: each depth's sum over its T - k positions is divided by T = 6, the main sequence length
        l1 = -torch.log_softmax(m.mtp_logits(0, h1)[0], -1)[torch.arange(5), tgt[0, 1:]].sum() / 6
        h2, _ = m.mtp_forward(1, h1[:, :4], inp[:, 2:], pos[:, :4], None)
        l2 = -torch.log_softmax(m.mtp_logits(1, h2)[0], -1)[torch.arange(4), tgt[0, 2:]].sum() / 6
    assert out["mtp"][0].item() == pytest.approx(l1.item(), rel=1e-6)
    assert out["mtp"][1].item() == pytest.approx(l2.item(), rel=1e-6)


def test_mtp_shares_embedding_and_head():
    m = micro_model(mtp_depth=2)
    shared = {id(m.embed.weight), id(m.head.weight)}
    mtp_params = list(m.mtp.parameters())
    assert not shared & {id(p) for p in mtp_params}
    assert all(p.shape != m.embed.weight.shape for p in mtp_params)  # no copy either
    assert not any(isinstance(mod, (torch.nn.Embedding,)) for mod in m.mtp.modules())
    _, mtp_hand = hand_param_count(m.cfg)
    assert sum(p.numel() for p in mtp_params) == mtp_hand == count_params(m.cfg)["mtp"]
    # the same objects are called: 1 + D calls each to embed and head per training forward
    calls = {"embed": 0, "head": 0}
    m.embed.register_forward_hook(lambda *a: calls.__setitem__("embed", calls["embed"] + 1))
    m.head.register_forward_hook(lambda *a: calls.__setitem__("head", calls["head"] + 1))
    tokens = torch.randint(0, 32, (1, 8))
    out = m(tokens, tokens)
    assert calls == {"embed": 3, "head": 3}
    # the MTP loss alone trains the shared embedding and head
    m.zero_grad()
    out["mtp"][1].backward()
    assert m.embed.weight.grad.abs().sum() > 0 and m.head.weight.grad.abs().sum() > 0
    # and, through the (not detached) hidden chain, the main layers and the depth-1 module too
    assert m.layers[0].attn.wkv_a.weight.grad.abs().sum() > 0
    assert m.mtp[0].eh_proj.weight.grad.abs().sum() > 0
    assert not any(k.startswith("mtp.") and ("embed" in k or "head" in k) for k in m.state_dict())


@pytest.mark.parametrize("absorb", [True, False])
def test_mtp_own_cache_incremental_equals_full(absorb):
    """At inference the MTP block keeps its own cache and runs one token behind the main model (the
    sampler's way: positions and mask from the cache, then advance_cache)."""
    m = micro_model(q_lora_rank=12)
    torch.manual_seed(11)
    B, T = 2, 10
    tokens = torch.randint(0, m.cfg.vocab_size, (B, T))
    with torch.no_grad():
        _, h = m(tokens, return_hidden=True)
        pos = torch.arange(T - 1).expand(B, -1)
        h1, _ = m.mtp_forward(0, h[:, :T - 1], tokens[:, 1:], pos, None)
        full = m.mtp_logits(0, h1)  # [B, T-1, W]
        mcache = m.new_cache(B, 16, mtp=True)
        assert len(mcache.latent) == m.cfg.mtp_depth
        out, a = [], 0
        for n in (4, 1, 1, 2, 1):
            valid = torch.ones(B, n, dtype=torch.bool)
            p, mask, _ = m.positions_and_mask(B, n, tokens.device, valid, mcache)
            hk, _ = m.mtp_forward(0, h[:, a:a + n], tokens[:, a + 1:a + n + 1], p, mask, valid, cache=mcache,
                                  absorb=absorb)
            m.advance_cache(mcache, valid)
            out.append(m.mtp_logits(0, hk))
            a += n
    assert a == T - 1 and mcache.len == T - 1
    close(torch.cat(out, 1), full, FP32_TOL)


def test_sft_prompt_tokens_count_in_expert_loads():
    """With a loss on completions only, the prompt still goes through the experts: moe_mask makes it count
    in the loads (the bias update) and the balance loss; without it only tokens with a target count."""
    m = micro_model()
    torch.manual_seed(14)
    tokens = torch.randint(1, m.cfg.vocab_size, (2, 9))
    targets = torch.randint(1, m.cfg.vocab_size, (2, 9))
    targets[:, :5] = -100  # a 5-token prompt: no loss there
    targets[1, 7:] = -100  # and right padding in row 1
    real = torch.ones_like(tokens, dtype=torch.bool)
    real[1, 7:] = False
    K, main = m.cfg.n_activated_experts, [layer.ffn for layer in m.layers if isinstance(layer.ffn, MoE)]
    assert len(main) == 2
    with torch.no_grad():
        m.reset_expert_load()
        m(tokens, targets)
        assert all(moe.load.sum().item() == (targets != -100).sum().item() * K for moe in main)
        m.reset_expert_load()
        m(tokens, targets, moe_mask=real)
        assert all(moe.load.sum().item() == real.sum().item() * K for moe in main)


def test_mtp_loss_ignores_left_padding():
    m = micro_model()
    torch.manual_seed(12)
    seq = torch.randint(1, m.cfg.vocab_size, (7,)).tolist()
    inp, tgt, P = seq[:-1], seq[1:], 3
    tokens = torch.tensor([[0] * P + inp])
    targets = torch.tensor([[-100] * P + tgt])  # padding never has a target
    pad_mask = torch.tensor([[False] * P + [True] * len(inp)])
    with torch.no_grad():
        alone = m(torch.tensor([inp]), torch.tensor([tgt]))
        padded = m(tokens, targets, pad_mask=pad_mask)
    assert padded["main"].item() == pytest.approx(alone["main"].item(), rel=1e-6)
    assert padded["mtp"][0].item() == pytest.approx(alone["mtp"][0].item(), rel=1e-6)


# ================================================================ 9. gradients

def test_gradient_reaches_every_parameter():
    torch.manual_seed(13)
    cfg = preset("tiny")
    m = build_model(cfg, seed=0).train()
    B, T = 4, 32  # 128 tokens x 2 slots over 8 experts: every expert of every MoE layer gets tokens
    tokens = torch.randint(0, cfg.vocab_size, (B, T))
    targets = torch.randint(0, cfg.vocab_size, (B, T))
    out = m(tokens, targets)
    assert (m.expert_load() > 0).all(), m.expert_load()  # else an expert could have no gradient
    assert out["balance"].item() > 0
    out["total"].backward()
    missing = [n for n, p in m.named_parameters() if p.grad is None or not (p.grad.abs().sum() > 0)]
    assert missing == []
    names = dict(m.named_parameters())
    assert any(n.startswith("mtp.0.block.ffn.experts.7.") for n in names)  # the MTP experts were checked
    for moe in m.moe_layers():
        assert not moe.gate.bias.requires_grad and moe.gate.bias.grad is None
    assert not any(n.endswith("gate.bias") for n in names)
    assert any(n.endswith("gate.bias") for n in m.state_dict())  # a persistent buffer: saved with the model
    assert not any(n.endswith(".load") for n in m.state_dict())  # the load counter is not



def test_bf16_autocast_forward_and_backward():
    """runs.autocast trains in bf16 on CUDA: the MoE scatter-add must take the experts' bf16 outputs (it
    raised "index_add_(): self (Float) and source (BFloat16)"). CPU autocast runs the same ops."""
    torch.manual_seed(14)
    m = build_model(micro_cfg(), seed=0).train()
    tokens, targets = torch.randint(0, 32, (2, 16)), torch.randint(0, 32, (2, 16))
    with torch.no_grad():
        ref = m(tokens, targets)["main"].item()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = m(tokens, targets)
    assert out["main"].item() == pytest.approx(ref, rel=0.05)  # bf16 rounding, not a different model
    out["total"].backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in m.parameters() if p.grad is not None)

# ================================================================ 10. parameter counts

def test_param_counts_671b(v3):
    counts, seconds, model = v3
    assert abs(counts["total"] / 671.03e9 - 1) < 0.005
    assert 36e9 < counts["activated"] < 38.5e9
    assert abs(counts["mtp"] / 11.6e9 - 1) < 0.02  # the released weights' README: 11.5B
    assert counts["embedding"] == counts["head"] == 129280 * 7168
    total, mtp = hand_param_count(preset("deepseek-v3-671b"))
    assert counts["total"] == total and counts["mtp"] == mtp
    expert = 3 * 7168 * 2048
    assert counts["activated"] == total - 58 * (256 - 8) * expert
    assert all(p.device.type == "meta" for p in model.parameters())  # nothing was allocated
    assert seconds < 30, f"count_params took {seconds:.1f} s"  # ~5 s measured on 2 loaded cores


def test_param_counts_16b():
    t0 = time.perf_counter()
    c = count_params(preset("deepseek-v2-lite-16b"))
    assert time.perf_counter() - t0 < 10
    assert abs(c["total"] / 15.71e9 - 1) < 0.01
    assert c["mtp"] == 0 and c["mtp_activated"] == 0
    assert c["total"] == hand_param_count(preset("deepseek-v2-lite-16b"))[0]
    assert c["activated"] == c["total"] - 26 * (64 - 6) * 3 * 2048 * 1408
    assert 2.3e9 < c["activated"] < 2.8e9  # 2.4-2.7B depending on the embedding


@pytest.mark.parametrize("name", ["tiny", "small", "student"])
def test_param_counts_small_presets_match_formula(name):
    cfg = preset(name)
    c = count_params(cfg)
    total, mtp = hand_param_count(cfg)
    assert (c["total"], c["mtp"]) == (total, mtp)
    m = build_model(cfg)
    assert sum(p.numel() for p in m.parameters()) == total + mtp


# ================================================================ 11. invalid configs

@pytest.mark.parametrize("overrides, field", [
    (dict(n_routed_experts=8, n_expert_groups=3), "n_expert_groups"),
    (dict(n_routed_experts=8, n_activated_experts=9), "n_activated_experts"),
    (dict(n_activated_experts=0), "n_activated_experts"),
    (dict(qk_rope_head_dim=15), "qk_rope_head_dim"),
    (dict(qk_rope_head_dim=0), "qk_rope_head_dim"),
    (dict(n_expert_groups=2, n_limited_groups=3), "n_limited_groups"),
    (dict(n_expert_groups=2, n_limited_groups=0), "n_limited_groups"),
    (dict(score_func="relu"), "score_func"),
    (dict(n_layers=4, n_dense_layers=5), "n_dense_layers"),
    (dict(n_dense_layers=-1), "n_dense_layers"),
    (dict(dim=0), "dim"),
    (dict(q_lora_rank=-1), "q_lora_rank"),
    (dict(mtp_depth=-1), "mtp_depth"),
    (dict(n_routed_experts=8, n_expert_groups=8, n_limited_groups=2), "n_expert_groups"),  # sigmoid: top-2
    (dict(n_routed_experts=8, n_expert_groups=4, n_limited_groups=1, n_activated_experts=3),
     "n_activated_experts"),  # only 2 experts reachable in 1 group
])
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=rf"ModelConfig\.{field}="):
        ModelConfig(**overrides)


def test_config_helpers():
    cfg = preset("small")
    assert ModelConfig.from_dict(cfg.to_dict()) == cfg
    with pytest.raises(ValueError, match="bogus"):
        ModelConfig.from_dict({**cfg.to_dict(), "bogus": 1})
    with pytest.raises(ValueError, match="unknown preset"):
        preset("gpt-5")
    assert preset("tiny", dim=64).dim == 64 and PRESETS["tiny"].dim == 128  # the preset is not mutated
    with pytest.raises(ValueError, match="n_activated_experts"):
        preset("tiny", n_activated_experts=9)  # overrides are validated too
    ModelConfig(n_routed_experts=8, n_expert_groups=8, n_limited_groups=2, score_func="softmax")  # V2 groups OK
    assert not preset("student").is_moe and preset("tiny").is_moe


# ================================================================ 12. build and init

def test_build_on_meta_then_init():
    cfg = micro_cfg()
    meta = build_model(cfg, device="meta")
    assert all(t.device.type == "meta" for t in [*meta.parameters(), *meta.buffers()])
    # to_empty + init_weights must write every tensor: poison the memory first
    meta.to_empty(device="cpu")
    with torch.no_grad():
        for t in [*meta.parameters(), *meta.buffers()]:
            t.fill_(float("nan"))
    meta.init_weights(seed=5)
    for name, t in [*meta.named_parameters(), *meta.named_buffers()]:
        assert torch.isfinite(t).all(), name
    ref = build_model(cfg, seed=5)
    assert all(torch.equal(a, b) for a, b in zip(meta.state_dict().values(), ref.state_dict().values()))
    for name, p in meta.named_parameters():
        if p.dim() == 1:
            assert (p == 1).all(), name  # every 1-D parameter is an RMSNorm weight
    norms = [mod for mod in meta.modules() if isinstance(mod, RMSNorm)]
    # per block attn_norm, ffn_norm, kv_norm (3 main + 1 MTP block); the final norm; enorm, hnorm, norm
    assert len(norms) == 3 * (3 + 1) + 1 + 3
    for mod in meta.moe_layers():
        assert (mod.gate.bias == 0).all() and (mod.load == 0).all()
    cos, sin = precompute_rope(cfg)
    assert torch.equal(meta.rope_cos, cos) and torch.equal(meta.rope_sin, sin)


def test_init_is_seeded_and_scaled():
    cfg = micro_cfg(dim=64, n_layers=4, inter_dim=256)
    a, b, c = build_model(cfg, seed=1), build_model(cfg, seed=1), build_model(cfg, seed=2)
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert not torch.equal(sa["embed.weight"], sc["embed.weight"])
    assert not torch.equal(sa["layers.0.attn.wkv_b.weight"], sc["layers.0.attn.wkv_b.weight"])
    torch.manual_seed(123)
    d = build_model(cfg, seed=1)
    assert torch.equal(d.embed.weight, a.embed.weight)  # the seed, not the global RNG, decides
    std = torch.cat([p.flatten() for n, p in a.named_parameters()
                     if p.dim() == 2 and not n.endswith(("wo.weight", "w2.weight"))]).std().item()
    assert std == pytest.approx(0.02, rel=0.05)
    resid = torch.cat([p.flatten() for n, p in a.named_parameters() if n.endswith(("wo.weight", "w2.weight"))])
    assert resid.std().item() == pytest.approx(0.02 / math.sqrt(2 * 4), rel=0.05)
    assert a.layers[1].ffn.gate.weight.std().item() == pytest.approx(0.02, rel=0.3)


# ================================================================ 13. loss sanity

def test_losses_combine_and_ignore_minus_100():
    m = micro_model(mtp_depth=2).train()
    torch.manual_seed(14)
    B, T, V = 2, 10, m.cfg.vocab_size
    tokens = torch.randint(0, V, (B, T))
    targets = torch.randint(0, V, (B, T))
    targets[0, :4] = -100
    targets[1, 7] = -100
    out = m(tokens, targets)
    assert set(out) == {"main", "mtp", "balance", "total"} and len(out["mtp"]) == 2
    want_total = out["main"] + 0.3 / 2 * (out["mtp"][0] + out["mtp"][1]) + out["balance"]
    assert out["total"].item() == pytest.approx(want_total.item(), rel=1e-6)  # the CE runs in fp32
    assert out["balance"].item() > 0  # training mode: the sequence-wise loss is on
    # main: mean NLL over the kept targets only, by hand
    with torch.no_grad():
        logits = m(tokens)
        nll = [-torch.log_softmax(logits[b, t], -1)[targets[b, t]] for b in range(B) for t in range(T)
               if targets[b, t] != -100]
    assert len(nll) == B * T - 5
    assert out["main"].item() == pytest.approx(torch.stack(nll).mean().item(), rel=1e-6)
    # what stands under an ignored target does not matter
    t2 = targets.clone()
    t2[0, :4] = 0
    assert m(tokens, t2)["main"].item() != pytest.approx(out["main"].item(), rel=1e-6)
    m.eval()
    with torch.no_grad():
        ev = m(tokens, targets)
    assert ev["balance"].item() == 0.0
    assert ev["main"].item() == pytest.approx(out["main"].item(), rel=1e-9)  # no dropout anywhere


def test_loss_without_moe_or_mtp():
    torch.manual_seed(15)
    m = build_model(preset("student"), seed=0)
    tokens = torch.randint(0, 128, (2, 6))
    out = m(tokens, tokens)
    assert out["mtp"] == [] and out["balance"].item() == 0.0
    assert out["total"].item() == pytest.approx(out["main"].item())
    assert m.moe_layers() == [] and m.expert_load().numel() == 0


def test_mtp_concatenates_embedding_then_hidden():
    """eh_proj sees [enorm(Emb(t_{i+k})) ; hnorm(h_i)] (the released V3 weights' order, V3 §2.2 eq. 21)."""
    m = micro_model()
    D = m.cfg.dim
    torch.manual_seed(16)
    tokens = torch.randint(0, m.cfg.vocab_size, (1, 6))
    pos = torch.arange(6).unsqueeze(0)
    h_a, h_b = torch.randn(2, 1, 6, D, dtype=torch.float64)
    with torch.no_grad():
        m.mtp[0].eh_proj.weight[:, D:] = 0  # keep only the first half: the embedding's
        ya, _ = m.mtp_forward(0, h_a, tokens, pos, None)
        yb, _ = m.mtp_forward(0, h_b, tokens, pos, None)
        close(ya, yb, 1e-12)
        m.mtp[0].eh_proj.weight[:, :D] = 0
        m.mtp[0].eh_proj.weight[:, D:] = torch.randn(D, D, dtype=torch.float64) * 0.3
        ya, _ = m.mtp_forward(0, h_a, tokens, pos, None)
        yb, _ = m.mtp_forward(0, h_a, tokens.flip(1), pos, None)  # other tokens, same hidden
        close(ya, yb, 1e-12)
