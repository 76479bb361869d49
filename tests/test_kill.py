"""kill -9 at random moments, and inside checkpoint writes: the latest checkpoint always loads, and a
run of 2N steps killed again and again, each time resumed with --resume, ends bit for bit where the
same run never killed ends, with one metrics row per step.

    python tests/test_kill.py --pretrain-kills 10 --grpo-kills 8     the full check (a few minutes)
    python -m pytest tests/test_kill.py                              a smaller one, in the test suite

Each training process is `python tests/test_kill.py child ...`: r1.py's main() with a fault installed
in the process. A kill is one of two kinds, drawn at random:
  - from outside: the parent sends SIGKILL after a random delay (start-up, mid-step, mid-write: any moment);
  - from inside a checkpoint write: the child SIGKILLs itself at its n-th save, at one of the phases of
    runs.save_checkpoint (the .tmp file written; renamed; checksum written; `latest` replaced).
GRPO runs use a learnable stand-in reward (the share of "7"s in the completion) so that every group
has a spread and the weights move from the first step: an untrained base would score 0 everywhere and
the comparison would hold for weights that never changed.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

PHASES = ("tmp", "renamed", "checksummed", "latest")
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
PRETRAIN = ["--steps", "{steps}", "--batch-size", "8", "--ckpt-every", "1", "--eval-every", "0", "--eval-n", "2",
            "--warmup", "2", "--final-mix-steps", "4", "--device", "cpu", "--quiet"]
GRPO = ["--steps", "{steps}", "--prompts-per-step", "2", "--num-generations", "4", "--max-completion-length", "12",
        "--learning-rate", "1e-2", "--ckpt-every", "1", "--eval-every", "0", "--eval-n", "2", "--eval-k", "1",
        "--dump-every", "1", "--device", "cpu", "--quiet"]


# --------------------------------------------------------------------------------------------
# The child: r1.main with a fault installed
# --------------------------------------------------------------------------------------------


def child(fault: str, seven: bool, argv: list[str]) -> int:
    import torch

    import r1
    import runs

    def die():
        os.kill(os.getpid(), signal.SIGKILL)

    if fault != "none":  # "save:N:PHASE": die inside the N-th checkpoint write of this process
        _, n, phase = fault.split(":")
        count = {"saves": 0}
        real_save, real_checksum, real_point, real_write = (torch.save, runs.write_checksum, runs.point_latest,
                                                            runs.write_text_atomic)

        def save(obj, f, *a, **kw):
            real_save(obj, f, *a, **kw)
            count["saves"] += 1
            if count["saves"] == int(n) and phase == "tmp":
                die()

        def checksum(path):
            if count["saves"] == int(n) and phase == "renamed":
                die()
            real_checksum(path)

        def point(*a, **kw):
            if count["saves"] == int(n) and phase == "checksummed":
                die()
            real_point(*a, **kw)

        def write(path, text):
            real_write(path, text)
            if count["saves"] == int(n) and phase == "latest" and path.name == "latest":
                die()  # the pointer moved, the oldest checkpoint not yet pruned

        torch.save, runs.write_checksum, runs.point_latest, runs.write_text_atomic = save, checksum, point, write
    if seven:
        import train_grpo

        def seven_reward(text, answer, numbers=None, **kw):
            r = text.count("7") / max(len(text), 1)
            return r, {"accuracy": r, "format": 0.0, "consistency": 0.0, "overlong": 0.0, "reward": r}
        train_grpo.rewards.reward = seven_reward
    return r1.main(argv)


# --------------------------------------------------------------------------------------------
# The parent: kill, check, resume, until done; then compare with a run never killed
# --------------------------------------------------------------------------------------------


def launch(argv: list[str], fault: str = "none", seven: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", fault, str(int(seven)), *argv]
    return subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finished(p: subprocess.Popen, timeout: float = 300) -> subprocess.CompletedProcess:
    out, err = p.communicate(timeout=timeout)
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def stage_argv(stage: str, run: Path, steps: int, init: Path | None) -> list[str]:
    opts = [o.format(steps=steps) for o in (PRETRAIN if stage == "pretrain" else GRPO)]
    return [stage, "--run", str(run), *(["--init", str(init)] if init else []), *opts]


def killed_run(stage: str, run: Path, steps: int, kills: int, rng: random.Random, init: Path | None = None,
               log=print) -> dict:
    """Train `run` to `steps`, killing it `kills` times; returns what happened."""
    import runs

    seven = stage == "grpo"
    history = []
    for i in range(kills + 1):
        argv = stage_argv(stage, run, steps, init)
        if run.is_dir() and any(run.iterdir()):
            argv.append("--resume")
        if runs.has_checkpoint(run):  # the latest checkpoint always loads, whatever moment the kill hit
            before = runs.load_checkpoint(run)["step"]
        else:
            before = 0
        last = i == kills
        inside = not last and rng.random() < 0.5 and before + 1 < steps
        fault = f"save:{rng.randint(1, max(1, min(3, steps - before - 1)))}:{rng.choice(PHASES)}" if inside else "none"
        p = launch(argv, fault, seven)
        if not last and not inside:
            time.sleep(rng.uniform(0.5, 5.0))
            p.send_signal(signal.SIGKILL)
        res = finished(p)
        if last and res.returncode != 0:
            raise AssertionError(f"the last, unkilled {stage} run failed: {res.stderr[-2000:]}")
        if not last and res.returncode not in (-signal.SIGKILL, 0):
            raise AssertionError(f"a {stage} run failed before its kill: {res.stderr[-2000:]}")
        how = "ran to the end" if res.returncode == 0 else (f"killed in save ({fault})" if inside else "killed")
        after = runs.load_checkpoint(run)["step"] if runs.has_checkpoint(run) else 0
        history.append((fault, res.returncode, before, after))
        log(f"  {stage} launch {i + 1}: from step {before}, {how}; latest checkpoint now step {after}")
    return {"history": history}


def compare(stage: str, killed: Path, straight: Path) -> None:
    """Bit-identical weights and optimizer state; the same metrics rows, one per step."""
    import torch

    import runs

    a, b = runs.load_checkpoint(killed), runs.load_checkpoint(straight)
    assert a["step"] == b["step"]
    for k in b["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), f"{stage}: {k} differs from the run never killed"
    rows = lambda r: [x for x in runs.Metrics(r / "metrics.jsonl").read() if "eval" not in x]  # noqa: E731
    drop = ("tokens_per_s", "sample_s", "step_s")  # wall-clock figures
    ra, rb = rows(killed), rows(straight)
    assert [x["step"] for x in ra] == list(range(1, b["step"] + 1)), [x["step"] for x in ra]
    assert [{k: v for k, v in x.items() if k not in drop} for x in ra] == \
           [{k: v for k, v in x.items() if k not in drop} for x in rb]


def check(tmp: Path, pretrain_kills: int, grpo_kills: int, steps: int, seed: int = 0, log=print) -> dict:
    """The whole check; returns how many kills landed in each phase."""
    import torch

    import runs

    rng = random.Random(seed)
    log(f"pre-training, {steps} steps, {pretrain_kills} kills")
    pre = killed_run("pretrain", tmp / "pre-killed", steps, pretrain_kills, rng, log=log)
    res = finished(launch(stage_argv("pretrain", tmp / "pre-straight", steps, None)))
    assert res.returncode == 0, res.stderr[-2000:]
    compare("pretrain", tmp / "pre-killed", tmp / "pre-straight")
    log(f"GRPO from that base, {steps} steps, {grpo_kills} kills")
    init = tmp / "pre-straight"
    grpo = killed_run("grpo", tmp / "grpo-killed", steps, grpo_kills, rng, init=init, log=log)
    res = finished(launch(stage_argv("grpo", tmp / "grpo-straight", steps, init), seven=True))
    assert res.returncode == 0, res.stderr[-2000:]
    compare("grpo", tmp / "grpo-killed", tmp / "grpo-straight")
    moved = runs.load_checkpoint(tmp / "grpo-straight")["model"]
    base = runs.load_checkpoint(init)["model"]
    assert sum(not torch.equal(moved[k], base[k]) for k in base) > len(base) // 2, "GRPO barely moved the weights"
    log("ok: every checkpoint loaded; killed + resumed == never killed, bit for bit; one metrics row per step")
    return {"pretrain": pre["history"], "grpo": grpo["history"]}


def test_kill_and_resume_is_exact(tmp_path):
    """A smaller version of the full check (run this file as a script for 10 + 8 kills)."""
    out = check(tmp_path, pretrain_kills=3, grpo_kills=2, steps=12, seed=1, log=lambda *a: None)
    killed = [h for hs in out.values() for h in hs if h[1] == -signal.SIGKILL]
    assert len(killed) >= 3  # most launches really died (a late outside kill may find the run done)


if __name__ == "__main__":
    if sys.argv[1:2] == ["child"]:
        sys.exit(child(sys.argv[2], sys.argv[3] == "1", sys.argv[4:]))
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pretrain-kills", type=int, default=10)
    ap.add_argument("--grpo-kills", type=int, default=8)
    ap.add_argument("--steps", type=int, default=24, help="steps of each run (killed and straight)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        out = check(Path(d), a.pretrain_kills, a.grpo_kills, a.steps, a.seed)
        for stage, hist in out.items():
            inside = sum(1 for f, rc, *_ in hist if f != "none" and rc == -signal.SIGKILL)
            outside = sum(1 for f, rc, *_ in hist if f == "none" and rc == -signal.SIGKILL)
            print(f"{stage}: {outside} kills from outside, {inside} inside checkpoint writes "
                  f"({', '.join(sorted({f.split(':')[2] for f, rc, *_ in hist if f != 'none'}))})")
        print(f"{time.perf_counter() - t0:.0f} s")
