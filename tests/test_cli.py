"""Tests for the command line (r1.py): bad input ends with exit code 2 and exactly one line on stderr
starting with "error:" (never a traceback), before any training starts and without touching existing
files or creating the --run directory; `params` and `--help` work.

The contract is that of `python r1.py ...`, so the cases marked SUBPROCESS run exactly that (exit code,
stderr, a fresh interpreter; ~2 s each just to import torch). The rest call r1.main(argv), which is what
`python r1.py` runs inside `sys.exit(main(sys.argv[1:]))`, with stdout/stderr captured and any escaping
exception turned into a "Traceback" failure: the same checks at a fraction of the CPU (2 shared cores).
A tiny valid run, made in-process with train_lm, is shared by the module.
"""
import argparse
import dataclasses
import hashlib
import os
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]

import r1  # noqa: E402
from data import default_tokenizer  # noqa: E402
from model import build_model, preset  # noqa: E402
from train import TrainConfig, pretrain_batches, train_lm  # noqa: E402
from runs import save_run_files  # noqa: E402
from conftest import SMALL, assert_error, inproc  # noqa: E402

ENV = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def cli(*args, timeout=120):
    env = os.environ | ENV
    return subprocess.run([sys.executable, "r1.py", *map(str, args)], cwd=ROOT, capture_output=True, text=True,
                          timeout=timeout, env=env)


# run as real `python r1.py` processes; the others in-process (see the module docstring)
SUBPROCESS = {"help", "params", "pretrain_steps", "pretrain_exists", "grpo_too_long"}


def tree(path: Path) -> dict:
    """Every file under path with a hash of its bytes (to show nothing changed)."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def valid_run(tmp_path_factory):
    """A complete run directory (config.json, tokenizer.json, a checkpoint) of a tiny 2-step model."""
    run = tmp_path_factory.mktemp("cli") / "base"
    run.mkdir()
    tok = default_tokenizer()
    mcfg = preset("tiny", vocab_size=tok.vocab_size, **SMALL)
    cfg = TrainConfig(steps=2, batch_size=4, eval_every=0, eval_n=2, ckpt_every=0)
    save_run_files(run, mcfg, tok, "pretrain", {"steps": 2})
    model = build_model(mcfg, seed=0)
    train_lm(run, model, tok, cfg, pretrain_batches(cfg), torch.device("cpu"), quiet=True)
    assert (run / "ckpt" / "latest").is_file()
    return run


SFT_OK = '{"prompt": "User: 1+2\\nAssistant:", "completion": "<think></think><answer>3</answer>"}\n'


@pytest.fixture(scope="module")
def ran(valid_run, tmp_path_factory):
    """Every command of this module, run at once (subprocesses in parallel with the in-process ones).

    Returns {name: (result, dir, before)}: `result` has returncode/stdout/stderr; `dir` is the case's own
    folder, holding its inputs and `out`, the --run that must not be created; `before` the hash trees of
    `dir` and of the shared valid run before the command, which must not change.
    """
    base = tmp_path_factory.mktemp("cli_cases")
    cases = {}

    def case(name, *args, setup=None):
        d = base / name
        d.mkdir()
        if setup:
            setup(d)
        cases[name] = (d, [a(d) if callable(a) else a for a in args])

    out = lambda d: d / "out"  # noqa: E731

    def corrupt(d):
        (d / "run" / "ckpt").mkdir(parents=True)
        (d / "run" / "ckpt" / "step_000001.pt").write_bytes(b"this is not a checkpoint\x00\x01" * 8)
        (d / "run" / "ckpt" / "latest").write_text("step_000001.pt")

    def marker(d):
        out(d).mkdir()
        (out(d) / "marker.txt").write_text("precious")

    for name, args in {"steps": ["--steps", "-1"], "lr": ["--lr", "0"], "tasks": ["--tasks", "nope"],
                       "preset": ["--preset", "nope"]}.items():
        case(f"pretrain_{name}", "pretrain", "--run", out, "--device", "cpu", *args)
    case("pretrain_exists", "pretrain", "--run", out, "--steps", "2", "--device", "cpu", "--quiet", setup=marker)
    case("pretrain_resume_missing", "pretrain", "--run", out, "--resume", "--steps", "2", "--device", "cpu", "--quiet")
    for kind, run, setup in [("missing", lambda d: d / "nope", None), ("corrupt", lambda d: d / "run", corrupt)]:
        case(f"eval_{kind}", "eval", run, "--device", "cpu", "--n", "1", "--k", "1", setup=setup)
        case(f"sample_{kind}", "sample", run, "--device", "cpu", "--n", "1", setup=setup)
        case(f"grpo_{kind}", "grpo", "--init", run, "--run", out, "--device", "cpu", "--quiet", setup=setup)
    case("grpo_one_generation", "grpo", "--init", valid_run, "--run", out, "--num-generations", "1",
         "--device", "cpu")
    case("grpo_too_long", "grpo", "--init", valid_run, "--run", out, "--max-completion-length", "100000",
         "--device", "cpu", "--quiet")
    case("sft_malformed", "sft", "--data", lambda d: d / "bad.jsonl", "--init", valid_run, "--run", out,
         "--device", "cpu", setup=lambda d: (d / "bad.jsonl").write_text(
             SFT_OK + SFT_OK + '{"prompt": "User: 3+2\\nAssistant:", "completion": <think>\n' + SFT_OK))
    case("sft_untokenizable", "sft", "--data", lambda d: d / "bad.jsonl", "--init", valid_run, "--run", out,
         "--device", "cpu", setup=lambda d: (d / "bad.jsonl").write_text(
             SFT_OK + '{"prompt": "User: 1+2\\nAssistant:", "completion": "caf\\u00e9"}\n'))
    case("params", "params", "--preset", "deepseek-v3-671b")
    case("help", "--help")

    assert SUBPROCESS <= set(cases)
    before = {name: (tree(d), tree(valid_run)) for name, (d, _) in cases.items()}
    with ThreadPoolExecutor(max_workers=2) as pool:
        # the slowest (params, ~8 s) first; the in-process cases run meanwhile
        names = sorted(SUBPROCESS, key=lambda n: n != "params")
        futures = {n: pool.submit(cli, *cases[n][1]) for n in names}
        results = {n: inproc(*args) for n, (_, args) in cases.items() if n not in SUBPROCESS}
        results |= {n: f.result() for n, f in futures.items()}
    return {name: (results[name], cases[name][0], before[name]) for name in cases}


def check_error(ran, valid_run, name, *needles):
    res, d, (before, before_valid) = ran[name]
    line = assert_error(res, *needles)
    assert tree(d) == before  # inputs untouched, nothing new written
    assert tree(valid_run) == before_valid
    assert not (d / "out").exists() or (d / "out" / "marker.txt").exists()
    return line


# --------------------------------------------------------------------------------------------
# pretrain: bad options fail before the run directory is made
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, needle", [("steps", "--steps must be > 0"), ("lr", "--lr must be > 0"),
                                          ("tasks", "'nope'"), ("preset", "'nope'")])
def test_pretrain_bad_option(ran, valid_run, name, needle):
    check_error(ran, valid_run, f"pretrain_{name}", needle)


def test_pretrain_existing_run_dir_untouched(ran, valid_run):
    check_error(ran, valid_run, "pretrain_exists", "already exists", "--resume", "--overwrite")
    d = ran["pretrain_exists"][1]
    assert [p.name for p in (d / "out").iterdir()] == ["marker.txt"]
    assert (d / "out" / "marker.txt").read_text() == "precious"


def test_pretrain_resume_missing_run(ran, valid_run):
    check_error(ran, valid_run, "pretrain_resume_missing", "--resume", "does not exist")


# --------------------------------------------------------------------------------------------
# eval / sample / grpo / sft on missing or corrupt runs, and bad grpo/sft options
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cmd", ["eval", "sample", "grpo"])
def test_missing_run(ran, valid_run, cmd):
    check_error(ran, valid_run, f"{cmd}_missing", "does not exist")


@pytest.mark.parametrize("cmd", ["eval", "sample", "grpo"])
def test_corrupt_checkpoint(ran, valid_run, cmd):
    check_error(ran, valid_run, f"{cmd}_corrupt", "has no checksum", "step_000001.pt")


def test_grpo_one_generation(ran, valid_run):
    check_error(ran, valid_run, "grpo_one_generation", "--num-generations")


def test_grpo_completion_longer_than_context(ran, valid_run):
    res, d, (_, before_valid) = ran["grpo_too_long"]
    assert_error(res, "--max-completion-length", "100000")
    assert tree(valid_run) == before_valid
    assert not (d / "out" / "metrics.jsonl").exists()  # no step ran
    assert not list((d / "out").glob("ckpt/*"))


def test_sft_malformed_line(ran, valid_run):
    check_error(ran, valid_run, "sft_malformed", "bad.jsonl:3:")


def test_sft_untokenizable_line(ran, valid_run):
    check_error(ran, valid_run, "sft_untokenizable", "bad.jsonl:2:")


# --------------------------------------------------------------------------------------------
# params and --help
# --------------------------------------------------------------------------------------------


def test_params_671b(ran):
    res = ran["params"][0]
    assert res.returncode == 0, res.stderr
    assert res.stderr == ""
    assert "671.0" in res.stdout and "70,272" in res.stdout


def test_help(ran):
    res = ran["help"][0]
    assert res.returncode == 0, res.stderr
    assert all(c in res.stdout for c in ("pretrain", "sft", "grpo", "eval", "sample", "params"))


# --------------------------------------------------------------------------------------------
# In-process: bad values caught before anything is written, and the bare-options fallback
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args", [["--difficulty", "99"], ["--long-frac", "2"], ["--tasks", ","],
                                  ["--beta1", "1.5"]])
def test_pretrain_invalid_values_fail_before_run_dir(tmp_path, capsys, args):
    run = tmp_path / "run"
    try:
        rc = r1.main(["pretrain", "--run", str(run), "--steps", "1", "--batch-size", "2", "--eval-n", "1",
                      "--device", "cpu", "--quiet", *args])
    except ValueError as e:
        pytest.fail(f"uncaught ValueError: {e}")
    assert rc == 2
    assert capsys.readouterr().err.startswith("error:")
    assert not run.exists()


def test_grpo_bad_length_leaves_no_run_dir(tmp_path, valid_run, capsys):
    out = tmp_path / "out"
    rc = r1.main(["grpo", "--init", str(valid_run), "--run", str(out), "--max-completion-length", "100000",
                  "--device", "cpu", "--quiet"])
    assert rc == 2
    assert not out.exists()


def test_bare_options_go_to_zero(monkeypatch):
    seen = {}
    monkeypatch.setattr(r1, "cmd_zero", lambda args: seen.update(vars(args)))
    try:
        rc = r1.main(["--smoke", "--seed", "3"])
    except SystemExit as e:
        pytest.fail(f"argparse exited with {e.code}")
    assert rc == 0 and seen["smoke"] and seen["seed"] == 3


def test_no_options_go_to_zero(monkeypatch):
    seen = {}
    monkeypatch.setattr(r1, "cmd_zero", lambda args: seen.update(vars(args)))
    assert r1.main([]) == 0
    assert seen["command"] == "zero" and seen["run"] == "runs/zero" and seen["smoke"] is False


# --------------------------------------------------------------------------------------------
# Help: every option of every subcommand says what it means; the epilog's examples parse
# --------------------------------------------------------------------------------------------


def subcommands():
    parser = r1.build_parser()
    (choices,) = [a.choices for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return choices


@pytest.mark.parametrize("name", sorted(subcommands()))
def test_every_option_has_help(name):
    p = subcommands()[name]
    missing = [a.dest for a in p._actions if not (a.help or "").strip() or (a.help or "").startswith(" (")]
    assert not missing, f"{name}: no help for {missing}"


def test_every_config_field_has_help():
    from recipe import RecipeConfig, RejectionConfig
    from train import TrainConfig
    from train_grpo import GRPOConfig

    for cls in (TrainConfig, GRPOConfig, RecipeConfig, RejectionConfig):
        fields = {f.name for f in dataclasses.fields(cls)}
        texts = r1.CONFIG_HELP[cls.__name__]
        assert set(texts) == fields, (cls.__name__, fields ^ set(texts))
        assert all(t.strip() for t in texts.values())


def test_difficulty_help_matches_the_tasks():
    from data import DEFAULT_DIFFICULTY, DIFFICULTIES

    (difficulty,) = [a.help for a in subcommands()["pretrain"]._actions if a.dest == "difficulty"]
    for task, allowed in DIFFICULTIES.items():
        assert f"{task} {allowed.start}-{allowed.stop - 1} " in difficulty, (task, difficulty)
        assert f"{task} {DEFAULT_DIFFICULTY[task]}" in difficulty.split("default")[-1], (task, difficulty)


def test_epilog_examples_parse():
    """Every `python r1.py ...` line of the module docstring (the --help epilog) is a valid command line."""
    parser = r1.build_parser()
    lines = [line.split("python r1.py", 1)[1] for line in r1.__doc__.splitlines() if "python r1.py" in line]
    assert any(line.split()[:1] == ["ask"] for line in lines)
    for line in lines:
        argv = shlex.split(line.split("   ")[0])  # the command, before the column of comments
        if not argv or argv[0].startswith("-"):
            argv = ["zero"] + argv  # as main() does
        args = parser.parse_args(argv)
        assert callable(args.fn), line
