"""Tests for sampler.py: cached vs uncached greedy, seeding, filtering, stopping, log-probs, and
self-speculative decoding (greedy identity, exact output distribution under sampling)."""
import math
from collections import Counter

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from model import KVCache, MoE, Transformer, build_model, preset
import sampler
from sampler import generate
from tools.bench import bench_sampler

RAGGED = [[3, 1, 4, 1, 5], [9], [2, 6, 5, 3, 5, 8, 9, 7], [3, 1, 4, 1, 5], [7, 7]]  # duplicate on purpose



@pytest.fixture(scope="module")
def tiny64():
    """Random tiny model in float64: argmax comparisons between code paths have no near-ties."""
    return build_model(preset("tiny", vocab_size=16), seed=1).double()


@pytest.fixture(scope="module")
def tiny32():
    return build_model(preset("tiny", vocab_size=32), seed=2)


class Bigram(nn.Module):
    """Mock with Transformer's generation interface: the main logits at position i are
    table[t_i]; the MTP module (when `draft` is given) sees t_{i+1} and drafts from draft[t_{i+1}]."""

    def __init__(self, table: torch.Tensor, draft: torch.Tensor | None = None):
        super().__init__()
        W = table.shape[0]
        self.cfg = preset("tiny", vocab_size=W, kv_lora_rank=2, qk_rope_head_dim=2,
                          mtp_depth=0 if draft is None else 1, max_seq_len=64, original_seq_len=64)
        self.table = nn.Parameter(table.double(), requires_grad=False)  # [W, W]
        self.draft = None if draft is None else draft.double()

    def forward(self, tokens, targets=None, *, pad_mask=None, cache=None, return_hidden=False):
        if cache is not None:
            self.advance_cache(cache, torch.ones_like(tokens, dtype=torch.bool) if pad_mask is None else pad_mask)
        h = F.one_hot(tokens, self.cfg.vocab_size).double()  # [B, T, W]
        return (self.table[tokens], h) if return_hidden else self.table[tokens]

    def new_cache(self, batch, max_len=None, dtype=None, mtp=False):
        return KVCache(self.cfg, batch, max_len or self.cfg.max_seq_len, n_layers=1)

    advance_cache = staticmethod(Transformer.advance_cache)
    positions_and_mask = Transformer.positions_and_mask

    def mtp_forward(self, depth, h_prev, next_tokens, pos, mask, token_mask=None, cache=None, absorb=False):
        return F.one_hot(next_tokens, self.cfg.vocab_size).double(), 0.0

    def mtp_logits(self, depth, h):
        return self.draft[h.argmax(-1)]


def counter_table(W: int, step: int = 1) -> torch.Tensor:
    """Logits that make t+step (mod W) follow t, by a margin of 30 nats."""
    return 30.0 * F.one_hot((torch.arange(W) + step) % W, W).double()


def completions(out) -> list[list[int]]:
    return [[t for t, m in zip(row, mask) if m] for row, mask in zip(out.tokens.tolist(), out.mask.tolist())]


def greedy_reference(model, prompt: list[int], n: int) -> list[int]:
    """The independent path: re-run the whole unpadded sequence every step, no cache."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(prompt):]


# ---------------------------------------------------------------- plain generation


def test_cached_greedy_equals_uncached_reforward(tiny64):
    out = generate(tiny64, RAGGED, num_samples=3, max_new_tokens=12, temperature=0.0, eos_id=-1, pad_id=0)
    assert out.tokens.shape == (15, 12) and out.prompt.shape == (15, 8)
    refs = {tuple(p): greedy_reference(tiny64, p, 12) for p in RAGGED}
    for i, p in enumerate(RAGGED):
        ref = refs[tuple(p)]
        for row in range(3 * i, 3 * i + 3):
            assert out.tokens[row].tolist() == ref, f"prompt {i} row {row}"
            assert out.prompt[row][out.prompt_mask[row]].tolist() == p  # left padded, prompt-major
            assert not out.prompt_mask[row, : 8 - len(p)].any()
    assert out.mask.all() and out.truncated.all()


def test_seeded_generator_reproduces(tiny32):
    def run(seed, **kw):
        return generate(tiny32, RAGGED, num_samples=2, max_new_tokens=10, temperature=1.0, top_p=0.9,
                        eos_id=5, pad_id=0, generator=torch.Generator().manual_seed(seed), **kw)

    for spec in (False, True):
        a, b, c = run(0, speculative=spec), run(0, speculative=spec), run(1, speculative=spec)
        assert torch.equal(a.tokens, b.tokens) and torch.equal(a.logprobs, b.logprobs)
        assert (a.proposed, a.accepted) == (b.proposed, b.accepted)
        assert not torch.equal(a.tokens, c.tokens)


@pytest.mark.parametrize("per_prompt", [False, True])
def test_compacting_finished_rows_changes_nothing(tiny64, monkeypatch, per_prompt):
    """Finished rows dropped from the batch (every step) or riding along to the end: the same samples,
    since each row's uniforms depend only on its generator and the step (float64: no float ties)."""
    def run(compact_at):
        monkeypatch.setattr(sampler, "COMPACT_AT", compact_at)
        gen = ([torch.Generator().manual_seed(i) for i in range(len(RAGGED))] if per_prompt
               else torch.Generator().manual_seed(0))
        return generate(tiny64, RAGGED, num_samples=3, max_new_tokens=12, temperature=1.0, top_p=0.95,
                        eos_id=5, pad_id=0, generator=gen)

    never, always = run(0.0), run(1.0)
    lengths = never.mask.sum(1)
    assert lengths.min() < 12 and lengths.max() == 12  # rows finished at different steps
    assert torch.equal(never.tokens, always.tokens) and torch.equal(never.mask, always.mask)
    assert torch.allclose(never.logprobs, always.logprobs, atol=1e-9)


def nucleus(logits: list[float], T: float, top_k: int, top_p: float) -> dict[int, float]:
    """Reference filter in plain Python: {token: probability} of the sampling distribution."""
    order = sorted(range(len(logits)), key=lambda i: -logits[i])[: top_k or None]
    z = sum(math.exp(logits[i] / T) for i in order)
    probs, mass = {}, 0.0
    for i in order:
        if mass >= top_p:
            break
        probs[i] = math.exp(logits[i] / T) / z
        mass += probs[i]
    return {i: p / mass for i, p in probs.items()}


@pytest.mark.parametrize("top_k, top_p", [(3, 1.0), (0, 0.7), (5, 0.8)])
def test_top_k_top_p_emit_only_allowed_tokens(top_k, top_p):
    base = torch.tensor([2.0, 1.5, 1.0, 0.5, 0.0, -0.5, -1.0, -2.0])
    allowed = set(nucleus(base.tolist(), 0.9, top_k, top_p))
    assert 1 <= len(allowed) < 8
    # the draft prefers exactly the tokens the main model forbids
    model = Bigram(base.expand(8, 8).clone(), draft=base.flip(0).expand(8, 8).clone())
    for spec in (False, True):
        out = generate(model, [[0], [1, 2]], num_samples=300, max_new_tokens=6, temperature=0.9, top_k=top_k,
                       top_p=top_p, eos_id=-1, pad_id=0, generator=torch.Generator().manual_seed(0),
                       speculative=spec)
        assert set(out.tokens.unique().tolist()) == allowed


@pytest.mark.parametrize("speculative, draft_step", [(False, 1), (True, 1), (True, 2)])
def test_stop_sequences_eos_and_max_new_tokens(speculative, draft_step):
    # a counting model (t -> t+1); the draft is always right (step 1) or always wrong (step 2)
    model = Bigram(counter_table(12), draft=counter_table(12, draft_step))
    prompts = [[0], [7], [2, 3], [5], [9, 1], [4]]
    out = generate(model, prompts, max_new_tokens=6, temperature=0.0, eos_id=11, pad_id=0,
                   stop_sequences=[[3, 4], [99, 98, 97]], speculative=speculative)
    assert completions(out) == [
        [1, 2, 3, 4],  # stop sequence, kept
        [8, 9, 10, 11],  # EOS, kept
        [4, 5, 6, 7, 8, 9],  # the prompt's 3 does not start a stop sequence: truncated
        [6, 7, 8, 9, 10, 11],  # EOS on the last allowed token: finished, not truncated
        [2, 3, 4],
        [5, 6, 7, 8, 9, 10],
    ]
    assert out.truncated.tolist() == [False, False, True, False, False, True]
    assert (out.tokens[~out.mask] == 0).all() and (out.logprobs[~out.mask] == 0).all()
    assert out.mask.sum(1).tolist() == [len(c) for c in completions(out)]
    assert (out.mask[:, :-1] >= out.mask[:, 1:]).all()  # no token after a stop
    if speculative:
        assert out.proposed > 0
        assert out.accepted == (0 if draft_step == 2 else out.proposed)
    one = generate(model, [[3], [10]], max_new_tokens=1, temperature=0.0, eos_id=11, pad_id=0,
                   stop_sequences=[[4]], speculative=speculative)
    assert completions(one) == [[4], [11]] and not one.truncated.any()


@pytest.mark.parametrize("speculative", [False, True])
def test_logprobs_match_full_forward(tiny32, speculative):
    T = 0.7
    out = generate(tiny32, RAGGED, num_samples=2, max_new_tokens=14, temperature=T, top_k=12, top_p=0.9,
                   eos_id=3, pad_id=0, generator=torch.Generator().manual_seed(3), speculative=speculative)
    assert out.logprobs.dtype == torch.float32
    for row, comp in enumerate(completions(out)):
        prompt = RAGGED[row // 2]
        logits = tiny32(torch.tensor([prompt + comp]))[0]  # [P_i + n, W], naive MLA path, no cache
        ref = F.log_softmax(logits[len(prompt) - 1:-1] / T, dim=-1).gather(1, torch.tensor(comp)[:, None])[:, 0]
        assert torch.allclose(out.logprobs[row, : len(comp)], ref, atol=1e-5, rtol=0), row


def test_generate_leaves_model_state_alone(tiny32):
    tiny32.train()
    loads = [m.load.clone() for m in tiny32.modules() if isinstance(m, MoE)]
    generate(tiny32, RAGGED, max_new_tokens=4, eos_id=-1, pad_id=0, speculative=True)
    assert tiny32.training
    assert all(torch.equal(a, m.load) for a, m in zip(loads, (m for m in tiny32.modules() if isinstance(m, MoE))))
    tiny32.eval()


def test_bad_arguments():
    model, kw = Bigram(counter_table(4)), dict(eos_id=1, pad_id=0)  # max_seq_len 64
    with pytest.raises(ValueError, match="max_seq_len"):
        generate(model, [[1] * 60], max_new_tokens=5, **kw)
    generate(model, [[1] * 60], max_new_tokens=4, **kw)  # exactly fits
    with pytest.raises(ValueError, match="mtp_depth"):
        generate(model, [[1]], max_new_tokens=4, speculative=True, **kw)
    for bad in (dict(prompts=[[1], []]), dict(top_p=0.0), dict(temperature=-1.0), dict(num_samples=0)):
        with pytest.raises(ValueError):
            generate(model, **({"prompts": [[1]], "max_new_tokens": 4} | kw | bad))


# ---------------------------------------------------------------- speculative decoding


def assert_same_generation(a, b):
    assert torch.equal(a.tokens, b.tokens) and torch.equal(a.mask, b.mask)
    assert torch.equal(a.truncated, b.truncated)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-6, rtol=0)


def greedy_draft_counts(model, prompts, out) -> tuple[int, int]:
    """(proposed, accepted) that greedy self-speculation must report, recomputed from the final
    sequences with an uncached training-style MTP forward: the draft for t_{e+1} is the MTP's
    argmax at position e-1 (input h_{e-1}, t_e); accepted -> two tokens emitted, else one."""
    proposed = accepted = 0
    for prompt, comp in zip(prompts, completions(out)):
        seq = torch.tensor([prompt + comp])  # [1, S]
        _, h = model(seq, return_hidden=True)
        pos = torch.arange(seq.shape[1] - 1).unsqueeze(0)
        hk, _ = model.mtp_forward(0, h[:, :-1], seq[:, 1:], pos, None)
        drafts = model.mtp_logits(0, hk)[0].argmax(-1).tolist()  # drafts[i] guesses seq[i + 2]
        e, s = len(prompt), seq[0].tolist()  # e: index of the last emitted token
        while e - len(prompt) + 1 < len(comp):
            proposed += 1
            hit = drafts[e - 1] == s[e + 1]
            accepted += hit
            e += 2 if hit else 1
    return proposed, accepted


def test_speculative_greedy_identical_random_mtp(tiny64):
    # random MTP: most drafts are rejected, so rows desynchronise through invalid cache columns
    kw = dict(num_samples=2, max_new_tokens=24, temperature=0.0, pad_id=0)
    for eos, stops in ((-1, ()), (12, [[2, 3]])):
        plain = generate(tiny64, RAGGED + [[4]], eos_id=eos, stop_sequences=stops, **kw)
        spec = generate(tiny64, RAGGED + [[4]], eos_id=eos, stop_sequences=stops, speculative=True, **kw)
        assert_same_generation(plain, spec)
        assert 0 < spec.accepted < 0.5 * spec.proposed
        rows = [p for p in RAGGED + [[4]] for _ in range(2)]
        assert (spec.proposed, spec.accepted) == greedy_draft_counts(tiny64, rows, spec)
    single = generate(tiny64, [[5], [6]], max_new_tokens=9, temperature=0.0, eos_id=-1, pad_id=0, speculative=True)
    assert [greedy_reference(tiny64, p, 9) for p in ([5], [6])] == single.tokens.tolist()  # P = 1: no MTP prefill


@pytest.fixture(scope="module")
def trained():
    """The tiny model after ~25 AdamW steps on a period-9 sequence: main head and MTP both
    learn it, so drafts are mostly accepted (in float64 for the exact comparison)."""
    pattern = torch.tensor([1, 5, 2, 9, 4, 7, 3, 12, 6])
    model = build_model(preset("tiny", vocab_size=16), seed=0)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(0)
    for _ in range(25):
        offset = torch.randint(0, 9, (8, 1), generator=gen)
        seq = pattern[(offset + torch.arange(25)) % 9]  # [8, 25]
        loss = model(seq[:, :-1], seq[:, 1:])["total"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval().double()


def test_speculative_greedy_identical_trained_mtp(trained):
    # on-pattern prompts, and off-pattern ones whose first drafts are likely wrong
    prompts = [[1, 5, 2], [9], [4, 7, 3, 12, 6, 1], [0, 11], [3, 3, 3, 3], [13, 14, 15, 8]]
    kw = dict(num_samples=2, max_new_tokens=30, temperature=0.0, pad_id=0)
    for eos, stops in ((-1, ()), (6, [[9, 4, 7]])):
        plain = generate(trained, prompts, eos_id=eos, stop_sequences=stops, **kw)
        spec = generate(trained, prompts, eos_id=eos, stop_sequences=stops, speculative=True, **kw)
        assert_same_generation(plain, spec)
        assert spec.accepted > 0.8 * spec.proposed
        rows = [p for p in prompts for _ in range(2)]
        assert (spec.proposed, spec.accepted) == greedy_draft_counts(trained, rows, spec)
    assert completions(plain)[0][:9] == [9, 4, 7]  # it did learn the pattern (and stopped on it)


def exact_distribution(table, prompt_last, L, eos, T, top_k, top_p) -> dict[tuple, float]:
    """{completion: probability} for a Bigram model: every sequence of <= L tokens ending at EOS or L."""
    dists = [nucleus(row.tolist(), T, top_k, top_p) for row in table]
    out = {}
    def walk(prefix, last, prob):
        if len(prefix) == L or (prefix and prefix[-1] == eos):
            out[tuple(prefix)] = prob
            return
        for t, p in dists[last].items():
            walk(prefix + [t], t, prob * p)
    walk([], prompt_last, 1.0)
    return out


def chi_square_pvalue(observed: Counter, expected: dict, n: int) -> float:
    """Pearson's test; cells expected below 5 are pooled. An impossible completion fails outright."""
    assert set(observed) <= set(expected), set(observed) - set(expected)
    big = [k for k, p in expected.items() if n * p >= 5]
    obs = [observed[k] for k in big] + [n - sum(observed[k] for k in big)]
    exp = [n * expected[k] for k in big] + [n - sum(n * expected[k] for k in big)]
    if exp[-1] < 1e-9:  # nothing pooled
        obs, exp = obs[:-1], exp[:-1]
    chi2 = sum((o - e) ** 2 / e for o, e in zip(obs, exp))
    df = len(obs) - 1
    return float(torch.special.gammaincc(torch.tensor(df / 2, dtype=torch.float64),
                                         torch.tensor(chi2 / 2, dtype=torch.float64)))


@pytest.mark.parametrize("T, top_k, top_p", [(1.0, 0, 1.0), (0.7, 3, 1.0), (1.3, 0, 0.8)])
def test_speculative_sampling_distribution_is_exact(T, top_k, top_p):
    """Three generated tokens (the first from the prefill, then a draft, its verdict and a bonus),
    20,000 samples for each of two prompts, compared with the exact distribution of plain
    sampling by a chi-square test at p > 1e-4: a correct sampler fails one comparison with
    probability < 1e-4 over seeds (the seed is fixed, so the test itself is deterministic).
    Plain sampling goes through the same test, so the reference itself is checked too."""
    g = torch.Generator().manual_seed(0)
    table = 1.5 * torch.randn(5, 5, generator=g, dtype=torch.float64)  # main model p
    draft = 1.5 * torch.randn(5, 5, generator=g, dtype=torch.float64)  # MTP q: often disagrees
    model = Bigram(table, draft)
    n, L, eos = 20_000, 3, 4
    for spec in (False, True):
        out = generate(model, [[1], [0, 3]], num_samples=n, max_new_tokens=L, temperature=T, top_k=top_k,
                       top_p=top_p, eos_id=eos, pad_id=0, generator=torch.Generator().manual_seed(7),
                       speculative=spec)
        comps = completions(out)
        for i, last in enumerate((1, 3)):
            expected = exact_distribution(table, last, L, eos, T, top_k, top_p)
            observed = Counter(tuple(c) for c in comps[i * n:(i + 1) * n])
            assert chi_square_pvalue(observed, expected, n) > 1e-4, (spec, i)
        if spec:
            assert 0.2 * out.proposed < out.accepted < 0.9 * out.proposed  # both branches exercised


def test_bench_sampler_rows(tiny32):
    rows = bench_sampler(tiny32, batch_sizes=(1, 3), new_tokens=3, prompt_len=8, no_cache_max_batch=2)
    assert [r["batch"] for r in rows] == [1, 3]
    assert rows[0]["cache_speedup"] > 0 and rows[1]["no_cache_tok_s"] is None and "skipped" in rows[1]["note"]
    assert all(0 <= r["acceptance"] <= 1 and r["spec_tok_s"] > 0 for r in rows)
