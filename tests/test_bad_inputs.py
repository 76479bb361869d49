"""A table of bad inputs, each of which must end the same way: exit code 2, exactly one stderr line
starting with "error:", no traceback, every file that existed before byte-identical (the case's folder,
the shared valid run, the working directory, a fake home), no new file or folder, and nothing executed.

The rows cover CLI values (ranges, nan/inf, sizes that cannot fit in memory), paths (empty, a file,
the working directory, its parent, a git tree, a home folder, a folder not made by r1.py, a folder holding
the command's own source), SFT data, checkpoints (corrupt, one flipped bit, code in a pickle, no checksum,
a pointer out of the folder), run files edited behind the checkpoint's back, resumes with other options,
a second writer on a run in use, and torchrun launches. Each row runs in-process through r1.main (what
`python r1.py` runs), with the working directory and HOME moved into the case's own folder.
"""
import contextlib
import dataclasses
import hashlib
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch


ROOT = Path(__file__).resolve().parents[1]

import r1  # noqa: E402
import report  # noqa: E402, F401 -- matplotlib builds its font cache under HOME once, here, not inside a case
import runs  # noqa: E402
from data import default_tokenizer  # noqa: E402
from model import build_model, preset  # noqa: E402
from train import TrainConfig, pretrain_batches, train_lm  # noqa: E402
from runs import save_run_files  # noqa: E402
from conftest import SMALL, assert_error, inproc  # noqa: E402

CPU = ["--device", "cpu", "--quiet"]
SFT_OK = '{"prompt": "User: 1+2\\nAssistant:", "completion": "<think></think><answer>3</answer>"}\n'


def snapshot(*roots: Path) -> dict:
    """Every file and folder under the roots, with a hash of each file's bytes."""
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() and not p.is_symlink() else "dir"
    return out


def make_run(path: Path, steps: int = 2, small: bool = True) -> Path:
    """A complete run (marker, config.json, tokenizer.json, a checkpoint), as `r1.py pretrain --steps 2
    --batch-size 4 --eval-every 0 --eval-n 2 --ckpt-every 0` makes it (the model shrunk unless not `small`)."""
    runs.mark_run_dir(path)
    tok = default_tokenizer()
    mcfg = preset("tiny", vocab_size=tok.vocab_size, **(SMALL if small else {}))
    cfg = TrainConfig(steps=steps, batch_size=4, eval_every=0, eval_n=2, ckpt_every=0)
    save_run_files(path, mcfg, tok, "pretrain", dataclasses.asdict(cfg), {"preset": "tiny"})
    train_lm(path, build_model(mcfg, seed=0), tok, cfg, pretrain_batches(cfg), torch.device("cpu"), quiet=True)
    return path


@pytest.fixture(scope="module")
def valid(tmp_path_factory):
    return make_run(tmp_path_factory.mktemp("valid") / "run")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A run of the real `tiny` preset: what `--resume` on the command line can continue."""
    return make_run(tmp_path_factory.mktemp("tiny") / "run", small=False)


# --------------------------------------------------------------------------------------------
# Set-ups: each gets the case's folder `d` (also the working directory) and returns nothing
# --------------------------------------------------------------------------------------------


def copy_run(valid: Path, dest: Path) -> Path:
    import shutil
    shutil.copytree(valid, dest)
    return dest


def precious(d):
    (d / "mine").mkdir()
    (d / "mine" / "thesis.tex").write_text("three years of work")


def flip_bit(d, valid):
    run = copy_run(valid, d / "run")
    path = runs.latest_checkpoint(run)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x10
    path.write_bytes(bytes(data))


class Canary:
    """Unpickling this object would create the file CANARY: the proof that a load executed code."""

    def __reduce__(self):
        return (os.system, (f"touch {Path.cwd() / 'CANARY'}",))


def code_checkpoint(d, valid):
    run = copy_run(valid, d / "run")
    path = runs.latest_checkpoint(run)
    state = torch.load(path, weights_only=True)
    torch.save({**state, "payload": Canary()}, path)
    runs.write_checksum(path)  # a crafted download would carry a matching checksum


def forged_latest(d, valid):
    run = copy_run(valid, d / "run")
    (run / "ckpt" / "latest").write_text("../../../../etc/passwd")


def no_checksum(d, valid):
    run = copy_run(valid, d / "run")
    p = runs.latest_checkpoint(run)
    p.with_name(p.name + ".sha256").unlink()


def edit_json(name, change):
    def setup(d, valid):
        run = copy_run(valid, d / "run")
        obj = json.loads((run / name).read_text())
        change(obj)
        (run / name).write_text(json.dumps(obj))
    return setup


def story(d, seed=0):
    """A story folder whose base stage was started with seed 0 (as `python r1.py` makes it)."""
    tok = default_tokenizer()
    s = runs.mark_run_dir(d / "story")
    runs.mark_run_dir(s / "base")
    save_run_files(s / "base", preset("tiny", vocab_size=tok.vocab_size), tok, "pretrain",
                   dataclasses.asdict(TrainConfig(seed=seed)), {"preset": "tiny"})


def torn_metrics(d, valid):
    run = copy_run(valid, d / "run")
    rows = (run / "metrics.jsonl").read_text()
    (run / "metrics.jsonl").write_text('{"stage": "grpo", "step": 1, "rew\n' + rows)


CASES = [
    # --- pre-training options: ranges, non-finite numbers, sizes that cannot fit ---
    ("steps_negative", ["pretrain", "--run", "{d}/out", "--steps", "-1"], None, "--steps must be > 0"),
    ("steps_zero", ["pretrain", "--run", "{d}/out", "--steps", "0"], None, "--steps must be > 0"),
    ("steps_huge", ["pretrain", "--run", "{d}/out", "--steps", str(2**40)], None, "out of range"),
    ("lr_zero", ["pretrain", "--run", "{d}/out", "--lr", "0"], None, "--lr must be > 0"),
    ("lr_inf", ["pretrain", "--run", "{d}/out", "--lr", "inf"], None, "--lr must be a finite number"),
    ("lr_nan", ["pretrain", "--run", "{d}/out", "--lr", "nan"], None, "--lr must be a finite number"),
    ("lr_not_a_number", ["pretrain", "--run", "{d}/out", "--lr", "fast"], None, "--lr"),
    ("seed_negative", ["pretrain", "--run", "{d}/out", "--seed", "-3"], None, "--seed must be >= 0"),
    ("seed_beyond_64_bits", ["pretrain", "--run", "{d}/out", "--seed", str(2**70)], None, "out of range"),
    ("batch_zero", ["pretrain", "--run", "{d}/out", "--batch-size", "0"], None, "--batch-size must be > 0"),
    ("batch_cannot_fit", ["pretrain", "--run", "{d}/out", "--batch-size", "1000000000"], None, "GiB"),
    ("preset_671b_cannot_fit", ["pretrain", "--run", "{d}/out", "--preset", "deepseek-v3-671b"], None, "GiB"),
    ("preset_unknown", ["pretrain", "--run", "{d}/out", "--preset", "gpt5"], None, "gpt5"),
    ("warmup_negative", ["pretrain", "--run", "{d}/out", "--warmup", "-1"], None, "--warmup"),
    ("eval_n_zero", ["pretrain", "--run", "{d}/out", "--eval-n", "0"], None, "--eval-n"),
    ("eval_n_huge", ["pretrain", "--run", "{d}/out", "--eval-n", "100000000"], None, "--eval-n must be at most"),
    ("min_lr_frac", ["pretrain", "--run", "{d}/out", "--min-lr-frac", "2"], None, "--min-lr-frac"),
    ("beta1", ["pretrain", "--run", "{d}/out", "--beta1", "1.5"], None, "--beta1"),
    ("grad_clip_zero", ["pretrain", "--run", "{d}/out", "--grad-clip", "0"], None, "--grad-clip"),
    ("task_unknown", ["pretrain", "--run", "{d}/out", "--tasks", "chess"], None, "'chess'"),
    ("tasks_empty", ["pretrain", "--run", "{d}/out", "--tasks", ","], None, "error"),
    ("difficulty", ["pretrain", "--run", "{d}/out", "--difficulty", "99"], None, "difficulty 99"),
    ("long_frac", ["pretrain", "--run", "{d}/out", "--long-frac", "2"], None, "error"),
    ("device_unknown", ["pretrain", "--run", "{d}/out", "--device", "tpu"], None, "'tpu'"),
    ("bool_garbage", ["pretrain", "--run", "{d}/out", "--completion-only", "maybe"], None, "error"),
    # --- GRPO options ---
    ("grpo_one_generation", ["grpo", "--init", "{v}", "--run", "{d}/out", "--num-generations", "1"], None,
     "--num-generations"),
    ("grpo_generations_cannot_fit", ["grpo", "--init", "{v}", "--run", "{d}/out", "--num-generations",
                                     "100000000"], None, "GiB"),
    ("grpo_too_long", ["grpo", "--init", "{v}", "--run", "{d}/out", "--max-completion-length", "100000"], None,
     "--max-completion-length"),
    ("grpo_lr_inf", ["grpo", "--init", "{v}", "--run", "{d}/out", "--learning-rate", "inf"], None, "finite"),
    ("grpo_beta_negative", ["grpo", "--init", "{v}", "--run", "{d}/out", "--beta", "-1"], None, "--beta"),
    ("grpo_loss_type", ["grpo", "--init", "{v}", "--run", "{d}/out", "--loss-type", "ppo"], None, "--loss-type"),
    ("grpo_temperature_zero", ["grpo", "--init", "{v}", "--run", "{d}/out", "--temperature", "0"], None,
     "--temperature"),
    ("grpo_top_p", ["grpo", "--init", "{v}", "--run", "{d}/out", "--top-p", "1.5"], None, "--top-p"),
    ("grpo_eval_k_huge", ["grpo", "--init", "{v}", "--run", "{d}/out", "--eval-k", "100000"], None, "--eval-k"),
    ("grpo_init_missing", ["grpo", "--init", "{d}/nope", "--run", "{d}/out"], None, "does not exist"),
    ("grpo_run_is_init", ["grpo", "--init", "{v}", "--run", "{v}"], None, "--run must differ from --init"),
    # --- the story ---
    ("story_k_zero", ["--run", "{d}/out", "--k", "0"], None, "--k in 1..256"),
    ("story_n_huge", ["--run", "{d}/out", "--n", "100000000"], None, "--n must be in 1..500"),
    ("story_seed_negative", ["--run", "{d}/out", "--seed", "-1"], None, "--seed"),
    ("story_resume_other_seed", ["--run", "{d}/story", "--resume", "--seed", "5"], lambda d: story(d), "options differ"),
    ("story_resume_other_preset", ["--run", "{d}/story", "--resume", "--preset", "small"], lambda d: story(d), "options differ"),
    # --- paths: nothing the project did not create is ever deleted ---
    ("run_empty", ["pretrain", "--run", "", "--overwrite", "--steps", "1"], precious, "--run is empty"),
    ("run_is_a_file", ["pretrain", "--run", "{d}/mine/thesis.tex", "--steps", "1"], precious, "is a file"),
    ("run_under_a_file", ["pretrain", "--run", "{d}/mine/thesis.tex/run", "--steps", "1"], precious, "thesis.tex"),
    ("overwrite_cwd", ["pretrain", "--run", ".", "--overwrite", "--steps", "1"], precious, "working directory"),
    ("overwrite_parent_of_cwd", ["pretrain", "--run", "..", "--overwrite", "--steps", "1"], precious,
     "working directory"),
    ("overwrite_not_ours", ["pretrain", "--run", "{d}/mine", "--overwrite", "--steps", "1"], precious,
     "not made by r1.py"),
    ("overwrite_home", ["pretrain", "--run", "{d}/home", "--overwrite", "--steps", "1"],
     lambda d: (d / "home").mkdir() or (d / "home" / ".bashrc").write_text("alias ll='ls -l'")
     or runs.mark_run_dir(d / "home"), "home folder"),
    ("overwrite_git_tree", ["pretrain", "--run", "{d}/repo", "--overwrite", "--steps", "1"],
     lambda d: runs.mark_run_dir(d / "repo") and (d / "repo" / ".git").mkdir(), "git work tree"),
    ("overwrite_source_dir", ["pretrain", "--run", str(ROOT), "--overwrite", "--steps", "1"], None, "refusing"),
    ("overwrite_holds_init", ["grpo", "--init", "{d}/story/base", "--run", "{d}/story", "--overwrite"],
     lambda d, v: runs.mark_run_dir(d / "story") and copy_run(v, d / "story" / "base"), "which this command reads"),
    ("overwrite_holds_import_source", ["import", "{d}/story/hf", "--out", "{d}/story", "--overwrite"],
     lambda d, v: runs.mark_run_dir(d / "story") and (d / "story" / "hf").mkdir() or
     (d / "story" / "hf" / "config.json").write_text(json.dumps({"model_type": "deepseek_v3"})),
     "which this command reads"),
    ("export_into_foreign_folder", ["export", "{v}", "--hf", "{d}/mine", "--overwrite"], precious,
     "not made by r1.py"),
    ("exists_without_flag", ["pretrain", "--run", "{d}/mine", "--steps", "1"], precious, "already exists"),
    ("resume_missing", ["pretrain", "--run", "{d}/nope", "--resume"], None, "nothing to resume"),
    ("resume_not_a_run", ["pretrain", "--run", "{d}/mine", "--resume"], precious, "not a run directory"),
    # --- SFT data ---
    ("sft_data_missing", ["sft", "--data", "{d}/none.jsonl", "--init", "{v}", "--run", "{d}/out"], None,
     "no such file"),
    ("sft_data_is_a_folder", ["sft", "--data", "{d}", "--init", "{v}", "--run", "{d}/out"], None, "no such file"),
    ("sft_not_utf8", ["sft", "--data", "{d}/bad.jsonl", "--init", "{v}", "--run", "{d}/out"],
     lambda d: (d / "bad.jsonl").write_bytes(SFT_OK.encode() + b'{"prompt": "\xff\xfe"}\n'), "bad.jsonl:2:"),
    ("sft_malformed_line", ["sft", "--data", "{d}/bad.jsonl", "--init", "{v}", "--run", "{d}/out"],
     lambda d: (d / "bad.jsonl").write_text(SFT_OK + "{not json\n"), "bad.jsonl:2:"),
    ("sft_missing_field", ["sft", "--data", "{d}/bad.jsonl", "--init", "{v}", "--run", "{d}/out"],
     lambda d: (d / "bad.jsonl").write_text('{"prompt": "x"}\n'), "bad.jsonl:1:"),
    ("sft_empty_file", ["sft", "--data", "{d}/bad.jsonl", "--init", "{v}", "--run", "{d}/out"],
     lambda d: (d / "bad.jsonl").write_text("\n\n"), "no examples"),
    ("sft_untokenizable", ["sft", "--data", "{d}/bad.jsonl", "--init", "{v}", "--run", "{d}/out"],
     lambda d: (d / "bad.jsonl").write_text('{"prompt": "User: 1+2", "completion": "caf\\u00e9"}\n'), "bad.jsonl:1:"),
    # --- checkpoints: nothing corrupt is loaded, nothing in them is executed ---
    ("ckpt_flipped_bit", ["eval", "{d}/run", "--n", "1", "--k", "1", "--device", "cpu"], flip_bit, "checksum"),
    ("ckpt_with_code", ["eval", "{d}/run", "--n", "1", "--k", "1", "--device", "cpu"], code_checkpoint,
     "not a plain-tensor checkpoint"),
    ("ckpt_with_code_as_init", ["grpo", "--init", "{d}/run", "--run", "{d}/out"], code_checkpoint,
     "not a plain-tensor checkpoint"),
    ("ckpt_with_code_on_resume", ["pretrain", "--run", "{d}/run", "--resume", "--steps", "2", "--batch-size", "4",
                                  "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0"],
     lambda d, v, t: code_checkpoint(d, t), "not a plain-tensor checkpoint"),
    ("ckpt_with_code_on_export", ["export", "{d}/run", "--hf", "{d}/hf"], code_checkpoint, "plain-tensor"),
    ("ckpt_no_checksum", ["sample", "{d}/run", "--n", "1", "--device", "cpu"], no_checksum, "has no checksum"),
    ("ckpt_latest_escapes", ["eval", "{d}/run", "--n", "1", "--k", "1", "--device", "cpu"], forged_latest, "damaged"),
    # --- run files edited behind the checkpoint's back ---
    ("tokenizer_edited", ["eval", "{d}/run", "--n", "1", "--k", "1", "--device", "cpu"],
     edit_json("tokenizer.json", lambda t: t["model"]["vocab"].update({"Z": 9999})), "not the tokenizer"),
    ("config_edited", ["sample", "{d}/run", "--n", "1", "--device", "cpu"],
     edit_json("config.json", lambda c: c["model"].update(n_heads=4)), "describes another model"),
    ("config_corrupt", ["sample", "{d}/run", "--n", "1", "--device", "cpu"],
     lambda d, v: copy_run(v, d / "run") and (d / "run" / "config.json").write_text("{oops"), "not valid JSON"),
    ("resume_other_options", ["pretrain", "--run", "{d}/run", "--resume", "--steps", "2", "--batch-size", "4",
                              "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0", "--lr", "0.1"],
     lambda d, v, t: copy_run(t, d / "run"), "options differ"),
    ("resume_fewer_steps", ["pretrain", "--run", "{d}/run", "--resume", "--steps", "1", "--batch-size", "4",
                            "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0"],
     lambda d, v, t: copy_run(t, d / "run"), "resume with that many"),
    # --- other commands ---
    ("plot_missing_metrics", ["plot", "{d}/mine"], precious, "no metrics.jsonl"),
    ("plot_damaged_metrics", ["plot", "{d}/run"], torn_metrics, "metrics.jsonl:1:"),
    ("params_unknown", ["params", "--preset", "gpt5"], None, "gpt5"),
    ("import_missing", ["import", "{d}/nope", "--out", "{d}/out"], None, "does not exist"),
    ("export_hf_empty", ["export", "{v}", "--hf", ""], None, "--hf is empty"),
    ("recipe_eval_n_huge", ["recipe", "--run", "{d}/out", "--eval-n", "100000"], None, "--eval-n must be at most"),
    ("cold_start_n_huge", ["cold-start", "--out", "{d}/c.jsonl", "--n", "100000000"], None, "--n must be at most"),
    ("rejection_prompts_huge", ["rejection-sample", "{v}", "--out", "{d}/r.jsonl", "--n-prompts", "100000000"], None,
     "--n-prompts must be at most"),
    ("distill_teacher_missing", ["distill", "--teacher", "{d}/nope", "--run", "{d}/out"], None, "does not exist"),
    ("cold_start_overwrites_yours", ["cold-start", "--out", "{d}/mine/thesis.tex", "--overwrite", "--n", "2"],
     precious, "is not a JSONL file r1 writes"),
    ("rejection_out_is_yours", ["rejection-sample", "{v}", "--out", "{d}/mine/thesis.tex", "--overwrite"], precious,
     "is not a JSONL file r1 writes"),
    ("rejection_stats_is_yours", ["rejection-sample", "{v}", "--out", "{d}/mine/new.jsonl", "--overwrite"],
     lambda d: precious(d) or (d / "mine" / "new.stats.json").write_text("my notes"), "is not a JSON file r1 writes"),
    ("eval_json_is_yours", ["eval", "{v}", "--n", "1", "--k", "1", "--json", "{d}/mine/thesis.tex", "--device", "cpu"],
     precious, "is not a JSON file r1 writes"),
    ("eval_json_missing_folder", ["eval", "{v}", "--n", "1", "--k", "1", "--json", "{d}/no/such/e.json",
                                  "--device", "cpu"], None, "does not exist"),
]


def run_case(tmp: Path, valid: Path, tiny: Path, name: str, argv: list[str], setup) -> tuple:
    """The case's folder set up, then `python r1.py ARGV` in-process with the working directory and HOME
    moved into it -> (folder, files before, files after, result)."""
    d = tmp / name
    d.mkdir()
    (d / "home").mkdir(exist_ok=True) if name != "overwrite_home" else None
    old_cwd, old_home = Path.cwd(), os.environ.get("HOME")
    os.chdir(d)
    os.environ["HOME"] = str(d / "home")
    try:
        if setup is not None:
            setup(*(d, valid, tiny)[:setup.__code__.co_argcount])
        before = snapshot(d, valid)
        res = inproc(*[a.format(d=d, v=valid) for a in argv])
        return d, before, snapshot(d, valid), res
    finally:
        os.chdir(old_cwd)
        if old_home is None:
            os.environ.pop("HOME", None)
        else:
            os.environ["HOME"] = old_home


@pytest.mark.parametrize("name, argv, setup, needle", CASES, ids=[c[0] for c in CASES])
def test_bad_input(tmp_path, valid, tiny, name, argv, setup, needle):
    d, before, after, res = run_case(tmp_path, valid, tiny, name, argv, setup)
    assert_error(res, needle)  # exit 2, one "error:" line naming the needle, no traceback
    assert after == before, "files changed: " + ", ".join(sorted(str(x) for x in set(after.items()) ^ set(before.items()))[:6])
    assert not (d / "CANARY").exists()  # no code from a checkpoint ran


def test_the_table_is_long_enough():
    assert len(CASES) >= 60


def test_a_second_writer_is_refused(tmp_path, tiny):
    """While one process holds a run (pre-training, GRPO...), another writer gets one line and exit 2."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(tiny, run)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; sys.path.insert(0, sys.argv[1]); import runs; "
         "runs.prepare_run_dir(sys.argv[2], resume=True, overwrite=False); print('locked', flush=True); time.sleep(60)",
         str(ROOT), str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        before = snapshot(run)
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = r1.main(["pretrain", "--run", str(run), "--resume", "--steps", "3", "--batch-size", "4",
                          "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0", *CPU])
        assert rc == 2 and "being written by another r1.py process" in err.getvalue()
        assert len(err.getvalue().strip().splitlines()) == 1
        rc = r1.main(["pretrain", "--run", str(run), "--overwrite", "--steps", "1", *CPU])
        assert rc == 2 and snapshot(run) == before
    finally:
        holder.kill()
        holder.wait()
    start = time.perf_counter()  # the holder is gone (killed): its lock went with it
    assert r1.main(["pretrain", "--run", str(run), "--resume", "--steps", "3", "--batch-size", "4",
                    "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0", *CPU]) == 0
    assert runs.load_checkpoint(run)["step"] == 3 and time.perf_counter() - start < 60


def test_overwrite_empties_only_a_marked_run(tmp_path, valid):
    """The one thing --overwrite may delete: a folder r1.py made, emptied and started again."""
    import shutil
    run = tmp_path / "run"
    shutil.copytree(valid, run)
    assert r1.main(["pretrain", "--run", str(run), "--overwrite", "--steps", "1", "--batch-size", "2",
                    "--eval-every", "0", "--eval-n", "1", *CPU]) == 0
    assert runs.load_checkpoint(run)["step"] == 1 and (run / runs.MARKER).exists()


def test_torchrun_bad_launch_is_one_line(tmp_path, monkeypatch, capsys):
    """scale/launch.py outside torchrun, and a global batch that does not split: one line, exit 2."""
    from scale.launch import main
    for var in ("RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "TORCHELASTIC_RESTART_COUNT"):
        monkeypatch.delenv(var, raising=False)
    assert main(["pretrain", "--run", str(tmp_path / "a"), "--device", "cpu"]) == 2
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert main(["pretrain", "--run", str(tmp_path / "b"), "--batch-size", "5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error:") for line in err), err
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_overwrite_replaces_our_own_outputs(tmp_path, capsys):
    """--overwrite replaces what r1 wrote (a cold-start JSONL here), and eval's JSON is refreshed in place."""
    out = tmp_path / "c.jsonl"
    assert r1.main(["cold-start", "--out", str(out), "--n", "3"]) == 0
    first = out.read_text()
    assert r1.main(["cold-start", "--out", str(out), "--n", "3", "--seed", "1"]) == 2  # no --overwrite
    assert out.read_text() == first
    assert r1.main(["cold-start", "--out", str(out), "--n", "3", "--seed", "1", "--overwrite"]) == 0
    assert out.read_text() != first and len(out.read_text().splitlines()) == 3
