"""GRPO: advantages and loss against hand-computed numbers, GRPO's invariants (advantages centred per group, ratio 1 at the first inner step, k3 KL >= 0), a tiny
end-to-end run on a trivially learnable reward, exact resume, and the R1-Zero pipeline in smoke mode."""

import copy
import dataclasses
import json
import math
from dataclasses import replace

import pytest
import torch

import r1
import sampler
import train_grpo
from data import default_tokenizer
from model import MoE, build_model, preset
from runs import World
from train_grpo import GRPOConfig, completion_logprobs, group_advantages, grpo_loss, rollout
from conftest import SMALL  # noqa: E402




@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def small_model(tok, seed=0):
    return build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=seed)


# ------------------------------------------------------------------ advantages


def test_group_advantages_by_hand():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0])
    a = group_advantages(r, G=2, scale="group")
    s = math.sqrt(0.5) + 1e-4  # unbiased std of {1, 0}, plus the eps that keeps equal groups at 0/eps = 0
    assert torch.allclose(a, torch.tensor([0.5 / s, -0.5 / s, -0.5 / s, 0.5 / s, 0.0, 0.0]))
    a = group_advantages(r, G=2, scale="none")
    assert torch.allclose(a, torch.tensor([0.5, -0.5, -0.5, 0.5, 0.0, 0.0]))
    a = group_advantages(torch.tensor([1.0, 2.0, 3.0]), G=3, scale="none")
    assert torch.allclose(a, torch.tensor([-1.0, 0.0, 1.0]))


def test_equal_rewards_give_zero_advantage():
    a = group_advantages(torch.tensor([1.0] * 4 + [0.0] * 4), G=4)
    assert torch.equal(a, torch.zeros(8))


# ------------------------------------------------------------------ the loss, by hand


def hand_terms(logp, old, adv, eps_lo, eps_hi, beta=0.0, ref=None):
    """Per-token objective terms with plain Python floats."""
    out = []
    for i in range(len(logp)):
        row = []
        for t in range(len(logp[i])):
            ratio = math.exp(logp[i][t] - old[i][t])
            clipped = min(max(ratio, 1 - eps_lo), 1 + eps_hi)
            term = min(ratio * adv[i], clipped * adv[i])
            if ref is not None:
                d = ref[i][t] - logp[i][t]
                term -= beta * (math.exp(d) - d - 1)
            row.append(term)
        out.append(row)
    return out


LOGP = [[-0.5, -1.0, -2.0], [-0.1, -0.3, -0.7]]
OLD = [[-0.7, -0.8, -2.0], [-0.4, -0.3, -0.2]]
REF = [[-0.6, -1.2, -1.5], [-0.2, -0.1, -0.9]]
ADV = [1.5, -0.5]
MASK = [[1, 1, 0], [1, 1, 1]]


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
@pytest.mark.parametrize("beta", [0.0, 0.04])
def test_loss_matches_hand_computation(loss_type, beta):
    terms = hand_terms(LOGP, OLD, ADV, 0.2, 0.28, beta, REF)
    masked = [[terms[i][t] * MASK[i][t] for t in range(3)] for i in range(2)]
    if loss_type == "grpo":
        expected = -sum(sum(masked[i]) / sum(MASK[i]) for i in range(2)) / 2
    elif loss_type == "dapo":
        expected = -sum(map(sum, masked)) / sum(map(sum, MASK))
    else:
        expected = -sum(map(sum, masked)) / (2 * 10)
    loss, stats = grpo_loss(torch.tensor(LOGP), torch.tensor(OLD), torch.tensor(ADV), torch.tensor(MASK),
                            ref_logp=torch.tensor(REF), beta=beta, epsilon=0.2, epsilon_high=0.28,
                            loss_type=loss_type, max_len=10)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    # clip fraction: tokens where the clipped branch was taken (ratio e^0.2 > 1.28 with A > 0? no:
    # 1.2214 < 1.28; row 2 token 1: ratio e^0.3 = 1.35 with A < 0 -> min picks unclipped; token 3: e^-0.5)
    hand_clip = sum(1 for i in range(2) for t in range(3) if MASK[i][t] and
                    math.exp(LOGP[i][t] - OLD[i][t]) * ADV[i] > min(max(math.exp(LOGP[i][t] - OLD[i][t]), 0.8), 1.28) * ADV[i])
    assert stats["clip_frac"] == pytest.approx(hand_clip / 5)


def test_ratio_one_and_no_clipping_at_the_first_inner_step(tok):
    """pi_old is the sampler's log-prob: the training forward must reproduce it exactly."""
    model = small_model(tok)
    cfg = GRPOConfig(prompts_per_step=3, num_generations=2, max_completion_length=12, tasks=("add", "linear"))
    ro, *_ = rollout(model, tok, cfg, step=0, device=torch.device("cpu"))
    model.train()
    logp, _ = completion_logprobs(model, ro, torch.arange(len(ro.texts)), cfg.temperature)
    m = ro.completion_mask
    assert torch.allclose(logp[m], ro.old_logp[m], atol=1e-4)
    adv = torch.randn(len(ro.texts))
    _, stats = grpo_loss(logp, ro.old_logp, adv, m)
    assert stats["clip_frac"] == 0.0
    assert stats["ratio"] == pytest.approx(1.0, abs=1e-4)


def test_kl_is_zero_at_reference_and_never_negative():
    torch.manual_seed(0)
    logp = -torch.rand(4, 6) * 3
    mask = torch.ones(4, 6)
    _, stats = grpo_loss(logp, logp, torch.zeros(4), mask, ref_logp=logp.clone(), beta=0.1)
    assert stats["kl"] == pytest.approx(0.0, abs=1e-7)
    for _ in range(20):
        ref = -torch.rand(4, 6) * 3
        _, stats = grpo_loss(logp, logp, torch.zeros(4), mask, ref_logp=ref, beta=0.1)
        assert stats["kl"] >= 0.0


def test_equal_rewards_give_zero_policy_gradient():
    logp = torch.randn(4, 5, requires_grad=True)
    adv = group_advantages(torch.ones(4), G=4)
    loss, _ = grpo_loss(logp, logp.detach(), adv, torch.ones(4, 5))
    loss.backward()
    assert torch.count_nonzero(logp.grad) == 0


def test_bad_configs_are_clear():
    with pytest.raises(r1.R1Error, match="num-generations"):
        GRPOConfig(num_generations=1)
    with pytest.raises(r1.R1Error, match="loss-type"):
        GRPOConfig(loss_type="ppo")


# ------------------------------------------------------------------ the loop


def seven_reward(text, answer, numbers=None, **kw):
    """A trivially learnable reward: the share of '7' characters in the completion."""
    r = text.count("7") / max(len(text), 1)
    return r, {"accuracy": r, "format": 0.0, "consistency": 0.0, "overlong": 0.0, "reward": r}


def test_beta_zero_builds_no_reference_and_reward_rises(tok, tmp_path, monkeypatch):
    monkeypatch.setattr(train_grpo.rewards, "reward", seven_reward)
    monkeypatch.setattr(train_grpo, "make_reference", lambda *a: pytest.fail("beta=0 built a reference model"))
    model = small_model(tok)
    cfg = GRPOConfig(steps=30, prompts_per_step=4, num_generations=8, max_completion_length=8,
                     learning_rate=1e-2, beta=0.0, eval_every=0, ckpt_every=0, dump_every=0, eval_n=2, eval_k=1)
    train_grpo.train_grpo(tmp_path, model, tok, cfg, torch.device("cpu"), quiet=True)
    rows = [r for r in train_grpo.Metrics(tmp_path / "metrics.jsonl").read() if "eval" not in r]
    first = sum(r["reward"] for r in rows[:5]) / 5
    last = sum(r["reward"] for r in rows[-5:]) / 5
    assert last > first + 0.2, (first, last)


def test_beta_positive_uses_reference_and_logs_kl(tok, tmp_path):
    model = small_model(tok)
    cfg = GRPOConfig(steps=2, prompts_per_step=2, num_generations=4, max_completion_length=8, beta=0.1,
                     dynamic_sampling=False, eval_every=0, ckpt_every=0, dump_every=0, eval_n=2, eval_k=1)
    last = train_grpo.train_grpo(tmp_path, model, tok, cfg, torch.device("cpu"), quiet=True)
    assert last["kl"] is not None and last["kl"] >= 0
    assert last["load_max_over_mean"] >= 1.0  # the MTP block (idle in GRPO) must not drag it below 1
    assert 0.0 <= last["routing_mismatch"] <= 1.0


def test_routing_replay_zeroes_the_routing_mismatch(tok, tmp_path, monkeypatch):
    """A router moved between sampling and training (random gate biases, far above the tiny score gaps):
    without replay the training forward picks other experts; with it, exactly the sampled ones."""
    real_rollout = train_grpo.rollout

    def rollout_then_move_the_routers(model, *a, **kw):
        out = real_rollout(model, *a, **kw)
        gen = torch.Generator().manual_seed(0)
        with torch.no_grad():
            for m in model.moe_layers():
                m.gate.bias += torch.randn(m.gate.bias.shape, generator=gen)
        return out
    monkeypatch.setattr(train_grpo, "rollout", rollout_then_move_the_routers)
    mismatch = {}
    for replay in (False, True):
        cfg = GRPOConfig(steps=1, prompts_per_step=2, num_generations=4, max_completion_length=8, beta=0.1,
                         dynamic_sampling=False, eval_every=0, ckpt_every=0, dump_every=0, eval_n=2, eval_k=1,
                         routing_replay=replay)
        (tmp_path / str(replay)).mkdir()
        last = train_grpo.train_grpo(tmp_path / str(replay), small_model(tok), tok, cfg, torch.device("cpu"),
                                     quiet=True)
        mismatch[replay] = last["routing_mismatch"]
    assert mismatch[False] > 0.0
    assert mismatch[True] == 0.0


def test_replayed_routes_are_the_sampled_ones(tok, monkeypatch):
    """Rollout.routes, column by column, against the gates' outputs read independently while sampling:
    prompt columns from the prefill of the row's prompt (two rows' prompts are the same: one prefill),
    completion column s from decode step s. Columns no forward read are not scored and not checked."""
    problems = train_grpo.rollout_problems(GRPOConfig(prompts_per_step=2), 0)
    monkeypatch.setattr(train_grpo, "rollout_problems", lambda cfg, step, refill=0: [problems[0], problems[1], problems[0]])
    model = small_model(tok)
    calls = []  # per forward of the one main MoE layer: its gate's expert ids [M, K]
    moe = [b.ffn for b in model.layers if isinstance(b.ffn, MoE)]
    assert len(moe) == 1
    hook = moe[0].gate.register_forward_hook(lambda mod, inp, out: calls.append(out[1]))
    cfg = GRPOConfig(prompts_per_step=3, num_generations=2, max_completion_length=10, routing_replay=True)
    monkeypatch.setattr(sampler, "COMPACT_AT", 0.0)  # every decode step holds every row (compaction: below)
    ro, *_ = rollout(model, tok, cfg, step=0, device=torch.device("cpu"))
    hook.remove()
    P, G, K = ro.prompt_len, 2, 2
    prefill = calls[0].view(2, P, K)  # two distinct prompts: prompt 2 is prompt 0 again
    assert ro.routes[0].shape == (*ro.tokens.shape, K)
    for r in range(len(ro.texts)):
        assert torch.equal(ro.routes[0][r, :P], prefill[[0, 1, 0][r // G]])
        for s, step in enumerate(calls[1:]):
            if ro.completion_mask[r, s]:
                assert torch.equal(ro.routes[0][r, P + s], step[r])


def test_replayed_routes_survive_compaction(tok, monkeypatch):
    """The sampler drops finished rows from its batch; the recorder puts each step's experts back on
    the right rows: the same routes on every scored column as when no row ever leaves."""
    model = small_model(tok).double()  # float64: the two batch shapes agree far below any routing tie
    with torch.no_grad():  # make EOS likely in some states, so rows finish at different steps
        model.head.weight[tok.eos_id] += 0.3 * torch.randn(model.cfg.dim, generator=torch.Generator().manual_seed(0))
    cfg = GRPOConfig(prompts_per_step=3, num_generations=4, max_completion_length=12, routing_replay=True)
    runs = {}
    for at in (0.0, 1.0):
        monkeypatch.setattr(sampler, "COMPACT_AT", at)
        runs[at] = rollout(model, tok, cfg, step=0, device=torch.device("cpu"))
    (a, *_, a_steps), (b, *_, b_steps) = runs[0.0], runs[1.0]
    lengths = a.completion_mask.sum(1)
    assert lengths.min() < lengths.max() == 12  # rows left the batch at different steps
    assert torch.equal(a.tokens, b.tokens)
    P = a.prompt_len
    scored = torch.cat([a.pad_mask[:, 1:P + 1], a.completion_mask[:, 1:]], 1)  # column j predicts a real j+1
    for ra, rb in zip(a.routes, b.routes):
        assert torch.equal(ra[:, :-1][scored], rb[:, :-1][scored])
    for sa, sb in zip(a_steps, b_steps):
        assert torch.equal(sa[a.completion_mask[:, 1:sa.shape[1] + 1]], sb[a.completion_mask[:, 1:sb.shape[1] + 1]])


@pytest.mark.parametrize("loss_type", ["grpo", "dapo", "dr_grpo"])
def test_micro_batches_add_up_to_the_mini_batch(tok, loss_type):
    """One forward over the whole (padded) rollout or micro-batches sorted by length and trimmed: the same
    gradient (read through one SGD step of lr 1) and the same stats. Float64 model; its norms and router
    still round to fp32 (as the reference does), so agreement is to ~1e-7 of the gradient, checked at 1e-5."""
    base = small_model(tok).double()
    with torch.no_grad():  # rows of different lengths
        base.head.weight[tok.eos_id] += 0.3 * torch.randn(base.cfg.dim, generator=torch.Generator().manual_seed(0))
    cfg = GRPOConfig(prompts_per_step=3, num_generations=4, max_completion_length=12, loss_type=loss_type,
                     dynamic_sampling=False, grad_clip=1e9)
    ro, *_ = rollout(base, tok, cfg, step=0, device=torch.device("cpu"))
    ro.advantages = torch.randn(len(ro.texts), generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    lengths = ro.completion_mask.sum(1)
    assert lengths.min() < lengths.max()
    steps, stats = [], []
    for size in (len(ro.texts), 5):  # one micro-batch, then three
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=1.0)
        stats.append(train_grpo.grpo_update(model, None, opt, ro, None, replace(cfg, microbatch_size=size), 0,
                                            torch.device("cpu"), World()))
        steps.append([(p - p0).detach() for p, p0 in zip(model.parameters(), base.parameters())])
    scale = max(float(d.abs().max()) for d in steps[0])
    assert scale > 0 and sum(bool(d.any()) for d in steps[0]) > 10
    for d1, d3 in zip(*steps):
        assert torch.allclose(d1, d3, rtol=1e-5, atol=1e-5 * scale)
    for k in ("loss", "clip_frac", "ratio", "entropy"):
        assert stats[0][k] == pytest.approx(stats[1][k], rel=1e-5, abs=1e-7), k


def test_routing_replay_needs_an_moe_model():
    dense = preset("student", vocab_size=100)
    with pytest.raises(r1.R1Error, match="routing-replay"):
        GRPOConfig(routing_replay=True).check_fits(dense)
    GRPOConfig(routing_replay=True).check_fits(preset("tiny", vocab_size=100))


def test_exact_resume(tok, tmp_path, monkeypatch):
    """2 steps + resume + 2 steps == 4 steps, bit for bit, on a model whose weights really move (the
    learnable reward gives every group a spread, so every step has a gradient)."""
    from runs import load_run, save_run_files

    monkeypatch.setattr(train_grpo.rewards, "reward", seven_reward)

    def cfg(steps):
        return GRPOConfig(steps=steps, prompts_per_step=2, num_generations=4, max_completion_length=10,
                          dynamic_sampling=False, eval_every=0, ckpt_every=2, dump_every=1, eval_n=2, eval_k=1,
                          learning_rate=1e-2)
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a = small_model(tok)
    start = {k: v.clone() for k, v in a.state_dict().items()}
    save_run_files(tmp_path / "a", a.cfg, tok, "grpo", {})
    train_grpo.train_grpo(tmp_path / "a", a, tok, cfg(4), torch.device("cpu"), quiet=True)
    b = small_model(tok)
    save_run_files(tmp_path / "b", b.cfg, tok, "grpo", {})
    real_rollout = train_grpo.rollout

    def killed_in_step_4(model, tok, cfg, step, *a, **kw):  # after step 3 was logged, before a checkpoint
        if step == 3:
            raise KeyboardInterrupt
        return real_rollout(model, tok, cfg, step, *a, **kw)
    monkeypatch.setattr(train_grpo, "rollout", killed_in_step_4)
    with pytest.raises(KeyboardInterrupt):
        train_grpo.train_grpo(tmp_path / "b", b, tok, cfg(4), torch.device("cpu"), quiet=True)
    monkeypatch.setattr(train_grpo, "rollout", real_rollout)
    assert [x["step"] for x in train_grpo.Metrics(tmp_path / "b" / "metrics.jsonl").read()] == [1, 2, 3]
    b, _, state = load_run(tmp_path / "b")
    assert state["step"] == 2
    train_grpo.train_grpo(tmp_path / "b", b, tok, cfg(4), torch.device("cpu"), state=state, quiet=True)
    sa, sb = a.state_dict(), b.state_dict()
    moved = [k for k in sa if not torch.equal(sa[k], start[k])]
    assert len(moved) > len(sa) // 2, f"only {len(moved)} of {len(sa)} tensors moved"
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    # the logs of the killed step 3 were cut on resume: one row per step, the same rows as the straight run
    rows = lambda r: [x for x in train_grpo.Metrics(r / "metrics.jsonl").read()]  # noqa: E731
    assert [x["step"] for x in rows(tmp_path / "b") if "eval" not in x] == [1, 2, 3, 4]
    drop = ("sample_s", "step_s")  # wall times differ
    assert [{k: v for k, v in x.items() if k not in drop} for x in rows(tmp_path / "a")] == \
           [{k: v for k, v in x.items() if k not in drop} for x in rows(tmp_path / "b")]
    assert (tmp_path / "a" / "samples.txt").read_text() == (tmp_path / "b" / "samples.txt").read_text()


def test_r1_zero_pipeline_smoke(tmp_path):
    """`python r1.py` end to end in smoke mode: tokenizer, base, base eval, GRPO, eval, report, plots."""
    assert r1.main(["zero", "--smoke", "--run", str(tmp_path / "zero"), "--quiet"]) == 0
    run = tmp_path / "zero"
    for f in ("report.md", "results.json", "plots/accuracy.png", "plots/length.png", "plots/reflection.png",
              "base/tokenizer.json",
              "rl/metrics.jsonl", "rl/samples.txt"):
        assert (run / f).is_file(), f
    # the harder held-out level (add: 4-6 digit operands after training on 3-5) for the base and after RL
    res = json.loads((run / "results.json").read_text())
    assert res["harder_difficulty"] == {"add": 6}
    assert set(res["base_harder"]) == set(res["r1_zero_harder"]) == {"add"}
    assert "R1-Zero, harder add" in (run / "report.md").read_text()
    assert "reflect" in res["base"]["add"] and 'the thinking says " wait"' in (run / "report.md").read_text()
    assert r1.main(["plot", str(run)]) == 0


def test_r1_zero_story_on_other_families_smoke(tmp_path):
    """`python r1.py --tasks countdown,mul`: one model, both families in every table, countdown's attempts
    logged per GRPO step and shown, the longer family's sampling budget."""
    run = tmp_path / "zero"
    assert r1.main(["--smoke", "--tasks", "countdown,mul", "--run", str(run), "--quiet"]) == 0
    res = json.loads((run / "results.json").read_text())
    assert set(res["base"]) == set(res["r1_zero"]) == {"countdown", "mul"}
    assert res["pretrain"]["tasks"] == res["grpo"]["tasks"] == ["countdown", "mul"]
    assert res["harder_difficulty"] == {"countdown": 5, "mul": 4}
    assert res["base"]["countdown"]["attempts"] is not None and res["base"]["mul"].get("attempts") is None
    steps = [json.loads(line) for line in (run / "rl" / "metrics.jsonl").read_text().splitlines()]
    assert all("attempts" in r for r in steps if r.get("stage") == "grpo" and "eval" not in r)
    assert "attempts" in (run / "report.md").read_text()


def test_story_budget_and_base_check_per_family():
    from recipe import base_not_ready, story_configs

    assert (story_configs(("add",), 0)[1].max_completion_length, story_configs(("add",), 0)[1].steps) == (80, 80)
    both = story_configs(("add", "countdown"), 0)[1]
    assert (both.max_completion_length, both.steps, both.mask_truncated_completions) == (160, 300, True)
    assert not story_configs(("add", "mul"), 0)[1].mask_truncated_completions
    # the skill gate reads sampled accuracy where countdown's search is in the mix, greedy elsewhere
    assert [story_configs(t, 0)[0].gate_temperature for t in (("add", "mul"), ("add", "countdown"))] == [0.0, 0.6]
    ready = {"acc_full_think": 0.3, "full_think": 0.5, "pass@1": 0.1}
    assert base_not_ready({"countdown": ready}) is None                          # countdown's bar is 20%
    assert "on add, when it thinks fully it is right only 30%" in base_not_ready({"countdown": ready, "add": ready})
    assert "already 90%" in base_not_ready({"add": ready | {"acc_full_think": 0.9, "pass@1": 0.9}})
    assert "thinks fully in only 1%" in base_not_ready({"mul": ready | {"acc_full_think": 0.9, "full_think": 0.01}})


# ------------------------------------------------------------------ DAPO: refill and the overlong penalty


def test_concat_rollouts_pads_prompts_left_and_completions_right():
    def ro(P, L, n, fill):
        return train_grpo.Rollout(tokens=torch.full((n, P + L), fill), pad_mask=torch.ones(n, P + L, dtype=torch.bool),
                                  completion_mask=torch.ones(n, L, dtype=torch.bool), old_logp=torch.full((n, L), -1.0),
                                  rewards=torch.full((n,), float(fill)), advantages=torch.zeros(n),
                                  truncated=torch.zeros(n, dtype=torch.bool), texts=[str(fill)] * n, prompt_len=P)
    out = train_grpo.concat_rollouts([ro(2, 3, 2, 7), ro(4, 1, 2, 8)], pad_id=0)
    assert out.prompt_len == 4 and out.tokens.shape == (4, 7) and out.completion_mask.shape == (4, 3)
    assert out.tokens[0].tolist() == [0, 0, 7, 7, 7, 7, 7]  # prompt padded on the left
    assert out.tokens[2].tolist() == [8, 8, 8, 8, 8, 0, 0]  # completion padded on the right
    assert out.pad_mask[0].tolist() == [False, False] + [True] * 5
    assert out.completion_mask[2].tolist() == [True, False, False] and out.old_logp[2].tolist() == [-1.0, 0.0, 0.0]
    assert out.rewards.tolist() == [7, 7, 8, 8] and out.texts == ["7", "7", "8", "8"]


def even_answers_reward(text, answer, numbers=None, **kw):
    """A spread of rewards on problems with an even answer (a checksum of the text: 4 sampled texts of an
    untrained model practically never share it), 0 for every sample of the others: which groups carry
    signal depends on the problems alone, not on what a machine samples."""
    r = sum(map(ord, text)) % 97 / 97 if int(answer) % 2 == 0 else 0.0
    return r, {"accuracy": r, "format": 0.0, "consistency": 0.0, "overlong": 0.0, "reward": r}


def test_refill_fills_the_batch_with_groups_that_carry_signal(tok, monkeypatch):
    monkeypatch.setattr(train_grpo.rewards, "reward", even_answers_reward)
    model = small_model(tok)
    cfg = GRPOConfig(prompts_per_step=4, num_generations=4, max_completion_length=8, refill_rounds=6, seed=3)
    even = [int(p.answer) % 2 == 0 for p in train_grpo.rollout_problems(cfg, 0)]
    assert 0 < sum(even) < 4, even  # round 0 alone cannot fill the batch (seed chosen for that)
    ro, first, problems, _, routing = train_grpo.sample_groups(model, tok, cfg, 0, torch.device("cpu"), World())
    assert len(first.texts) == 16 and [p.answer for p in problems] == [p.answer for p in
                                                                      train_grpo.rollout_problems(cfg, 0)]
    assert len(ro.texts) == 4 * 4 and bool(train_grpo.signal_groups(ro, 4).all())  # B groups, all with signal
    assert ro.texts[:4 * sum(even)] == [t for g, e in enumerate(even) if e for t in first.texts[4 * g:4 * g + 4]]
    assert routing is None  # the routing diagnostic is skipped once refilled rows are mixed in
    # the merged rollout is the same data: the training forward gives the sampler's log-probs on every row
    logp, _ = completion_logprobs(model, ro, torch.arange(len(ro.texts)), cfg.temperature)
    assert torch.allclose(logp[ro.completion_mask], ro.old_logp[ro.completion_mask], atol=1e-4)
    # with routing replay, the sampled experts travel through the merge, aligned with the merged tokens
    ro_r, *_ = train_grpo.sample_groups(model, tok, replace(cfg, routing_replay=True), 0, torch.device("cpu"),
                                        World())
    assert ro_r.texts == ro.texts and all(r.shape[:2] == ro_r.tokens.shape for r in ro_r.routes)
    logp_r, _ = completion_logprobs(model, ro_r, torch.arange(len(ro_r.texts)), cfg.temperature, ro_r.routes)
    assert torch.allclose(logp_r[ro_r.completion_mask], ro_r.old_logp[ro_r.completion_mask], atol=1e-4)
    # without refill, the groups without signal stay in the rollout (and the loss drops them)
    ro0, *_ = train_grpo.sample_groups(model, tok, replace(cfg, refill_rounds=0), 0, torch.device("cpu"), World())
    assert int(train_grpo.signal_groups(ro0, 4).sum()) == sum(even)


def test_overlong_penalty_reaches_the_rollout_rewards(tok):
    """DAPO's soft overlong punishment (--overlong-cache): an untrained model writes to the length limit."""
    model = small_model(tok)
    cfg = GRPOConfig(prompts_per_step=2, num_generations=4, max_completion_length=10, overlong_cache=4)
    ro, _, parts, _ = rollout(model, tok, cfg, step=0, device=torch.device("cpu"))
    lens = ro.completion_mask.sum(1).tolist()
    want = [train_grpo.rewards.overlong_penalty(n, 10, 4) for n in lens]
    assert [p["overlong"] for p in parts] == want and min(want) < 0
    assert all(r == pytest.approx(p["accuracy"] + p["format"] + p["overlong"]) for r, p in zip(ro.rewards.tolist(), parts))


def test_any_seed_in_range_samples(tok):
    """Group seeds stay inside the 63 bits a torch generator takes, for the largest allowed --seed."""
    cfg = GRPOConfig(prompts_per_step=2, num_generations=2, max_completion_length=4, seed=2**31 - 1)
    ro, *_ = rollout(small_model(tok), tok, cfg, step=10**6, device=torch.device("cpu"))
    assert len(ro.texts) == 4


def test_a_run_from_before_a_new_option_resumes_with_its_default(tok, tmp_path):
    """config.json of a run made before GRPOConfig.reward existed: resuming with the default (the old
    behaviour) is allowed, asking for another value is the usual "options differ" error."""
    from runs import R1Error, check_resume_config, save_run_files
    model = small_model(tok)
    old = {k: v for k, v in dataclasses.asdict(GRPOConfig()).items() if k != "reward"}
    save_run_files(tmp_path, model.cfg, tok, "grpo", old)
    check_resume_config(tmp_path, model.cfg, GRPOConfig(), "grpo")
    with pytest.raises(R1Error, match="options differ"):
        check_resume_config(tmp_path, model.cfg, GRPOConfig(reward="random"), "grpo")
