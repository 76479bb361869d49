"""`r1.py sweep` (sweep.py): a smoke grid end to end, its resume (finished cells are not run again, a
grown grid runs only the new cells), the table's statistics by hand, the control rewards, and bad input
that leaves every file as it was."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

import sweep
import train_grpo
from conftest import SMALL, assert_error, inproc
from data import default_tokenizer
from model import build_model, preset
from runs import save_run_files
from train import TrainConfig, pretrain_batches, train_lm
from train_grpo import GRPOConfig, rollout


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


@pytest.fixture(scope="module")
def base(tmp_path_factory, tok):
    """A tiny 2-step base run: the model is untrained, the grid's code paths are what is tested."""
    run = tmp_path_factory.mktemp("sweep") / "base"
    run.mkdir()
    mcfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    cfg = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_n=2, ckpt_every=0)
    save_run_files(run, mcfg, tok, "pretrain", {"steps": 2})
    train_lm(run, build_model(mcfg, seed=0), tok, cfg, pretrain_batches(cfg), torch.device("cpu"), quiet=True)
    return run


def tree(path: Path) -> dict:
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def cells_of(run: Path) -> dict:
    """Each cell's files that GRPO writes (its metrics and checkpoints), by hash."""
    return {k: v for k, v in tree(run).items() if k.count("/") >= 2 and "result.json" not in k}


def test_smoke_grid_then_resume_runs_only_new_cells(base, tmp_path):
    run = tmp_path / "sweep"
    res = inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default,random-reward", "--seeds", "2",
                 "--device", "cpu")
    assert res.returncode == 0, res.stderr
    for f in ("sweep.md", "sweep.json", "sweep.png", "base-seed0.json", "base-seed1.json"):
        assert (run / f).is_file(), f
    for arm in ("default", "random-reward"):
        for s in (0, 1):
            cell = run / arm / f"seed{s}"
            assert (cell / "result.json").is_file() and (cell / "ckpt" / "latest").is_file()
            assert json.loads((cell / "config.json").read_text())["grpo"]["seed"] == s
    assert json.loads((run / "random-reward" / "seed0" / "config.json").read_text())["grpo"]["reward"] == "random"
    table = (run / "sweep.md").read_text()
    assert "| default | 2 |" in table and "| random-reward | 2 |" in table and "±" in table
    meta = json.loads((run / "sweep.json").read_text())
    assert set(meta["cells"]) == {"default", "random-reward"} and len(meta["cells"]["default"]) == 2
    assert meta["summary"]["default"]["pass@1"] is not None

    before = cells_of(run)
    res = inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default,random-reward", "--seeds", "3",
                 "--device", "cpu", "--resume")
    assert res.returncode == 0, res.stderr
    after = cells_of(run)
    assert {k: after[k] for k in before} == before  # the finished cells were not run again
    assert {Path(k).parts[:2] for k in set(after) - set(before)} == {("default", "seed2"), ("random-reward", "seed2")}
    assert "| default | 3 |" in (run / "sweep.md").read_text()

    # a cell whose GRPO finished but whose result.json was not written (killed in between): only the result
    (run / "default" / "seed1" / "result.json").unlink()
    before = cells_of(run)
    assert inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default", "--seeds", "2",
                  "--device", "cpu", "--resume", "--quiet").returncode == 0
    assert cells_of(run) == before and (run / "default" / "seed1" / "result.json").is_file()

    # more --steps extend every cell from its last checkpoint
    assert inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default", "--seeds", "1",
                  "--steps", "3", "--device", "cpu", "--resume", "--quiet").returncode == 0
    cell = run / "default" / "seed0"
    assert json.loads((cell / "result.json").read_text())["steps"] == 3
    assert [r["step"] for r in map(json.loads, (cell / "metrics.jsonl").read_text().splitlines()) if "eval" not in r] == [1, 2, 3]


def test_bad_input_leaves_every_file_as_it_was(base, tmp_path):
    run = tmp_path / "sweep"
    assert_error(inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default,nope"), "nope", "random-reward")
    assert_error(inproc("sweep", "--smoke", "--init", tmp_path / "missing", "--run", run), "missing")
    assert_error(inproc("sweep", "--smoke", "--init", base, "--run", run, "--seeds", "0"), "--seeds")
    assert not run.exists()
    assert inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default", "--seeds", "1",
                  "--quiet", "--device", "cpu").returncode == 0
    before = tree(run)
    assert_error(inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default"), "already exists")
    assert_error(inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default", "--seeds", "1",
                        "--k", "3", "--resume"), "options differ")
    assert_error(inproc("sweep", "--smoke", "--init", base, "--run", run, "--arms", "default", "--seeds", "1",
                        "--steps", "1", "--resume"), "--steps 2")
    other = tmp_path / "other"
    other.mkdir()
    for f in base.iterdir():  # the same base under another name: a sweep's cells come from one base
        if f.is_file():
            (other / f.name).write_bytes(f.read_bytes())
    (other / "ckpt").mkdir()
    for f in (base / "ckpt").iterdir():
        (other / "ckpt" / f.name).write_bytes(f.read_bytes())
    assert_error(inproc("sweep", "--smoke", "--init", other, "--run", run, "--arms", "default", "--resume"), "not from")
    assert tree(run) == before


def test_mean_and_sample_std_by_hand():
    assert sweep.mean_std([1.0, 2.0, 3.0]) == (2.0, 1.0)
    assert sweep.mean_std([0.5]) == (0.5, 0.0)
    assert sweep.mean_std([None, 4.0, None, 6.0]) == (5.0, pytest.approx(2 ** 0.5))
    assert sweep.mean_std([None]) is None


def test_table_rows_are_means_and_spreads_of_the_cells():
    def cell(base, after, wrong):
        return {"base": {"add": {"pass@1": base}}, "final": {"add": {"pass@1": after, "cons@8": after, "format": 1.0,
                                                                     "len_right": 40.0, "len_wrong": wrong,
                                                                     "think_len": 30.0, "reflect": 0.5}},
                "rollout_len_wrong": 30.0, "kl_to_base": 0.02, "clip_frac": 0.01, "rl_s": 60.0}
    summary = sweep.summarize({"a": [cell(0.3, 0.9, 20.0), cell(0.4, 0.9, None), cell(0.35, 0.95, 30.0)]}, "add")
    row = summary["a"]
    assert row["pass@1"][0] == pytest.approx(0.91666, abs=1e-4)
    assert row["gain"][0] == pytest.approx((0.6 + 0.5 + 0.6) / 3) and row["gain"][1] == pytest.approx(0.057735, abs=1e-5)
    assert row["len wrong"] == (25.0, pytest.approx(7.0711, abs=1e-4))  # the cell with no wrong answer is left out
    line = sweep.format_sweep(summary, {"a": 3}, k=8).splitlines()[2]
    assert line.startswith("| a | 3 | 91.7 ± 2.9 | 56.7 ± 5.8 |"), line


# ------------------------------------------------------------------ the control rewards (train_grpo.rollout)


def small_model(tok, seed):
    return build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=seed)


def test_random_reward_is_blind_to_the_text(tok):
    """--reward random: coin flips from the groups' own generators; other models (other texts) get the
    same rewards, the logged accuracy stays the real one."""
    cfg = GRPOConfig(prompts_per_step=4, num_generations=8, max_completion_length=6, reward="random")
    ro0, _, parts0, _ = rollout(small_model(tok, 0), tok, cfg, step=3, device=torch.device("cpu"))
    ro1, _, _, _ = rollout(small_model(tok, 1), tok, cfg, step=3, device=torch.device("cpu"))
    assert ro0.texts != ro1.texts
    assert torch.equal(ro0.rewards, ro1.rewards)
    assert set(ro0.rewards.tolist()) == {0.0, 1.0}
    ro2, *_ = rollout(small_model(tok, 0), tok, cfg, step=4, device=torch.device("cpu"))
    assert not torch.equal(ro0.rewards, ro2.rewards)  # a new step, new coins
    assert all(p["accuracy"] == 0.0 for p in parts0)  # an untrained model: the real accuracy, not the coin


def test_format_only_reward_is_the_format_part(tok, monkeypatch):
    def fake(text, answer, numbers=None, **kw):  # every completion "right", half of them well formatted
        part = {"accuracy": 1.0, "format": float(len(text) % 2), "consistency": 0.0, "overlong": 0.0}
        return part["accuracy"] + part["format"], part | {"reward": part["accuracy"] + part["format"]}
    monkeypatch.setattr(train_grpo.rewards, "reward", fake)
    cfg = GRPOConfig(prompts_per_step=2, num_generations=4, max_completion_length=6, reward="format")
    ro, _, parts, _ = rollout(small_model(tok, 0), tok, cfg, step=0, device=torch.device("cpu"))
    assert ro.rewards.tolist() == [p["format"] for p in parts]


def test_bad_reward_name():
    with pytest.raises(train_grpo.R1Error, match="--reward"):
        GRPOConfig(reward="vibes")
