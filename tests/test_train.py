"""Tests for train.py and the checkpoint half of runs.py: a short pre-training run learns (training loss,
held-out loss and greedy accuracy on 1-digit problems), exact resume (an interrupted run resumed from its
checkpoint ends bit-identical to an uninterrupted one), atomic checkpoints under a crash mid-write,
corrupt/missing checkpoints and run directories, the learning-rate schedule, collate's masking, JSONL
reading, config/tokenizer mismatches, and the aux-loss-free MoE bias update with its logged imbalance.

In-process and CPU-only, with tiny model shapes; expected values are written by hand.
"""
import copy
import json
import math
import random
from pathlib import Path

import pytest
import torch



import runs  # noqa: E402
import train  # noqa: E402
from data import Tokenizer, completion, default_tokenizer, eval_set, prompt  # noqa: E402
from evaluate import evaluate  # noqa: E402
from model import build_model, preset  # noqa: E402
from runs import R1Error, load_checkpoint, save_checkpoint  # noqa: E402
from runs import load_run, save_run_files  # noqa: E402
from train import TrainConfig, collate, lr_at, pretrain_batches, read_jsonl, train_lm  # noqa: E402
from conftest import SMALL  # noqa: E402

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def tok():
    return default_tokenizer()


def small_cfg(tok, **kw):
    return preset("tiny", vocab_size=tok.vocab_size, **(SMALL | kw))


def make_run(path: Path, tok, tcfg: TrainConfig, seed: int = 0):
    """A fresh run directory as `r1.py pretrain` makes it: config.json + tokenizer.json, then the model."""
    path.mkdir(parents=True, exist_ok=True)
    mcfg = small_cfg(tok)
    save_run_files(path, mcfg, tok, "pretrain", {"steps": tcfg.steps})
    return build_model(mcfg, seed=seed)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def heldout_at(model, tok, problems) -> float:
    """Mean completion-token loss on LONG worked solutions (independent of train.heldout_loss, which always
    uses each task's default difficulty)."""
    was = model.training
    model.eval()
    with torch.no_grad():
        tokens, targets = collate([(prompt(p), completion(p)) for p in problems], tok, model.cfg.max_seq_len, True)
        loss = model(tokens, targets)["main"].item()
    model.train(was)
    return loss


# --------------------------------------------------------------------------------------------
# A short pre-training run learns (shared by the learning, MoE-bias and metrics tests)
# --------------------------------------------------------------------------------------------

LEARN_STEPS = 400
# difficulty 1 = one-digit add/sub; its held-out split holds only 18 distinct problems
HELDOUT_D1 = 18


@pytest.fixture(scope="module")
def learned(tok, tmp_path_factory):
    run = tmp_path_factory.mktemp("learn")
    cfg = TrainConfig(steps=LEARN_STEPS, batch_size=16, lr=1e-2, warmup=10, difficulty=1, long_frac=1.0,
                      short_frac=0.0, eval_every=0, eval_n=4, ckpt_every=0)
    model = make_run(run, tok, cfg)
    problems = eval_set("add", HELDOUT_D1, difficulty=1)
    before = heldout_at(model, tok, problems)
    bias0 = [m.gate.bias.clone() for m in model.moe_layers()]
    last = train_lm(run, model, tok, cfg, pretrain_batches(cfg), CPU, quiet=True)
    return dict(run=run, model=model, cfg=cfg, last=last, problems=problems, before=before, bias0=bias0)


def test_pretraining_lowers_training_loss(learned):
    rows = [r for r in read_metrics(learned["run"]) if "loss" in r]
    assert [r["step"] for r in rows] == list(range(1, LEARN_STEPS + 1))
    first = sum(r["loss"] for r in rows[:10]) / 10
    last = sum(r["loss"] for r in rows[-10:]) / 10
    assert first > 3.0  # ~ln(vocab) at init: the model starts knowing nothing
    assert last < 0.5 * first, (first, last)
    assert all(math.isfinite(r["loss"]) and all(math.isfinite(x) for x in r["mtp"]) for r in rows)
    # the MTP loss is trained too
    assert sum(r["mtp"][0] for r in rows[-10:]) / 10 < 0.5 * sum(r["mtp"][0] for r in rows[:10]) / 10


def first_result_digit_accuracy(model, tok, problems) -> float:
    """Teacher-forced: how often the model's top token right after a step's "=" is the true result's first
    character (the column arithmetic itself; everything else in a completion is format or copying)."""
    model.eval()
    with torch.no_grad():
        tokens, targets = collate([(prompt(p), completion(p)) for p in problems], tok, model.cfg.max_seq_len, True)
        pred = model(tokens).argmax(-1)
    model.train()
    after_eq = torch.zeros_like(targets, dtype=torch.bool)
    after_eq[:, 1:] = targets[:, :-1] == tok.encode("=")[0]
    return (pred[after_eq] == targets[after_eq]).float().mean().item()


def test_pretraining_lowers_heldout_loss_and_beats_chance(learned, tok):
    """Margins measured over seeds 0-4 (tests/test_train.py's fixture, 400 steps, 1 thread): held-out loss
    4.74-4.79 -> 0.49-0.61; first result digit right 5/18 to 9/18 (0/18 before training; chance, a
    guess among the ~19 results of one-digit add/sub, is ~1/18); format 18/18 for every seed. Greedy
    pass@1 on these 18 problems (2/18 to 6/18 over the seeds) is too coarse to assert on."""
    model, problems = learned["model"], learned["problems"]
    after = heldout_at(model, tok, problems)
    assert after < 0.5 * learned["before"], (learned["before"], after)
    assert first_result_digit_accuracy(model, tok, problems) >= 3 / HELDOUT_D1
    res = evaluate(model, tok, problems, k=1, temperature=0.0, greedy=False)
    assert res["tasks"]["add"]["format"] >= 15 / HELDOUT_D1, res["examples"][:3]


def test_train_lm_end_eval_and_checkpoint(learned):
    rows = read_metrics(learned["run"])
    evals = [r for r in rows if "eval" in r]
    assert len(evals) == 1 and evals[0]["step"] == LEARN_STEPS  # eval_every=0: only at the end
    assert set(evals[0]["eval"]) == {"heldout_loss", "greedy_add"}
    assert learned["last"]["step"] == LEARN_STEPS and "heldout_loss" in learned["last"]
    state = load_checkpoint(learned["run"])  # ckpt_every=0: the end still saves
    assert state["step"] == LEARN_STEPS and state["stage"] == "pretrain"
    assert state["train"]["difficulty"] == 1


def test_logged_heldout_loss_uses_the_training_difficulty(learned, tok):
    ev = [r for r in read_metrics(learned["run"]) if "eval" in r][-1]["eval"]
    own = heldout_at(learned["model"], tok, eval_set("add", learned["cfg"].eval_n, difficulty=1))
    assert ev["heldout_loss"] == pytest.approx(own, rel=1e-4)


def test_moe_biases_move_and_imbalance_is_logged(learned):
    model, cfg = learned["model"], learned["cfg"]
    gamma = model.cfg.bias_update_speed
    moes = model.moe_layers()
    assert moes and all(torch.equal(b, torch.zeros_like(b)) for b in learned["bias0"])
    for m in moes:
        b = m.gate.bias
        assert not b.requires_grad and b.dtype == torch.float32
        assert b.abs().sum() > 0  # the aux-loss-free update ran
        # one update per step of +/- gamma (or 0): b / gamma is an integer in [-steps, steps]
        k = b / gamma
        assert (k - k.round()).abs().max() < 1e-3 and k.abs().max() <= cfg.steps
        # the update pushes towards balance: the biases are not all equal (some raised, some lowered)
        assert b.max() > b.min()
    rows = [r for r in read_metrics(learned["run"]) if "loss" in r]
    imb = [r["load_max_over_mean"] for r in rows]
    assert all(math.isfinite(x) and x >= 1.0 for x in imb)
    assert max(imb) > 1.0  # a real measurement, not the dense-model default of 1.0
    assert all(r["balance"] > 0 for r in rows)  # the sequence-wise balance loss is on
    # the state dict (what checkpoints hold) carries the biases
    sd = model.state_dict()
    bias_keys = [k for k in sd if k.endswith("gate.bias")]
    assert len(bias_keys) == len(moes)


def test_first_step_bias_update_by_hand(tok, tmp_path):
    """One step: each bias moves by exactly +gamma (expert under the mean load), -gamma (over) or 0, from
    that step's loads; the logged imbalance is that step's mean over layers of max load / mean load."""
    cfg = TrainConfig(steps=1, batch_size=8, eval_every=0, eval_n=1, ckpt_every=0, seed=5)
    model = make_run(tmp_path / "run", tok, cfg, seed=5)
    ref = copy.deepcopy(model)
    tokens, targets = collate(pretrain_batches(cfg)(0), tok, ref.cfg.max_seq_len, False)
    ref.train()
    ref.reset_expert_load()
    ref(tokens, targets)
    gamma = model.cfg.bias_update_speed
    loads = [m.load.clone() for m in ref.moe_layers()]
    train_lm(tmp_path / "run", model, tok, cfg, pretrain_batches(cfg), CPU, quiet=True)
    for m, load in zip(model.moe_layers(), loads):
        assert load.sum() > 0
        mean = load.sum() / len(load)
        want = torch.tensor([gamma if x < mean else -gamma if x > mean else 0.0 for x in load.tolist()])
        assert torch.allclose(m.gate.bias, want, atol=1e-9, rtol=0), (m.gate.bias, load)
    row = [r for r in read_metrics(tmp_path / "run") if "loss" in r][0]
    want = sum(max(load.tolist()) / (sum(load.tolist()) / len(load)) for load in loads) / len(loads)
    assert row["load_max_over_mean"] == pytest.approx(want)


def test_lr_logged_follows_schedule(learned):
    cfg = learned["cfg"]
    rows = [r for r in read_metrics(learned["run"]) if "loss" in r]
    for r in rows[::37]:
        assert r["lr"] == pytest.approx(lr_at(r["step"] - 1, cfg))


# --------------------------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------------------------


class Interrupt(Exception):
    pass


def test_resume_is_bit_exact(tok, tmp_path):
    N = 8
    cfg = TrainConfig(steps=N, batch_size=4, lr=3e-3, warmup=2, ckpt_every=N // 2, eval_every=0, eval_n=4, seed=3)
    batches = pretrain_batches(cfg)

    # A: N steps in one go
    a = tmp_path / "a"
    model_a = make_run(a, tok, cfg, seed=3)
    train_lm(a, model_a, tok, cfg, batches, CPU, quiet=True)

    # B: the same run, interrupted right after the checkpoint at N/2 ...
    b = tmp_path / "b"
    model_b = make_run(b, tok, cfg, seed=3)

    def interrupted(step, end=None):
        if step == N // 2:
            raise Interrupt
        return batches(step, end)

    with pytest.raises(Interrupt):
        train_lm(b, model_b, tok, cfg, interrupted, CPU, quiet=True)
    del model_b
    # ... then loaded from disk (in a process whose RNGs are elsewhere) and continued to N
    torch.manual_seed(12345)
    random.seed(12345)
    model_r, tok_r, state = load_run(b)
    assert state["step"] == N // 2 and state["stage"] == "pretrain"
    half = {k: v.clone() for k, v in model_r.state_dict().items()}
    train_lm(b, model_r, tok_r, cfg, batches, CPU, state=state, quiet=True)

    sa, sb = model_a.state_dict(), model_r.state_dict()
    assert sa.keys() == sb.keys()
    bias_keys = [k for k in sa if k.endswith("gate.bias")]
    assert bias_keys and all(sa[k].abs().sum() > 0 for k in bias_keys)
    differ = [k for k in sa if not torch.equal(sa[k], sb[k])]
    assert differ == [], differ
    # the resumed half really trained (the comparison above is not vacuous)
    assert any(not torch.equal(half[k], sb[k]) for k in sb)
    # the optimizer state matches too (so a third leg would also agree)
    oa, ob = load_checkpoint(a)["optimizer"]["state"], load_checkpoint(b)["optimizer"]["state"]
    assert oa.keys() == ob.keys()
    assert all(torch.equal(oa[i][key], ob[i][key]) for i in oa for key in oa[i])
    # and so do the RNG states the checkpoint carries (restored on resume, not the process's own)
    ra, rb = load_checkpoint(a)["rng"], load_checkpoint(b)["rng"]
    assert torch.equal(ra["torch"], rb["torch"]) and ra["python"] == rb["python"]
    # the metrics of B continue at N/2 + 1, with the same losses as A
    la = [r["loss"] for r in read_metrics(a) if "loss" in r]
    lb = [(r["step"], r["loss"]) for r in read_metrics(b) if "loss" in r]
    assert [s for s, _ in lb] == list(range(1, N + 1))
    assert [l for _, l in lb] == la


# --------------------------------------------------------------------------------------------
# Checkpoints: atomic writes, corrupt and missing files
# --------------------------------------------------------------------------------------------


def _state(step):
    return {"model": {"w": torch.full((3,), float(step))}, "config": {}, "step": step}


def test_checkpoint_crash_mid_write_keeps_previous(tmp_path, monkeypatch):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, 1, _state(1))
    save_checkpoint(run, 2, _state(2))
    assert load_checkpoint(run)["step"] == 2

    real_save = torch.save

    def crashing_save(obj, f, *a, **kw):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError("No space left on device")

    monkeypatch.setattr(runs.torch, "save", crashing_save)
    with pytest.raises(OSError, match="No space"):
        save_checkpoint(run, 3, _state(3))
    monkeypatch.setattr(runs.torch, "save", real_save)

    latest = (run / "ckpt" / "latest").read_text().strip()
    assert latest == "step_000002.pt"
    assert not (run / "ckpt" / "step_000003.pt").exists()
    state = load_checkpoint(run)
    assert state["step"] == 2 and torch.equal(state["model"]["w"], torch.full((3,), 2.0))
    # no half-written file is ever named by latest, and the older checkpoint survives too
    assert {p.name for p in (run / "ckpt").glob("step_*.pt")} == {"step_000001.pt", "step_000002.pt"}
    # after the crash, the next save works and prunes to the newest two
    save_checkpoint(run, 3, _state(3))
    assert load_checkpoint(run)["step"] == 3
    assert {p.name for p in (run / "ckpt").glob("step_*.pt")} == {"step_000002.pt", "step_000003.pt"}


def test_corrupt_checkpoint_is_r1error(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save_checkpoint(run, 1, _state(1))
    path = save_checkpoint(run, 2, _state(2))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(R1Error) as e:
        load_checkpoint(run)
    msg = str(e.value)
    assert "does not match its checksum" in msg and "step_000002.pt" in msg and "\n" not in msg


def test_one_flipped_bit_in_tensor_data_is_r1error(tmp_path):
    """The flip lands in a tensor's bytes (the file still unpickles fine): only the checksum sees it."""
    run = tmp_path / "run"
    run.mkdir()
    path = save_checkpoint(run, 1, {"model": {"w": torch.arange(4096.0)}, "config": {}, "step": 1})
    data = bytearray(path.read_bytes())
    at = bytes(data).find(torch.arange(4096.0).numpy().tobytes()[4000:4016])
    assert at > 0
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    assert not torch.equal(torch.load(path, weights_only=True)["model"]["w"], torch.arange(4096.0))
    with pytest.raises(R1Error, match="does not match its checksum"):
        load_checkpoint(run)


def _forge(run, payload: bytes):
    """A checkpoint file with a checksum that matches it: what a crafted download would look like."""
    (run / "ckpt").mkdir(parents=True, exist_ok=True)
    (run / "ckpt" / "latest").write_text("step_000001.pt")
    (run / "ckpt" / "step_000001.pt").write_bytes(payload)
    runs.write_checksum(run / "ckpt" / "step_000001.pt")


class _Boom:
    def __reduce__(self):  # unpickling this object would run `touch PWNED`
        import os
        return (os.system, (f"touch {Path.cwd() / 'PWNED'}",))


def test_checkpoint_with_code_is_refused_and_never_run(tmp_path, monkeypatch):
    import io
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "run"
    buf = io.BytesIO()
    torch.save({"model": {}, "config": {}, "step": 1, "evil": _Boom()}, buf)
    _forge(run, buf.getvalue())
    with pytest.raises(R1Error, match="not a plain-tensor checkpoint"):
        load_checkpoint(run)
    assert not (tmp_path / "PWNED").exists()


def test_garbage_foreign_and_unchecked_checkpoints_are_r1error(tmp_path):
    run = tmp_path / "run"
    _forge(run, b"\x00garbage" * 10)
    with pytest.raises(R1Error, match="is corrupt or not a plain-tensor checkpoint"):
        load_checkpoint(run)
    buf = __import__("io").BytesIO()
    torch.save({"weights": 1}, buf)  # a torch file, not ours
    _forge(run, buf.getvalue())
    with pytest.raises(R1Error, match="not an r1.py checkpoint"):
        load_checkpoint(run)
    (run / "ckpt" / "step_000001.pt.sha256").unlink()
    with pytest.raises(R1Error, match="has no checksum"):
        load_checkpoint(run)
    (run / "ckpt" / "latest").write_text("../../../etc/passwd")
    with pytest.raises(R1Error, match="damaged"):
        load_checkpoint(run)


def test_missing_run_dir_or_checkpoint_is_r1error(tmp_path):
    with pytest.raises(R1Error, match="does not exist"):
        load_checkpoint(tmp_path / "nope")
    with pytest.raises(R1Error, match="does not exist"):
        load_run(tmp_path / "nope")
    run = tmp_path / "empty"
    run.mkdir()
    with pytest.raises(R1Error, match="no checkpoint"):
        load_checkpoint(run)
    (run / "ckpt").mkdir()
    (run / "ckpt" / "latest").write_text("step_000007.pt")  # points at a file that is gone
    with pytest.raises(R1Error, match="which is missing"):
        load_checkpoint(run)


# --------------------------------------------------------------------------------------------
# load_run: consistency of checkpoint, config and tokenizer
# --------------------------------------------------------------------------------------------


@pytest.fixture
def valid_run(tok, tmp_path):
    run = tmp_path / "valid"
    mcfg = small_cfg(tok)
    run.mkdir()
    save_run_files(run, mcfg, tok, "pretrain", {})
    model = build_model(mcfg, seed=0)
    save_checkpoint(run, 1, {"model": model.state_dict(), "config": mcfg.to_dict(), "step": 1, "stage": "pretrain"})
    return run, model


def test_load_run_roundtrip(valid_run, tok):
    run, model = valid_run
    m2, tok2, state = load_run(run)
    assert tok2.vocab_size == tok.vocab_size and state["step"] == 1
    assert all(torch.equal(v, m2.state_dict()[k]) for k, v in model.state_dict().items())


def test_load_run_tokenizer_mismatch(valid_run, tok):
    run, _ = valid_run
    other = Tokenizer.build(["User asks something"])
    assert other.vocab_size != tok.vocab_size
    other.save(run / "tokenizer.json")
    with pytest.raises(R1Error, match="not the tokenizer the checkpoint was trained with"):
        load_run(run)
    # a checkpoint saved with that tokenizer in place: then the vocabularies disagree
    save_checkpoint(run, 2, torch.load(runs.latest_checkpoint(run), weights_only=True))
    with pytest.raises(R1Error, match="config/tokenizer mismatch") as e:
        load_run(run)
    assert str(other.vocab_size) in str(e.value) and str(tok.vocab_size) in str(e.value)


def test_load_run_edited_config_json(valid_run, tok):
    run, _ = valid_run
    stored = json.loads((run / "config.json").read_text())
    stored["model"]["n_heads"] = 4
    (run / "config.json").write_text(json.dumps(stored))
    with pytest.raises(R1Error, match="describes another model than the checkpoint holds"):
        load_run(run)


def test_load_run_config_mismatch(valid_run, tok):
    run, model = valid_run
    state = load_checkpoint(run)
    state["config"]["vocab_size"] = tok.vocab_size + 5
    save_checkpoint(run, 2, state)
    with pytest.raises(R1Error, match="config/tokenizer mismatch"):
        load_run(run)
    # vocab agrees but the weights do not fit the config
    state["config"]["vocab_size"] = tok.vocab_size
    state["config"]["dim"] = 48
    save_checkpoint(run, 3, state)
    stored = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps(stored | {"model": state["config"]}))  # consistently wrong
    with pytest.raises(R1Error, match="do not fit"):
        load_run(run)
    state["config"]["no_such_field"] = 1
    save_checkpoint(run, 4, state)
    with pytest.raises(R1Error, match="config is invalid"):
        load_run(run)


def test_load_run_missing_or_corrupt_tokenizer(valid_run):
    run, _ = valid_run
    (run / "tokenizer.json").write_text("{not json")
    with pytest.raises(R1Error, match="tokenizer.json is not the tokenizer the checkpoint was trained with"):
        load_run(run)
    (run / "tokenizer.json").unlink()
    with pytest.raises(R1Error, match="no tokenizer.json"):
        load_run(run)


# --------------------------------------------------------------------------------------------
# The learning-rate schedule
# --------------------------------------------------------------------------------------------


def test_skill_gate_ends_the_run_with_the_decay_and_resumes_exactly(tok, tmp_path, monkeypatch):
    """decay_at_greedy: the first evaluation whose greedy accuracy reaches it moves the end to that step +
    the decay and the final mix (here 6 + 3 + 2 = 11 of at most 20); the lr decays over the 3 steps, the
    last 2 batches are the final mix at the lowest lr, the checkpoint keeps the step, and a run interrupted
    after the gate and resumed ends with the same weights as the straight one."""
    cfg = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup=1, decay_steps=3, final_mix_steps=2, eval_every=2,
                      eval_n=4, ckpt_every=2, decay_at_greedy=0.5, seed=3)
    calls = []

    def fake_evaluate(model, tok, problems, **kw):  # greedy accuracy 0, 0, then 1.0 from the third evaluation
        calls.append(1)
        acc = 1.0 if len(calls) >= 3 else 0.0
        return {"tasks": {"add": {"pass@1": acc}}, "overall": {"pass@1": acc}}
    monkeypatch.setattr(train, "evaluate", fake_evaluate)

    a = tmp_path / "a"
    model_a = make_run(a, tok, cfg, seed=3)
    init = {k: v.clone() for k, v in model_a.state_dict().items()}
    last = train_lm(a, model_a, tok, cfg, pretrain_batches(cfg), CPU, quiet=True)
    assert last["step"] == 11
    rows = list(runs.Metrics(a / "metrics.jsonl").read())
    assert [r for r in rows if "skill_at" in r] == [{"stage": "pretrain", "step": 6, "skill_at": 6, "end": 11}]
    lrs = [r["lr"] for r in rows if "lr" in r]
    assert lrs == pytest.approx([lr_at(s, cfg, end=11) for s in range(11)])
    assert lrs[:7] == pytest.approx([3e-3] * 7) and lrs[8] < lrs[7] < 3e-3      # held, then the decay
    assert lrs[9:] == pytest.approx([3e-4] * 2)                                  # the final mix at the lowest lr
    assert load_checkpoint(a)["skill_at"] == 6 and recipe_finished(a, cfg)
    final = pretrain_batches(cfg)
    eleven = pretrain_batches(TrainConfig(**{**vars(cfg), "steps": 11}))
    assert final(9, 11) == eleven(9) != final(9) and final(8, 11) == final(8)   # the final mix before the end

    calls.clear()
    b = tmp_path / "b"
    model_b = make_run(b, tok, cfg, seed=3)
    batches = pretrain_batches(cfg)

    def interrupted(step, end=None):
        if step == 7:
            raise Interrupt
        return batches(step, end)
    with pytest.raises(Interrupt):
        train_lm(b, model_b, tok, cfg, interrupted, CPU, quiet=True)
    model_r, tok_r, state = load_run(b)
    assert (state["step"], state["skill_at"]) == (6, 6) and not recipe_finished(b, cfg)
    train_lm(b, model_r, tok_r, cfg, batches, CPU, state=state, quiet=True)
    sa, sr = model_a.state_dict(), model_r.state_dict()
    assert sum(not torch.equal(init[k], sa[k]) for k in sa) > len(sa) // 2      # the weights moved
    assert all(torch.equal(sa[k], sr[k]) for k in sa)


def test_skill_gate_on_sampled_accuracy(tok, tmp_path, monkeypatch):
    """gate_temperature > 0: the gate reads the pass@1 of GATE_K samples a problem at that temperature,
    logged as sampled_<task>, from a generator seeded by the step, so the run's own RNG (which resume
    restores) is untouched: the weights equal those of a run whose gate reads greedy accuracy and fires at
    the same step."""
    def run(path, temperature):
        seen = []

        def fake_evaluate(model, tok, problems, **kw):  # accuracy 0, then 1.0 from the second evaluation
            seen.append(kw)
            if kw["temperature"]:  # what a sampled evaluation does to RNGs: draws from its own generator
                torch.rand(3, generator=torch.Generator().manual_seed(kw["seed"]))
            acc = 1.0 if len(seen) >= 2 else 0.0
            return {"tasks": {"add": {"pass@1": acc}}, "overall": {"pass@1": acc}}
        monkeypatch.setattr(train, "evaluate", fake_evaluate)
        cfg = TrainConfig(steps=20, batch_size=4, lr=3e-3, warmup=1, decay_steps=2, final_mix_steps=1, eval_every=2,
                          eval_n=4, ckpt_every=0, decay_at_greedy=0.5, gate_temperature=temperature, seed=3)
        model = make_run(path, tok, cfg, seed=3)
        last = train_lm(path, model, tok, cfg, pretrain_batches(cfg), CPU, quiet=True)
        return model, last, seen, list(runs.Metrics(path / "metrics.jsonl").read())

    model_s, last, seen, rows = run(tmp_path / "sampled", 0.6)
    assert last["step"] == 4 + 2 + 1                                            # fired at the 2nd evaluation
    assert [(kw["k"], kw["temperature"], kw["seed"]) for kw in seen] == [(train.GATE_K, 0.6, 2), (train.GATE_K, 0.6, 4),
                                                                          (train.GATE_K, 0.6, 6), (train.GATE_K, 0.6, 7)]
    assert [set(r["eval"]) for r in rows if "eval" in r] == [{"heldout_loss", "sampled_add"}] * 4
    model_g, _, seen, _ = run(tmp_path / "greedy", 0.0)
    assert [(kw["k"], kw["temperature"]) for kw in seen] == [(1, 0.0)] * 4
    sg, ss = model_g.state_dict(), model_s.state_dict()
    assert all(torch.equal(sg[k], ss[k]) for k in sg)
    with pytest.raises(R1Error, match="--gate-temperature"):
        TrainConfig(gate_temperature=-0.1)


def recipe_finished(run: Path, cfg: TrainConfig) -> bool:
    import recipe
    return recipe._finished(run, cfg.steps, pretrain=cfg)


def test_lr_schedule_by_hand():
    cfg = TrainConfig(steps=110, warmup=10, lr=2.0, min_lr_frac=0.1, decay_steps=100, final_mix_steps=0)
    # warm-up: lr * (step + 1) / warmup
    assert lr_at(0, cfg) == pytest.approx(0.2)
    assert lr_at(4, cfg) == pytest.approx(1.0)
    assert lr_at(9, cfg) == pytest.approx(2.0)
    # cosine over the remaining 100 steps, from lr to 0.1 * lr = 0.2
    assert lr_at(10, cfg) == pytest.approx(2.0)
    assert lr_at(60, cfg) == pytest.approx(0.2 + 1.8 * 0.5)  # half way: the mean of both ends
    assert lr_at(35, cfg) == pytest.approx(0.2 + 1.8 * 0.5 * (1 + math.cos(math.pi / 4)))
    assert lr_at(110, cfg) == pytest.approx(0.2)
    assert lr_at(500, cfg) == pytest.approx(0.2)  # clamped after the end
    lrs = [lr_at(s, cfg) for s in range(110)]
    assert all(x <= y for x, y in zip(lrs[:10], lrs[1:11]))  # rises through warm-up
    assert all(x >= y for x, y in zip(lrs[10:], lrs[11:]))  # then never rises
    assert min(lrs[10:]) > 0.2  # the last trained step is still above the floor


def test_lr_schedule_constant_then_decay():
    """V3's shape: after the warm-up the lr holds, then a cosine over the last decay_steps steps before the end."""
    cfg = TrainConfig(steps=110, warmup=10, lr=2.0, min_lr_frac=0.1, decay_steps=30, final_mix_steps=0)  # 80..110
    assert [lr_at(s, cfg) for s in (10, 50, 80)] == [pytest.approx(2.0)] * 3
    assert lr_at(95, cfg) == pytest.approx(0.2 + 1.8 * 0.5)  # half way through the decay
    assert lr_at(110, cfg) == pytest.approx(0.2)
    whole = TrainConfig(steps=110, warmup=10, lr=2.0, min_lr_frac=0.1, decay_steps=100, final_mix_steps=0)
    assert lr_at(50, cfg) > lr_at(50, whole)  # a higher lr in the middle of training
    # a run that ends early (the skill gate) decays over the same number of steps before its own end
    assert [lr_at(s, cfg, end=60) for s in (29, 30, 45, 60)] == pytest.approx([2.0, 2.0, 1.1, 0.2])
    # the final mix comes after the decay, at the lowest lr: decay over 60..90, then 0.2 until 110
    mixed = TrainConfig(steps=110, warmup=10, lr=2.0, min_lr_frac=0.1, decay_steps=30, final_mix_steps=20)
    assert [lr_at(s, mixed) for s in (59, 60, 75, 90, 109)] == pytest.approx([2.0, 2.0, 1.1, 0.2, 0.2])


def test_lr_schedule_without_warmup():
    cfg = TrainConfig(steps=4, warmup=0, lr=1.0, min_lr_frac=0.0, decay_steps=4, final_mix_steps=0)
    assert [lr_at(s, cfg) for s in range(5)] == pytest.approx([1.0, (1 + math.cos(math.pi / 4)) / 2, 0.5,
                                                               (1 + math.cos(3 * math.pi / 4)) / 2, 0.0])


@pytest.mark.parametrize("kw", [dict(steps=0), dict(steps=-1), dict(lr=0.0), dict(lr=float("nan")),
                                dict(batch_size=0), dict(warmup=-1), dict(eval_n=0)])
def test_trainconfig_rejects_bad_values(kw):
    with pytest.raises(R1Error):
        TrainConfig(**kw)


def test_trainconfig_rejects_negative_min_lr_frac():
    with pytest.raises(R1Error):
        TrainConfig(min_lr_frac=-1.0)


# --------------------------------------------------------------------------------------------
# collate
# --------------------------------------------------------------------------------------------


def test_collate_by_hand(tok):
    pairs = [("User: 1+2\nAssistant:", "<think>1+2+0=3</think><answer>3</answer>"),
             ("User: 12+3\nAssistant:", "<think></think><answer>15</answer>")]
    for completion_only in (False, True):
        tokens, targets = collate(pairs, tok, 256, completion_only)
        p_lens = [len(tok.encode(p)) for p, _ in pairs]
        c_ids = [tok.encode(c) for _, c in pairs]
        lens = [pl + len(c) + 1 for pl, c in zip(p_lens, c_ids)]  # <bos> prompt completion (no <eos> input)
        assert tokens.shape == targets.shape == (2, max(lens))
        for i, (p, c) in enumerate(pairs):
            full = [tok.bos_id] + tok.encode(p) + c_ids[i] + [tok.eos_id]
            assert tokens[i, :lens[i]].tolist() == full[:-1]
            assert (tokens[i, lens[i]:] == tok.pad_id).all()
            want = full[1:]
            if completion_only:
                # every prompt token's target is masked; the first kept target is the completion's first token
                want = [-100] * p_lens[i] + want[p_lens[i]:]
                assert want[p_lens[i]] == c_ids[i][0]
            assert targets[i, :lens[i]].tolist() == want
            assert targets[i, lens[i] - 1].item() == tok.eos_id
            assert (targets[i, lens[i]:] == -100).all()
        kept = (targets != -100).sum().item()
        assert kept == (sum(len(c) + 1 for c in c_ids) if completion_only else sum(lens))


def test_length_groups_give_the_whole_batch_loss_and_gradient(tok):
    """A pre-training batch in length_groups' micro-batches: padding falls, every example is kept once, and
    the micro-batches' weighted losses and summed gradients are the whole batch's (to float rounding)."""
    cfg = TrainConfig(seed=3)
    pairs = pretrain_batches(cfg)(cfg.steps - 1)  # the final mix: short and long examples
    groups = train.length_groups(pairs, tok)
    assert len(groups) == 2 and sorted(groups[0] + groups[1]) == sorted(pairs)
    whole = collate(pairs, tok, 256, False)
    micro = [collate(g, tok, 256, False) for g in groups]
    assert sum(t.numel() for t, _ in micro) <= 0.9 * whole[0].numel()  # the cut saves a tenth or more
    model, world = build_model(small_cfg(tok), seed=0), runs.World()

    def losses_and_grads(batches):
        model.zero_grad()
        n = sum((y != -100).sum() for _, y in batches).float()
        parts = 0
        for x, y in batches:
            total, p = train.global_token_losses(model(x, y, moe_mask=x != tok.pad_id), y, model.cfg, world, n,
                                                 len(x) / len(pairs))
            total.backward()
            parts = parts + p
        return parts, [p.grad.clone() for p in model.parameters()]

    parts, grads = losses_and_grads([whole])
    m_parts, m_grads = losses_and_grads(micro)
    torch.testing.assert_close(m_parts, parts, rtol=1e-5, atol=1e-7)
    for g, m in zip(grads, m_grads):
        torch.testing.assert_close(m, g, rtol=1e-4, atol=1e-6)


def test_collate_too_long_raises(tok):
    p, c = "User: 1+2\nAssistant:", "<think></think><answer>3</answer>"
    n = len(tok.encode(p, bos=True) + tok.encode(c, eos=True)) - 1  # model input length
    collate([(p, c)], tok, n, True)  # exactly fits
    with pytest.raises(R1Error, match="max_seq_len"):
        collate([(p, c)], tok, n - 1, True)


# --------------------------------------------------------------------------------------------
# read_jsonl and sft_batches
# --------------------------------------------------------------------------------------------


def test_read_jsonl_ok_and_blank_lines(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion": "d", "x": 1}\n')
    assert read_jsonl(f) == [("a", "b"), ("c", "d")]


def test_read_jsonl_malformed_line_names_it(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n\n{"prompt": "c", "completion"\n')
    with pytest.raises(R1Error, match=r"d\.jsonl:3: not valid JSON"):
        read_jsonl(f)


@pytest.mark.parametrize("line", ['{"prompt": "a"}', '{"completion": "b"}', '{"prompt": 1, "completion": "b"}',
                                  '["a", "b"]', '"just a string"'])
def test_read_jsonl_missing_fields(tmp_path, line):
    f = tmp_path / "d.jsonl"
    f.write_text('{"prompt": "a", "completion": "b"}\n' + line + "\n")
    with pytest.raises(R1Error, match=r"d\.jsonl:2: .*'prompt' and 'completion'"):
        read_jsonl(f)


def test_read_jsonl_missing_or_empty_file(tmp_path):
    with pytest.raises(R1Error, match="no such file"):
        read_jsonl(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n\n")
    with pytest.raises(R1Error, match="no examples"):
        read_jsonl(tmp_path / "e.jsonl")


def test_sft_batches_are_epochs_of_permutations():
    pairs = [(str(i), str(i)) for i in range(10)]
    cfg = TrainConfig(batch_size=4, seed=1)
    batch = train.sft_batches(pairs, cfg)
    seen = [x for s in range(5) for x in batch(s)]  # 20 = two epochs
    assert sorted(seen[:10]) == sorted(pairs) and sorted(seen[10:]) == sorted(pairs)
    assert seen[:10] != pairs  # shuffled
    assert batch(3) == batch(3)  # a pure function of the step


def test_pretrain_batches_pure_function_of_seed_and_step():
    cfg = TrainConfig(batch_size=4, seed=2, difficulty=2)
    b = pretrain_batches(cfg)
    assert b(5) == b(5) and b(5) != b(6)
    assert pretrain_batches(TrainConfig(batch_size=4, seed=3, difficulty=2))(5) != b(5)


def test_sft_command_decays_all_along_with_one_mix(valid_run, tmp_path):
    """`r1.py sft` has no skill gate and no final mix, and its lr decays over all its steps unless
    --decay-steps says otherwise (the pre-training defaults would hold the lr and then drop it)."""
    import r1
    run, _ = valid_run
    data = tmp_path / "sft.jsonl"
    data.write_text("".join(json.dumps({"prompt": prompt(p), "completion": completion(p)}) + "\n"
                            for p in eval_set("add", 4)))
    out = tmp_path / "sft"
    assert r1.main(["sft", "--data", str(data), "--init", str(run), "--run", str(out), "--steps", "4",
                    "--batch-size", "2", "--warmup", "0", "--eval-every", "0", "--eval-n", "2", "--ckpt-every", "0",
                    "--device", "cpu", "--quiet"]) == 0
    cfg = json.loads((out / "config.json").read_text())["sft"]
    assert (cfg["decay_steps"], cfg["final_mix_steps"], cfg["decay_at_greedy"]) == (4, 0, 0.0)
    lrs = [r["lr"] for r in runs.Metrics(out / "metrics.jsonl").read() if "lr" in r]
    assert len(lrs) == 4 and all(a > b for a, b in zip(lrs, lrs[1:]))      # a decay from the first step
