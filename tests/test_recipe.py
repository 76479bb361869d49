"""Tests for the R1 recipe (recipe.py, data/cold_start.py, the consistency reward, R1's evaluation
protocol): pass@k against its closed form, cons@k with ties and equivalent answers, the readable style,
rejection sampling keeps only verified training samples, bad input is one line and exit code 2, and
`distill` and `recipe` run end to end in smoke mode.
"""
import itertools
import json
import random
import time
from pathlib import Path

import pytest
import torch



import recipe  # noqa: E402
import sampler  # noqa: E402
from data import DIFFICULTIES, TASKS, Tokenizer, default_tokenizer, make_problem, prompt, split_of  # noqa: E402
from data.cold_start import cold_start_set, readable_completion  # noqa: E402
from evaluate import majority_vote, pass_at_k  # noqa: E402
from model import build_model, preset  # noqa: E402
import rewards  # noqa: E402
from rewards import accuracy_reward, consistency_reward, format_reward, reward  # noqa: E402
from runs import save_checkpoint  # noqa: E402
from sampler import Generation  # noqa: E402
from test_cli import SMALL, assert_error, inproc, tree  # noqa: E402
from train import TrainConfig, pretrain_batches, train_lm  # noqa: E402
from runs import save_run_files  # noqa: E402
from train_grpo import GRPOConfig  # noqa: E402


# ---------------------------------------------------------------- R1's evaluation protocol

@pytest.mark.parametrize("n, c, k", [(n, c, k) for n in range(1, 7) for c in range(n + 1) for k in range(1, n + 1)])
def test_pass_at_k_is_the_chance_a_k_subset_holds_a_correct_sample(n, c, k):
    samples = [True] * c + [False] * (n - c)
    subsets = list(itertools.combinations(samples, k))
    closed_form = sum(any(s) for s in subsets) / len(subsets)
    assert pass_at_k(n, c, k) == pytest.approx(closed_form, abs=1e-12)
    if k == 1:
        assert pass_at_k(n, c, 1) == pytest.approx(c / n)  # pass@1 = mean correctness


def test_cons_at_k_equivalent_answers_vote_together():
    # "1/2" and "0.5" are one answer with two votes, beating "3" with one... wherever they stand
    assert majority_vote(["3", "1/2", "0.5"]) in (1, 2)
    assert majority_vote(["1/2", "3", "0.5", "2/4", "3"]) == 0
    assert majority_vote(["-3/4", "7", "-0.75"]) == 0


def test_cons_at_k_ties_and_missing_answers():
    assert majority_vote(["5", "6", "6", "5"]) == 0  # a tie goes to the answer seen first
    assert majority_vote(["6", "5", "5", "6"]) == 0
    assert majority_vote([None, None, None, "4"]) == 3  # no answer (bad format) never wins
    assert majority_vote([None, None]) is None


# ---------------------------------------------------------------- the readable style and its reward

def test_recipe_runs_full_size_unless_asked_for_a_smoke_run():
    """The smoke switch was once shadowed by a method of the same name: RecipeConfig() was a smoke config."""
    from recipe import RecipeConfig

    assert RecipeConfig().smoke is False and RecipeConfig.for_smoke().smoke is True


def test_cold_start_set_is_readable_verified_train_data():
    tok = default_tokenizer()
    rows = cold_start_set(40, tasks=TASKS, seed=3)
    assert len(rows) == 40 and len({r["prompt"] for r in rows}) == 40
    assert {r["task"] for r in rows} == set(TASKS)
    for r in rows:
        tok.encode(r["prompt"] + r["completion"])  # in the closed vocabulary
        assert format_reward(r["completion"]) == 1.0
        assert consistency_reward(r["completion"]) == 1.0
        assert r["completion"].startswith("<think>\n") and "\n</think><answer>" in r["completion"]


def test_cold_start_answers_are_right_and_never_held_out():
    rows = cold_start_set(60, tasks=TASKS, seed=0)
    for task in TASKS:
        rng = random.Random(task)
        problems = [make_problem(task, rng) for _ in range(30)]
        for p in problems:
            assert accuracy_reward(readable_completion(p), p.answer, p.numbers or None) == 1.0
    from data import make_problems
    for task in TASKS:
        train = {p.question: p for p in make_problems(task, 15, split="train", seed=0)}
        for r in (r for r in rows if r["task"] == task):
            assert split_of(train[r["question"]]) == "train"


def test_readable_example_of_the_docstring():
    from data import Problem
    text = readable_completion(Problem("add", "_1663+_5242", "6905"))
    assert text == ("<think>\n3+2+0=5\n6+4+0=10\n6+2+1=9\n1+5+0=6\n0+0+0=0\n=6905\n"
                    "</think><answer>6905</answer>")
    short = readable_completion(Problem("add", "_1663+_5242", "6905"), with_summary=False)
    assert short == text.replace("=6905\n", "") and consistency_reward(short) == 1.0


@pytest.mark.parametrize("think, expected", [
    ("\n3+2+0=5\n6+4+0=10\n=6905\n", 1.0),            # readable
    ("3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6", 0.0),         # R1-Zero's one line
    ("\n3+2+0=5\n6+4+0=10 6+2+1=9\n", 1 / 3),            # a mix: one readable word of three
    ("\nswap\n2-3-0=-1\n", 1.0),
    ("\n375-3=372 no\nx=15/3=5\n5x-2x=3x\n", 1.0),
    ("\n46+18=64 33<64 no\n27+6=33 33=33\n", 1.0),                 # countdown attempts with their checks
    ("", 0.0),                                           # no thinking at all
    ("\n\n", 0.0),
    ("\n3+2+0=5\nwait\n", 0.5),
    ("\n6905\n", 0.0),                                   # a number is not a step
])
def test_consistency_reward(think, expected):
    assert consistency_reward(f"<think>{think}</think><answer>1</answer>") == pytest.approx(expected)


def test_consistency_reward_is_zero_without_format_and_safe_on_hostile_text():
    assert consistency_reward("<think>\n3+2+0=5\n</think>") == 0.0  # no answer block
    assert consistency_reward("\n3+2+0=5\n") == 0.0
    for think in (*rewards.HOSTILE_ANSWERS, "\n" * 19_000):
        start = time.perf_counter()
        value = consistency_reward(f"<think>{think}</think><answer>1</answer>")
        assert 0.0 <= value <= 1.0
        assert time.perf_counter() - start < 0.1


def test_consistency_weight_adds_to_the_reward_and_defaults_to_zero():
    text = "<think>\n3+2+0=5\n</think><answer>5</answer>"
    assert reward(text, "5")[0] == 2.0  # R1-Zero: accuracy + format
    total, parts = reward(text, "5", consistency_weight=1.0)
    assert total == 3.0 and parts["consistency"] == 1.0
    assert GRPOConfig().consistency_weight == 0.0
    with pytest.raises(recipe.R1Error, match="consistency-weight"):
        GRPOConfig(consistency_weight=-1)


# ---------------------------------------------------------------- rejection sampling

def test_no_worked_solution_is_repetitive():
    for task in TASKS:
        for d in DIFFICULTIES[task]:
            rng = random.Random(d)
            for _ in range(300):
                p = make_problem(task, rng, d)
                assert not recipe.is_repetitive(readable_completion(p), recipe.RejectionConfig().max_run)
    looping = "<think>\n" + "1+1+0=2\n" * 5 + "</think><answer>2</answer>"
    assert recipe.is_repetitive(looping, 4) and not recipe.is_repetitive(looping, 5)


def fake_generate(texts_for):
    """A stand-in for sampler.generate that writes the given texts for each prompt, in order."""
    tok = default_tokenizer()

    def generate(model, ids, *, num_samples, **kw):
        rows = [tok.encode(t) for i in range(len(ids)) for t in texts_for(i, num_samples)]
        L = max(len(r) for r in rows)
        tokens = torch.full((len(rows), L), tok.pad_id)
        mask = torch.zeros(len(rows), L, dtype=torch.bool)
        for j, r in enumerate(rows):
            tokens[j, :len(r)], mask[j, :len(r)] = torch.tensor(r), True
        return Generation(prompt=torch.zeros(len(rows), 1), prompt_mask=torch.ones(len(rows), 1), tokens=tokens,
                          mask=mask, logprobs=torch.zeros(len(rows), L), truncated=torch.zeros(len(rows), dtype=torch.bool))
    return generate


def test_rejection_sampling_keeps_only_verified_readable_unique_training_samples(monkeypatch):
    from data import make_problems
    cfg = recipe.RejectionConfig(n_prompts=6, k=7, tasks=("add", "linear"), seed=5)
    problems = [p for t in cfg.tasks for p in make_problems(t, cfg.n_prompts, split="train", seed=cfg.seed)]
    assert all(split_of(p) == "train" for p in problems)

    def texts_for(i, k):
        p = problems[i]
        right = readable_completion(p)
        one_line = right.replace("\n", " ").replace("<think> ", "<think>").replace(" </think>", "</think>")
        return [right, right,                                             # right, then its duplicate
                right.replace(f"<answer>{p.answer}</answer>", "<answer>12345678</answer>"),  # wrong
                right.replace("</answer>", ""),                            # truncated: bad format
                "<think>\n" + "1+1+0=2\n" * 6 + right[len("<think>\n"):],  # right but looping
                one_line,                                                  # right but unreadable
                right.replace("<think>\n", "<think>\n1+0+0=1\n")][:k]      # right, another text: kept
    monkeypatch.setattr(sampler, "generate", fake_generate(texts_for))  # what sampler.complete calls
    model = build_model(preset("tiny", vocab_size=default_tokenizer().vocab_size, **SMALL), seed=0)
    rows, stats = recipe.rejection_sample(model, default_tokenizer(), cfg, torch.device("cpu"), quiet=True)
    n = len(problems)
    assert stats | {"kept_rate": 0} == {"samples": 7 * n, "wrong_format": n, "wrong_answer": n, "repetitive": n,
                                        "unreadable": n, "duplicate": n, "prompts": n, "kept": 2 * n,
                                        "kept_rate": 0, "prompts_covered": n}
    assert stats["kept_rate"] == pytest.approx(2 / 7)
    by_prompt = {prompt(p): p for p in problems}
    for r in rows:
        p = by_prompt[r["prompt"]]
        assert accuracy_reward(r["completion"], p.answer, p.numbers or None) == 1.0
        assert format_reward(r["completion"]) == 1.0 and consistency_reward(r["completion"]) == 1.0
    assert len({(r["prompt"], r["completion"]) for r in rows}) == len(rows)
    # min_consistency 0 keeps R1-Zero's one-line thinking too
    rows0, stats0 = recipe.rejection_sample(model, default_tokenizer(), recipe.RejectionConfig(
        n_prompts=6, k=7, tasks=("add", "linear"), seed=5, min_consistency=0.0), torch.device("cpu"), quiet=True)
    assert stats0["kept"] == 3 * n and stats0["unreadable"] == 0


# ---------------------------------------------------------------- the commands: bad input and smoke runs

def make_run(path: Path, tok, model_preset="tiny", steps=2, **overrides):
    """A small trained run (config.json, tokenizer.json, a checkpoint)."""
    path.mkdir(parents=True)
    mcfg = preset(model_preset, vocab_size=tok.vocab_size, **overrides)
    cfg = TrainConfig(steps=steps, batch_size=4, eval_every=0, eval_n=2, ckpt_every=0)
    save_run_files(path, mcfg, tok, "pretrain", {"steps": steps})
    train_lm(path, build_model(mcfg, seed=0), tok, cfg, pretrain_batches(cfg), torch.device("cpu"), quiet=True)
    return path


@pytest.fixture(scope="module")
def zero(tmp_path_factory):
    """A stand-in for a `python r1.py` run: base/ and rl/ (2 steps of the default tiny MoE each)."""
    d = tmp_path_factory.mktemp("recipe") / "zero"
    tok = default_tokenizer()
    make_run(d / "base", tok)
    make_run(d / "rl", tok)
    return d


def test_rejection_sample_bad_input(zero, tmp_path):
    assert_error(inproc("rejection-sample", tmp_path / "nope", "--out", tmp_path / "o.jsonl", "--device", "cpu"),
                 "does not exist")
    out = tmp_path / "exists.jsonl"
    out.write_text("precious\n")
    assert_error(inproc("rejection-sample", zero / "rl", "--out", out, "--device", "cpu"), "already exists")
    assert out.read_text() == "precious\n"
    assert_error(inproc("rejection-sample", zero / "rl", "--out", tmp_path / "o.jsonl", "--k", "0"), "--k")


def test_distill_bad_input(zero, tmp_path):
    other = Tokenizer.build(["User: 1+2=3 hello"])  # another vocabulary
    student = tmp_path / "other-student"
    student.mkdir()
    scfg = preset("student", vocab_size=other.vocab_size)
    save_run_files(student, scfg, other, "pretrain", {})
    save_checkpoint(student, 1, {"model": build_model(scfg, seed=0).state_dict(), "config": scfg.to_dict(), "step": 1})
    before = tree(zero)
    out = tmp_path / "out"
    cases = [
        (["--student-base", student], ["tokenizer", "teacher"]),
        (["--student-preset", "deepseek-v2-lite-16b"], ["102400", "teacher"]),
        (["--student-preset", "tiny"], ["dense"]),
        (["--student-preset", "nope"], ["'nope'"]),
    ]
    for extra, needles in cases:
        assert_error(inproc("distill", "--teacher", zero / "rl", "--run", out, "--device", "cpu", *extra), *needles)
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "completion": "b"}\n{"prompt": "a", "completion": }\n')
    assert_error(inproc("distill", "--teacher", zero / "rl", "--run", out, "--data", bad, "--device", "cpu"),
                 "bad.jsonl:2:")
    assert_error(inproc("distill", "--teacher", tmp_path / "nope", "--run", out), "does not exist")
    assert not out.exists() and tree(zero) == before


def test_recipe_bad_input(zero, tmp_path):
    out = tmp_path / "out"
    assert_error(inproc("recipe", "--zero", tmp_path / "nope", "--run", out, "--smoke"), "does not exist")
    assert_error(inproc("recipe", "--zero", zero, "--run", out, "--rl-steps", "0"), "--rl-steps")
    assert not out.exists()
    assert_error(inproc("cold-start", "--out", tmp_path / "c.jsonl", "--tasks", "nope"), "'nope'")


def test_cold_start_command_feeds_sft(zero, tmp_path):
    data = tmp_path / "cold.jsonl"
    res = inproc("cold-start", "--out", data, "--n", "12")
    assert res.returncode == 0, res.stderr
    assert len(data.read_text().splitlines()) == 12
    assert_error(inproc("cold-start", "--out", data, "--n", "3"), "already exists")
    res = inproc("sft", "--data", data, "--init", zero / "base", "--run", tmp_path / "dev1", "--steps", "2",
                 "--batch-size", "4", "--eval-n", "2", "--device", "cpu", "--quiet")
    assert res.returncode == 0, res.stderr


def test_distill_smoke(zero, tmp_path):
    res = inproc("distill", "--teacher", zero / "rl", "--student-preset", "student", "--run", tmp_path / "d",
                 "--smoke", "--device", "cpu", "--quiet")
    assert res.returncode == 0, res.stderr
    out = json.loads((tmp_path / "d" / "results.json").read_text())
    assert set(out["eval"]) == {"student base", "distilled student", "RL-only student"}
    for part in ("student-base", "student-distilled", "student-rl"):
        assert (tmp_path / "d" / part / "ckpt" / "latest").exists()
    assert "distilled student add" in res.stdout
    for name in ("distilled student", "RL-only student"):  # each arm's training time beside its accuracy
        assert out["eval"][name]["tasks"]["add"]["train_s"] > 0


def test_answers_student_never_sees_a_worked_solution():
    """The default student (the paper's setting, R1 §2.4): its pre-training corpus is direct answers only,
    in the main phase and the final mix alike; the "worked" control trains on the teacher's corpus."""
    from data import build_corpus
    from recipe import RecipeConfig

    pre = RecipeConfig().pretrain()
    assert pre.steps == RecipeConfig.student_pretrain_steps and pre.decay_at_greedy == 0 and pre.final_mix_steps == 0
    for lf, sf in ((pre.long_frac, pre.short_frac), (pre.final_long_frac, pre.final_short_frac)):
        pairs = build_corpus(300, tasks=TASKS, seed=1, long_frac=lf, short_frac=sf, reflect_rate=pre.reflect_rate)
        assert all(c.startswith("<think></think><answer>") for _, c in pairs)
    worked = RecipeConfig(student_corpus="worked").pretrain()
    assert (worked.long_frac, worked.decay_at_greedy) == (TrainConfig.long_frac, TrainConfig.decay_at_greedy)
    with pytest.raises(recipe.R1Error, match="--student-corpus"):
        RecipeConfig(student_corpus="books")


def test_distillation_data_is_one_sample_of_many_prompts():
    from recipe import RecipeConfig

    cfg = RecipeConfig()
    dev3, dist = cfg.rejection(), cfg.distill_rejection()
    assert (dist.n_prompts, dist.k) == (cfg.distill_prompts, 1) and dist.seed != dev3.seed
    assert dist.min_consistency == dev3.min_consistency == 1.0


def test_train_s_column_only_where_a_row_has_it():
    from report import format_table, table_keys

    rows = {"a add": {"pass@1": 0.5}, "b add": {"pass@1": 0.25}}
    assert "train_s" not in format_table(rows, table_keys(8))
    rows["b add"]["train_s"] = 123.4
    table = format_table(rows, table_keys(8))
    assert "train_s" in table and "123 s" in table.splitlines()[2]


def test_recipe_smoke_and_resume(zero, tmp_path):
    run = tmp_path / "recipe"
    res = inproc("recipe", "--zero", zero, "--run", run, "--smoke", "--device", "cpu", "--quiet")
    assert res.returncode == 0, res.stderr
    out = json.loads((run / "results.json").read_text())
    assert list(out["stages"]) == ["base", "R1-Zero", "Dev1", "Dev2", "Dev3", "R1"]
    for name, r in out["stages"].items():
        assert {"pass@1", "cons@2", "consistency"} <= set(r["tasks"]["add"]), name
    assert "Stages (like R1 Table 3)" in res.stdout and "Distillation (like R1 Table 6)" in res.stdout
    assert "| Dev2 | add |" in (run / "report.md").read_text()
    # a second run with --resume skips every finished stage: no checkpoint is written again
    ckpts = {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")}
    res = inproc("recipe", "--zero", zero, "--run", run, "--smoke", "--device", "cpu", "--quiet", "--resume")
    assert res.returncode == 0, res.stderr
    assert {p: p.stat().st_mtime_ns for p in run.rglob("*.pt")} == ckpts
