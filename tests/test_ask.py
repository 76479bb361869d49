"""Tests for `r1.py ask` (ask.py, data's question readers, the sampler's per-token callback) and for the
checked sampling options, progress lines and run resolution that ask shares with eval and sample.

The runs here hold an untrained model (random weights, saved as a checkpoint): what is tested is the
plumbing, not what a trained model answers. Where the answer matters (right / wrong marking) the
sampled completion is replaced by a stub. Commands run in-process through r1.main, as in test_cli.py.
"""
import io
import random
import re
import sys
from pathlib import Path

import pytest
import torch



from tools import ask  # noqa: E402
import evaluate  # noqa: E402
import r1  # noqa: E402
import rewards  # noqa: E402
from data import (DIFFICULTIES, TASKS, completion, default_tokenizer, describe, make_problem, prompt,  # noqa: E402
                  question_task, read_question)
from model import build_model, preset  # noqa: E402
from runs import R1Error, save_checkpoint  # noqa: E402
from sampler import generate  # noqa: E402
from conftest import SMALL, assert_error, inproc  # noqa: E402
from test_cli import tree  # noqa: E402
from runs import load_run, save_run_files  # noqa: E402


def make_run(path: Path, stage: str, block: dict, model=None, **extra) -> Path:
    """A run directory as r1.py writes it (config.json, tokenizer.json, one checkpoint), untrained."""
    tok = default_tokenizer()
    model = model or build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=0)
    path.mkdir(parents=True)
    save_run_files(path, model.cfg, tok, stage, block, extra)
    save_checkpoint(path, 1, {"model": model.state_dict(), "config": model.cfg.to_dict(), "step": 1, "stage": stage})
    return path


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """base: pre-trained (untrained, in fact) on add at width 5 and countdown with 4 numbers;
    story: a story run (python r1.py) with base/ and rl/ and no checkpoint of its own;
    sft: an SFT run whose init is `base`; imported: a run whose config.json names no tasks;
    add1: add with 1-digit operands, whose held-out set is small."""
    root = tmp_path_factory.mktemp("ask")
    base = make_run(root / "base", "pretrain", {"tasks": ["add", "countdown"], "difficulty": None})
    story = root / "story"
    make_run(story / "base", "pretrain", {"tasks": ["add"], "difficulty": 3})
    make_run(story / "rl", "grpo", {"tasks": ["add"], "difficulty": 3}, init=str(story / "base"))
    sft = make_run(root / "sft", "sft", {"tasks": ["add"], "difficulty": None}, init=str(base), data="x.jsonl")
    imported = make_run(root / "imported", "import", {"source": "hf"})
    add1 = make_run(root / "add1", "pretrain", {"tasks": ["add"], "difficulty": 1})
    return {"base": base, "story": story, "sft": sft, "imported": imported, "add1": add1}


def fake_think(answer):
    """A stand-in for ask.think that 'samples' a fixed completion answering `answer`."""
    def think(model, tok, ids, *, on_text, **kw):
        text = f"<think>0+0+0=0</think><answer>{answer}</answer>"
        for piece in ("<think>", "0+0+0=0", "</think>", f"<answer>{answer}", "</answer>"):
            on_text(piece)
        return text, False
    return think


# --------------------------------------------------------------------------------------------
# Questions: a typed question becomes exactly what the generator writes, or is refused
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_typed_question_is_the_generators_question(task):
    """For random problems of every difficulty, the question typed plainly (no "_" padding, with
    "What is ...?" around it) reads back as the same question and answer."""
    rng = random.Random(0)
    for d in DIFFICULTIES[task]:
        for _ in range(40):
            p = make_problem(task, rng, d)
            typed = f"What is {p.question.replace('_', '')}?"
            q = read_question(task, typed, d)
            assert (q.task, q.question, q.answer, q.numbers) == (p.task, p.question, p.answer, p.numbers), typed
            assert question_task(typed) == task
            if task == "countdown":  # the solver's expression is one the reward accepts
                right = f"<think></think><answer>{q.solution}</answer>"
                assert rewards.accuracy_reward(right, q.answer, q.numbers) == 1.0


def test_add_question_is_padded_to_the_trained_width():
    p = read_question("add", "123+456", 5)
    assert p.question == "123".rjust(5, "_") + "+" + "456".rjust(5, "_")
    assert p.answer == str(123 + 456)
    assert read_question("add", "  5242 - 1663 = ", 4).question == "5242-1663"


@pytest.mark.parametrize("task, difficulty, typed", [
    ("add", 5, "123456+100"),         # an operand wider than the trained width
    ("add", 5, "1+200"),              # ... or narrower: 3 to 5 digits at width 5
    ("add", 5, "12+"),                # malformed
    ("mul", 3, "1234*5"),             # first number too wide
    ("mul", 3, "12*5"),               # ... or too narrow: exactly 3 digits
    ("mul", 3, "123*100"),            # multiplier out of 2..99
    ("countdown", 4, "3 7 -> 10"),      # two numbers at difficulty 4 (3 or 4)
    ("countdown", 3, "3 7 21 -> 31"),   # 21 is never a countdown number (1 to 20)
    ("countdown", 4, "3 7 5 -> 105"),   # a target above 100
    ("linear", 2, "5x+3=2x+9"),       # x on both sides is difficulty 3
    ("linear", 2, "3x+5=99"),         # c out of -20..20
])
def test_out_of_training_questions_are_refused(task, difficulty, typed):
    with pytest.raises(ValueError) as e:
        read_question(task, typed, difficulty)
    assert describe(task, difficulty) in str(e.value)  # says what is answered instead


def test_unsolvable_countdown_is_refused():
    with pytest.raises(ValueError, match="no solution"):
        read_question("countdown", "1 1 1 1 -> 97", 4)


def test_problem_for_refusals_name_what_is_answered():
    tok = default_tokenizer()
    trained = {"add": 5}
    answers = describe("add", 5)
    for typed, needle in [("12*3", "not trained on mul"), ("123 plus 456", "' plus'"), ("12\u00e9+3", "'\u00e9'"),
                          ("hello", "hello"), ("123456+100", "wider")]:
        with pytest.raises(R1Error) as e:
            ask.problem_for(typed, trained, tok)
        assert needle in str(e.value) and answers in str(e.value), str(e.value)


# --------------------------------------------------------------------------------------------
# Streaming: the per-token callback sees exactly what generate returns
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature, speculative", [(0.0, False), (0.8, False), (0.0, True), (0.8, True)])
def test_streamed_tokens_equal_generate(temperature, speculative):
    tok = default_tokenizer()
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=1)
    prompts = [tok.encode(prompt(read_question("add", q)), bos=True) for q in ("123+456", "5242-1663", "700+801")]
    kw = dict(num_samples=2, max_new_tokens=12, temperature=temperature, top_p=0.9, eos_id=tok.eos_id,
              pad_id=tok.pad_id, stop_sequences=[tok.encode("</answer>")], speculative=speculative)
    streamed = [[] for _ in range(2 * len(prompts))]

    def on_token(token, took):
        for r in took.nonzero().squeeze(1).tolist():
            streamed[r].append(int(token[r]))

    watched = generate(model, prompts, generator=torch.Generator().manual_seed(3), on_token=on_token, **kw)
    plain = generate(model, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert torch.equal(watched.tokens, plain.tokens) and torch.equal(watched.mask, plain.mask)
    for r, got in enumerate(streamed):
        assert got == plain.tokens[r][plain.mask[r]].tolist()


def test_think_streams_the_completion_it_returns():
    tok = default_tokenizer()
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=2)
    ids = tok.encode(prompt(read_question("add", "123+456")), bos=True)
    pieces = []
    text, truncated = ask.think(model, tok, ids, temperature=0.6, top_p=0.95, max_new_tokens=20,
                                generator=torch.Generator().manual_seed(0), on_text=pieces.append)
    out = generate(model, [ids], max_new_tokens=20, temperature=0.6, top_p=0.95, eos_id=tok.eos_id,
                   pad_id=tok.pad_id, stop_sequences=[tok.encode("</answer>")],
                   generator=torch.Generator().manual_seed(0))
    assert "".join(pieces) == text == tok.decode(out.tokens[0][out.mask[0]].tolist())
    assert len(pieces) == int(out.mask[0].sum())  # one piece a token, as it was sampled
    assert truncated == bool(out.truncated[0])


# --------------------------------------------------------------------------------------------
# Marking: right, wrong, no answer
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("task", TASKS)
def test_verdict_marks_the_worked_solution_right_and_a_wrong_answer_wrong(task):
    p = make_problem(task, random.Random(5))
    typed = read_question(task, p.question.replace("_", ""), None)
    assert ask.verdict(typed, completion(p), False).startswith("right:")
    wrong = "-1" if p.answer != "-1" else "-2"
    assert ask.verdict(typed, f"<think></think><answer>{wrong}</answer>", False).startswith("wrong:")
    cut = ask.verdict(typed, "<think>1+2", True)
    assert cut.startswith("no answer:") and "--max-new-tokens" in cut


# --------------------------------------------------------------------------------------------
# What a run was trained on, and which run a story run means
# --------------------------------------------------------------------------------------------


def test_trained_on_reads_the_config_chain(runs):
    assert ask.trained_on(runs["base"]) == {"add": 5, "countdown": 4}  # difficulty None: each task's default
    assert ask.trained_on(runs["story"] / "rl") == {"add": 3}
    assert ask.trained_on(runs["sft"]) == ask.trained_on(runs["base"])  # an SFT stage's tasks say nothing
    assert ask.trained_on(runs["imported"]) is None


def test_ask_story_run_uses_its_rl_model(runs, monkeypatch):
    monkeypatch.setattr(ask, "think", fake_think(str(12 + 34)))
    res = inproc("ask", runs["story"], "12+34", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert f"using its RL model, {runs['story'] / 'rl'}" in res.stdout
    assert "User: " + "12".rjust(3, "_") + "+" + "34".rjust(3, "_") in res.stdout  # the rl run's width, 3


# --------------------------------------------------------------------------------------------
# The ask command
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("given, verdict", [(123 + 456, "right:"), (123 + 456 + 1, "wrong:")])
def test_ask_prints_question_thinking_and_verdict(runs, monkeypatch, given, verdict):
    monkeypatch.setattr(ask, "think", fake_think(str(given)))
    res = inproc("ask", runs["base"], "What is 123+456?", "--device", "cpu")
    assert res.returncode == 0 and res.stderr == "", res.stderr
    lines = res.stdout.splitlines()
    assert lines[-3] == "User: " + read_question("add", "123+456").question
    assert lines[-2] == f"Assistant:<think>0+0+0=0</think><answer>{given}</answer>"
    assert lines[-1] == f"{verdict} {given} (the reference answer is {123 + 456})"


def test_ask_streams_what_the_model_samples(runs):
    """No stub: the untrained model's completion, streamed, is the one generate gives for the same seed."""
    res = inproc("ask", runs["base"], "123+456", "--device", "cpu", "--max-new-tokens", "10", "--seed", "7")
    assert res.returncode == 0, res.stderr
    tok = default_tokenizer()
    model, _, _ = load_run(runs["base"])
    ids = tok.encode(prompt(read_question("add", "123+456")), bos=True)
    out = generate(model, [ids], max_new_tokens=10, temperature=0.6, top_p=0.95, eos_id=tok.eos_id,
                   pad_id=tok.pad_id, stop_sequences=[tok.encode("</answer>")],
                   generator=torch.Generator().manual_seed(7))
    assert "Assistant:" + tok.decode(out.tokens[0][out.mask[0]].tolist()) + "\n" in res.stdout
    assert res.stdout.splitlines()[-1].split(":")[0] in ("right", "wrong", "no answer")


def test_ask_reads_questions_from_stdin(runs, monkeypatch):
    """A session: each line a question; a refused one prints its error line and the next is asked."""
    monkeypatch.setattr(ask, "think", fake_think("1"))
    monkeypatch.setattr(sys, "stdin", io.StringIO("100+200\n\n12*3\n3 7 5 -> 22\nquit\n400+500\n"))
    res = inproc("ask", runs["base"], "--device", "cpu")
    assert res.returncode == 0, res.stderr
    asked = [line for line in res.stdout.splitlines() if line.startswith("User: ")]
    assert asked == ["User: " + read_question("add", "100+200").question,
                     "User: " + read_question("countdown", "3 7 5 -> 22").question]  # after "quit": nothing
    errors = res.stderr.strip().splitlines()
    assert len(errors) == 1 and errors[0].startswith("error:") and "not trained on mul" in errors[0]


@pytest.mark.parametrize("args, needle", [
    (["12*3"], "not trained on mul"),
    (["123456+100"], "wider than the 5 digits"),
    (["1+200"], "narrower than the 3 digits"),
    (["12\u00e9+3"], "tokenizer cannot write"),
    (["12"], "not a question"),
    (["100+200", "--task", "linear"], "--task linear"),
    (["100+200", "--task", "nope"], "'nope'"),
    (["100+200", "--temperature", "-1"], "--temperature"),
    (["100+200", "--temperature", "nan"], "--temperature"),
    (["100+200", "--temperature", "inf"], "--temperature"),
    (["100+200", "--top-p", "0"], "--top-p"),
    (["100+200", "--top-p", "1.5"], "--top-p"),
    (["100+200", "--max-new-tokens", "0"], "--max-new-tokens"),
    (["100+200", "--max-new-tokens", "100000"], "max_seq_len"),
    (["100+200", "--seed", "-1"], "--seed"),
    (["100+200", "--seed", str(2 ** 31)], "--seed"),
])
def test_ask_bad_input(runs, args, needle):
    before = tree(runs["base"])
    assert_error(inproc("ask", runs["base"], *args, "--device", "cpu"), needle)
    assert tree(runs["base"]) == before


# --------------------------------------------------------------------------------------------
# eval and sample: the same checks, before any work; progress lines
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("args, needle", [
    (["--k", "0"], "--k"), (["--k", str(r1.MAX_K + 1)], "--k"),
    (["--n", "0"], "--n"), (["--n", str(r1.MAX_N + 1)], "--n"),
    (["--n", str(r1.MAX_N), "--k", str(r1.MAX_SAMPLES // r1.MAX_N + 1)], "samples per task"),
    (["--top-p", "2"], "--top-p"),
    (["--max-new-tokens", "100000"], "max_seq_len"),
])
def test_eval_bad_options_fail_before_evaluating(runs, monkeypatch, args, needle):
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **kw: pytest.fail("evaluated despite a bad option"))
    before = tree(runs["base"])
    assert_error(inproc("eval", runs["base"], "--device", "cpu", *args), needle)
    assert tree(runs["base"]) == before


def test_eval_harder_takes_problems_one_level_above_training(runs, monkeypatch):
    """--harder: the story run trained add at difficulty 3 (1-3 digit operands) is asked at 4."""
    from data import split_of

    seen = []
    monkeypatch.setattr(evaluate, "evaluate", lambda model, tok, problems, **kw: seen.extend(problems) or
                        pytest.fail("stop here"))
    inproc("eval", runs["story"], "--device", "cpu", "--harder", "--n", "5", "--k", "1")
    assert len(seen) == 5 and all(split_of(p) == "eval" for p in seen)
    assert all(len(side) == 4 for p in seen for side in re.split(r"[+-]", p.question.lstrip("-"))[:2])


def test_eval_more_problems_than_the_held_out_set_has(runs, monkeypatch):
    """Add with 1-digit operands has a few dozen held-out problems: the default --n 100 fails in seconds."""
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **kw: pytest.fail("evaluated despite a bad --n"))
    assert_error(inproc("eval", runs["add1"], "--device", "cpu"), "distinct eval problems", "'add'")


@pytest.mark.parametrize("where, needle", [("missing/eval.json", "does not exist"),
                                           ("file.txt/eval.json", "is not a folder"), (".", "is a folder")])
def test_eval_json_unwritable_fails_before_evaluating(runs, tmp_path, monkeypatch, where, needle):
    monkeypatch.setattr(evaluate, "evaluate", lambda *a, **kw: pytest.fail("evaluated despite a bad --json"))
    (tmp_path / "file.txt").write_text("keep")
    before = tree(tmp_path)
    assert_error(inproc("eval", runs["base"], "--device", "cpu", "--json", tmp_path / where), "--json", needle)
    assert tree(tmp_path) == before


def test_eval_and_sample_of_a_story_run(runs, tmp_path):
    story = runs["story"]
    res = inproc("eval", story, "--device", "cpu", "--n", "2", "--k", "2", "--max-new-tokens", "4",
                 "--json", tmp_path / "e.json")
    assert res.returncode == 0, res.stderr
    assert "using its RL model" in res.stdout and "evaluating: samples 4/4" in res.stdout
    assert (tmp_path / "e.json").is_file()
    res = inproc("sample", story, "--device", "cpu", "--n", "2", "--max-new-tokens", "4")
    assert res.returncode == 0, res.stderr
    shown = [line.split("  ->  ")[0] for line in res.stdout.splitlines() if "  ->  " in line]
    assert len(shown) == 2 and all(re.fullmatch(r"[_0-9]{3}[+-][_0-9]{3}", q) for q in shown), shown  # width 3


def test_evaluate_progress_lines(capsys):
    tok = default_tokenizer()
    model = build_model(preset("tiny", vocab_size=tok.vocab_size, **SMALL), seed=0)
    problems = [read_question("add", q) for q in ("100+2000", "300+400", "50000-600")]
    kw = dict(k=2, max_new_tokens=3, greedy=False, batch_rows=2)  # one problem per batch
    quiet = evaluate.evaluate(model, tok, problems, **kw)
    assert capsys.readouterr().out == ""
    loud = evaluate.evaluate(model, tok, problems, progress=True, **kw)
    lines = capsys.readouterr().out.splitlines()
    assert [line.split(" task ")[0] for line in lines] == [f"evaluating: samples {2 * i}/6" for i in (1, 2, 3)]
    assert loud["tasks"] == quiet["tasks"]  # progress only watches


def test_cold_start_says_what_it_writes(tmp_path):
    res = inproc("cold-start", "--out", tmp_path / "c.jsonl", "--n", "3")
    assert res.returncode == 0, res.stderr
    assert res.stdout.startswith("writing 3 readable cold-start examples")
    assert len((tmp_path / "c.jsonl").read_text().splitlines()) == 3

