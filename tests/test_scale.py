"""Tests of scale/: the same training on two processes (gloo, FSDP2) as in one, DCP checkpoints that
move between 2 ranks and 1 process both ways, a torchrun run that loses a rank and resumes, the
one-line errors of bad launches, and the planner's figures against hand arithmetic.

One 2-process group (torch.multiprocessing.spawn + FileStore, no torchrun) runs every two-rank
scenario once per module; the one-process references run here, in the pytest process. CPU only.
"""
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp


ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import train_grpo  # noqa: E402
from data import default_tokenizer  # noqa: E402
from model import build_model, preset  # noqa: E402
from runs import Metrics, World, load_checkpoint  # noqa: E402
from train import TrainConfig, pretrain_batches, train_lm  # noqa: E402
from runs import load_run, save_run_files  # noqa: E402
from train_grpo import GRPOConfig  # noqa: E402
from conftest import SMALL  # noqa: E402

pytestmark = pytest.mark.distributed

CPU = torch.device("cpu")
N = 4  # pre-training steps; runs are interrupted right after the checkpoint at N/2


def pre_cfg():
    return TrainConfig(steps=N, batch_size=8, lr=3e-3, warmup=2, ckpt_every=N // 2, eval_every=0, eval_n=2, seed=3)


def grpo_cfg():
    # seed 3: both steps have groups whose completions differ in length, so the loss is not ~0 (a loss of
    # rounding noise would give Adam noise to amplify, different on two ranks)
    # microbatch_size 3: the kept rows in several micro-batches, as many on each rank (a rank with fewer rows
    # than micro-batches runs weight-0 rows), so the test covers gradient accumulation under FSDP
    return GRPOConfig(steps=2, prompts_per_step=4, num_generations=4, max_completion_length=8, learning_rate=1e-2,
                      eval_every=0, ckpt_every=0, dump_every=0, eval_n=2, eval_k=1, seed=3, microbatch_size=3)


def seven_reward(text, answer, numbers=None, **kw):
    """A reward a random model earns unevenly (the share of '7's), so groups carry gradient."""
    r = text.count("7") / max(len(text), 1)
    return r, {"accuracy": r, "format": 0.0, "consistency": 0.0, "overlong": 0.0, "reward": r}


class Interrupt(Exception):
    pass


def interrupted(batches):
    def batch(step, end=None):
        if step == N // 2:
            raise Interrupt
        return batches(step, end)
    return batch


def new_run(path: Path, tok, seed=3):
    path.mkdir(parents=True, exist_ok=True)
    cfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    save_run_files(path, cfg, tok, "pretrain", {})
    return cfg


def losses(run: Path) -> dict[int, float]:
    """step -> loss of a run's metrics (the last row of a step, if a restart logged it twice)."""
    return {r["step"]: r["loss"] for r in Metrics(run / "metrics.jsonl").read() if "eval" not in r}


def biases(model) -> list[torch.Tensor]:
    return [m.gate.bias.clone() for m in model.moe_layers()]


# ------------------------------------------------------------------ the two-rank runs


def two_rank_worker(rank: int, world_size: int, store_path: str, out: str):
    """Every two-rank scenario, in one process group; results go to out/rank{r}.pt."""
    torch.set_num_threads(1)
    from torch.distributed import FileStore
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    from scale.dist import init_world

    world = init_world("cpu", "gloo", store=FileStore(store_path, world_size), rank=rank, world_size=world_size)
    out, tok, res = Path(out), default_tokenizer(), {}
    full = lambda m: get_model_state_dict(m, options=StateDictOptions(full_state_dict=True))  # noqa: E731

    # 1. pre-training from scratch, interrupted after the DCP checkpoint at N/2
    cfg = pre_cfg()
    model = world.build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), CPU, seed=3)
    try:
        train_lm(out / "dist", model, tok, cfg, interrupted(pretrain_batches(cfg)), CPU, quiet=True, world=world)
    except Interrupt:
        pass
    res["biases_half"] = biases(model)
    # 2. a one-process checkpoint (.pt, written by the test) resumed on two ranks up to N
    model, _, state = world.load_run(out / "single", CPU)
    train_lm(out / "single", model, tok, cfg, pretrain_batches(cfg), CPU, state=state, quiet=True, world=world)
    res["resumed_weights"], res["resumed_biases"] = full(model), biases(model)
    # 3. GRPO from the same initial model
    train_grpo.rewards.reward = seven_reward
    model = world.build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), CPU, seed=0)
    train_grpo.train_grpo(out / "grpo", model, tok, grpo_cfg(), CPU, quiet=True, world=world)
    res["grpo_weights"], res["grpo_biases"] = full(model), biases(model)
    torch.save(res, out / f"rank{rank}.pt")
    world.close()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    """The two-rank results, after the one-process run they start from (run `single`, N/2 steps)."""
    out = tmp_path_factory.mktemp("scale")
    tok = default_tokenizer()
    for name in ("dist", "single", "grpo"):
        new_run(out / name, tok)
    cfg = pre_cfg()
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=3)
    with pytest.raises(Interrupt):
        train_lm(out / "single", model, tok, cfg, interrupted(pretrain_batches(cfg)), CPU, quiet=True)
    mp.spawn(two_rank_worker, args=(2, str(out / "store"), str(out)), nprocs=2)
    return out, [torch.load(out / f"rank{r}.pt", weights_only=True) for r in range(2)]


@pytest.fixture(scope="module")
def one_process(tmp_path_factory):
    """The reference: N pre-training steps and the GRPO run, in this process."""
    out = tmp_path_factory.mktemp("ref")
    tok = default_tokenizer()
    new_run(out / "pre", tok)
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=3)
    cfg = pre_cfg()
    train_lm(out / "pre", model, tok, cfg, pretrain_batches(cfg), CPU, quiet=True)
    pre = {"weights": model.state_dict(), "biases": biases(model), "losses": losses(out / "pre")}
    saved, train_grpo.rewards.reward = train_grpo.rewards.reward, seven_reward
    try:
        new_run(out / "grpo", tok)
        model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=0)
        train_grpo.train_grpo(out / "grpo", model, tok, grpo_cfg(), CPU, quiet=True)
    finally:
        train_grpo.rewards.reward = saved
    grpo = {"weights": model.state_dict(), "biases": biases(model),
            "rows": [r for r in Metrics(out / "grpo" / "metrics.jsonl").read() if "eval" not in r]}
    return pre, grpo


def close_weights(a: dict, b: dict, atol=1e-5):
    assert a.keys() == b.keys()
    bad = [k for k in a if not torch.allclose(a[k].float(), b[k].float(), atol=atol, rtol=1e-4)]
    assert bad == [], bad


def test_pretraining_on_two_ranks_gives_the_one_process_losses(two_ranks, one_process):
    out, _ = two_ranks
    pre, _ = one_process
    two = losses(out / "dist")
    assert sorted(two) == [1, 2]  # interrupted after N/2 steps
    for step, loss in two.items():
        assert loss == pytest.approx(pre["losses"][step], abs=1e-5), step


def test_moe_biases_identical_on_every_rank_and_equal_to_one_process(two_ranks, one_process):
    out, (r0, r1) = two_ranks
    pre, grpo = one_process
    for key in ("biases_half", "resumed_biases", "grpo_biases"):
        assert all(torch.equal(a, b) for a, b in zip(r0[key], r1[key])), key
    assert all(torch.equal(a, b) for a, b in zip(r0["resumed_biases"], pre["biases"]))
    assert any(b.abs().sum() > 0 for b in pre["biases"])  # the biases did move
    assert all(torch.equal(a, b) for a, b in zip(r0["grpo_biases"], grpo["biases"]))


def test_one_process_checkpoint_resumes_on_two_ranks(two_ranks, one_process):
    out, (r0, _) = two_ranks
    pre, _ = one_process
    resumed = losses(out / "single")
    assert sorted(resumed) == [1, 2, 3, 4]
    for step in (3, 4):
        assert resumed[step] == pytest.approx(pre["losses"][step], abs=1e-5), step
    close_weights(r0["resumed_weights"], pre["weights"])
    assert (out / "single" / "ckpt" / "step_000004").is_dir()  # ... and wrote a DCP folder


def test_two_rank_checkpoint_resumes_in_one_process(two_ranks, one_process):
    out, _ = two_ranks
    pre, _ = one_process
    run = out / "dist"
    assert (run / "ckpt" / "step_000002" / ".metadata").is_file()  # a DCP folder, not a .pt
    model, tok, state = load_run(run)
    assert state["step"] == N // 2 and state["stage"] == "pretrain"
    cfg = pre_cfg()
    train_lm(run, model, tok, cfg, pretrain_batches(cfg), CPU, state=state, quiet=True, world=World())
    for step in (3, 4):
        assert losses(run)[step] == pytest.approx(pre["losses"][step], abs=1e-5), step
    close_weights(model.state_dict(), pre["weights"])
    assert load_checkpoint(run)["step"] == N  # ... and wrote a one-process .pt


def test_grpo_on_two_ranks_gives_the_one_process_losses(two_ranks, one_process):
    out, (r0, _) = two_ranks
    _, grpo = one_process
    two = [r for r in Metrics(out / "grpo" / "metrics.jsonl").read() if "eval" not in r]
    assert len(two) == len(grpo["rows"]) == 2
    assert all(r["groups_used"] > 0 and r["loss"] != 0 for r in grpo["rows"])  # real gradients
    for a, b in zip(two, grpo["rows"]):
        for key in ("reward", "groups_used", "completion_len", "zero_var_groups", "loss"):
            assert a[key] == pytest.approx(b[key], abs=1e-5), key
    close_weights(r0["grpo_weights"], grpo["weights"])


def test_a_prompts_samples_do_not_depend_on_the_other_prompts_in_the_batch():
    """What makes a GRPO rollout the same on any number of ranks: with one generator per prompt,
    prompt b's group is the same sampled beside prompt a or alone."""
    from sampler import generate

    tok = default_tokenizer()
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=1)
    a, b = tok.encode("User: _1663+_5242", bos=True), tok.encode("User: 12-7", bos=True)
    gens = lambda *seeds: [torch.Generator().manual_seed(s) for s in seeds]  # noqa: E731
    kw = dict(num_samples=4, max_new_tokens=10, temperature=1.0, eos_id=tok.eos_id, pad_id=tok.pad_id)
    both = generate(model, [a, b], generator=gens(1, 2), **kw)
    alone = generate(model, [b], generator=gens(2), **kw)
    assert torch.equal(both.tokens[4:], alone.tokens) and torch.equal(both.mask[4:], alone.mask)
    assert not torch.equal(both.tokens[:4], both.tokens[4:])  # and the groups are not all alike


# ------------------------------------------------------------------ torchrun: restarts and bad launches


def torchrun(args: list[str], env=None, nproc=2, extra=(), kill_at: int | None = None):
    """`torchrun -m -- scale.launch ARGS`; with `kill_at`, this file instead (see the end of it): the same
    entry with the last rank SIGKILLing itself as pre-training step `kill_at` begins, first attempt only."""
    entry = ["-m", "--", "scale.launch"] if kill_at is None else ["--", __file__, str(kill_at)]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *extra,
           *entry, *args]
    # its own session, so that a timeout kills torchrun's workers too instead of leaving them behind
    with subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=os.environ | {"OMP_NUM_THREADS": "1"} | (env or {}), start_new_session=True) as proc:
        try:
            out, err = proc.communicate(timeout=240)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            raise
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def test_killed_rank_restarts_and_resumes_from_the_last_checkpoint(tmp_path):
    """Rank 1 dies as step 4 begins (after the checkpoint at 2); torchrun restarts both ranks, which
    resume from step 2, cut the log back to it and train steps 3 and 4 again: one row per step, the
    losses of a run that was never killed (one process)."""
    import r1

    run = tmp_path / "ft"
    opts = ["--steps", "4", "--batch-size", "4", "--ckpt-every", "2", "--eval-every", "0", "--eval-n", "1",
            "--device", "cpu", "--quiet"]
    p = torchrun(["pretrain", "--run", str(run), *opts], kill_at=3, extra=["--max-restarts=1"])
    assert p.returncode == 0, p.stderr[-3000:]
    assert "exitcode: -9" in p.stderr  # the kill did happen (torchrun reports the SIGKILLed rank)
    assert r1.main(["pretrain", "--run", str(tmp_path / "straight"), *opts]) == 0
    rows = [r for r in Metrics(run / "metrics.jsonl").read() if "eval" not in r]
    straight = [r for r in Metrics(tmp_path / "straight" / "metrics.jsonl").read() if "eval" not in r]
    assert [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [r["loss"] for r in rows] == pytest.approx([r["loss"] for r in straight], abs=1e-5)
    assert load_checkpoint(run)["step"] == 4


@pytest.mark.parametrize("rank", [0, 1])
def test_bad_launches_end_with_one_line_from_rank_0(tmp_path, monkeypatch, capsys, rank):
    """Checked on every rank before any process group exists (so none can wait for another):
    exit code 2 everywhere, one line from rank 0, nothing from the others, nothing written."""
    from scale.launch import main
    monkeypatch.setenv("RANK", str(rank))
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    expected = ["error: --batch-size 5 does not split over 2 ranks: use a multiple of 2",
                "error: --prompts-per-step 3 does not split over 2 ranks: use a multiple of 2 (each rank samples "
                "whole groups)"]
    argvs = [["pretrain", "--run", str(tmp_path / "a"), "--batch-size", "5"],
             ["grpo", "--init", str(tmp_path / "base"), "--prompts-per-step", "3"]]
    if not torch.cuda.is_available():
        expected.append("error: --backend nccl needs CUDA GPUs, and none is available here: use --backend gloo "
                        "(or auto) on CPU")
        argvs.append(["pretrain", "--run", str(tmp_path / "a"), "--backend", "nccl"])
    for argv, line in zip(argvs, expected):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert err.splitlines() == ([line] if rank == 0 else [])
    assert not (tmp_path / "a").exists()


# ------------------------------------------------------------------ the planner


def test_planner_671b_against_hand_arithmetic():
    from scale.plan import plan

    D, V, L, E, F = 7168, 129280, 61, 256, 2048
    expert = 3 * D * F
    total, mtp = 671_026_404_352, 11_610_067_968  # V3 §4.2: 671B (and `python r1.py params`)
    counts = {"total": total, "mtp": mtp, "embedding": V * D, "head": V * D,
              "activated": total - 58 * (E - 8) * expert, "mtp_activated": mtp - (E - 8) * expert,
              "kv_cache_bytes_bf16": L * (512 + 64) * 2}
    p = plan(preset("deepseek-v3-671b"), 2048, 80, counts=counts)
    P = total + mtp
    assert p["bf16_weights"] == P * 2  # ~1.37 TB: no GPU samples alone with the whole model
    assert p["param_shards"] == p["grad_shards"] == P * 4 / 2048 and p["adam"] == P * 8 / 2048
    assert p["states"] == pytest.approx(16 * P / 2048)  # 5.33 GB
    mla = D * 1536 + 1536 * 128 * 192 + D * 576 + 512 * 128 * 256 + 128 * 128 * D + 1536 + 512 + 2 * D
    moe_ffn = 257 * expert + E * D  # 256 routed + 1 shared expert, and the router
    assert p["unit"] == mla + moe_ffn and p["gathered"] == 2 * 2 * (mla + moe_ffn)
    assert p["kv"] == 70_272 * 16 * 32768
    assert p["comm_per_step"] == pytest.approx(8 * P * 2047 / 2048)
    assert p["train_fits"] and not p["rollout_fits"]
    assert not plan(preset("deepseek-v3-671b"), 64, 80, counts=counts)["train_fits"]  # 170 GB of state per GPU


def test_planner_counts_are_model_pys(capsys):
    from model import count_params
    from scale.plan import main, plan

    cfg = preset("deepseek-v2-lite-16b")
    c = count_params(cfg)
    p = plan(cfg, 16, 80)
    assert p["params"] == c["total"] + c["mtp"] and p["kv_per_token"] == c["kv_cache_bytes_bf16"]
    assert main(["--preset", "tiny", "--gpus", "2", "--gpu-mem", "24"]) == 0
    assert "verdict: fits in memory under pure FSDP" in capsys.readouterr().out
    assert main(["--preset", "nope"]) == 2


def killing_last_rank(step: int):
    """Fault injection for the restart test: train.pretrain_batches wrapped so that the last rank
    SIGKILLs itself as pre-training step `step` begins, on torchrun's first attempt only."""
    import train

    make_batches = train.pretrain_batches

    def pretrain_batches(cfg):
        batch = make_batches(cfg)

        def killing(s, end=None):
            if (s == step and os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") == "0"
                    and os.environ.get("RANK") == str(int(os.environ["WORLD_SIZE"]) - 1)):
                os.kill(os.getpid(), signal.SIGKILL)
            return batch(s, end)
        return killing
    train.pretrain_batches = pretrain_batches  # cmd_pretrain looks it up when it runs


if __name__ == "__main__":  # torchrun ... -- tests/test_scale.py STEP STAGE [options]: scale.launch with a fault
    from scale.launch import main

    killing_last_rank(int(sys.argv[1]))
    sys.exit(main(sys.argv[2:]))
