"""Tests of data/: task generators, held-out split, worked completions, corpus mix, tokenizer.

Answers and traces are checked by code written here, with Python ints and Fractions, never by calling
the generator's own arithmetic: questions are parsed with regexes, steps are re-evaluated, and the "add"
answer is read back out of its trace the way the model has to read it.
"""

import ast
import random
import re
import string
from collections import Counter
from fractions import Fraction

import pytest

from data import (DIFFICULTIES, EVAL_SEED, TASKS, TEMPLATE, Problem, Tokenizer, answer_text, build_corpus,
                  completion, default_tokenizer, eval_set, make_problem, make_problems, n_steps, prompt, split_of)
from data import countdown
from data.tasks import wrong_guess

COMPLETION = re.compile(r"<think>(.*)</think><answer>(.*)</answer>")   # no spaces around the tags
PROMPT = re.compile(r"User asks, Assistant thinks in <think> </think> then answers in <answer> </answer>\.\n"
                    r"User: (.*)\nAssistant:")


def thinking_of(text: str) -> str:
    m = COMPLETION.fullmatch(text)
    assert m, text
    return m.group(1)


def split_steps(thinking: str) -> list[str]:
    """Steps of a thinking text without reflection: joined by single spaces; a countdown attempt ends in its
    check against the target ("33<64"), a dead end then in ' no': a step keeps its check ("46+18=64 33<64")."""
    return [] if thinking == "" else re.split(r" (?!\d+[<>=]\d+(?: |$))", thinking.replace(" no", ""))


def arithmetic(expr: str) -> Fraction:
    """Exact value of digits, + - * / and parentheses (checked by a whitelist, then evaluated on Fractions)."""
    assert re.fullmatch(r"[0-9+\-*/()]+", expr), expr
    return eval(re.sub(r"\d+", lambda m: f"F({m.group()})", expr), {"__builtins__": {}, "F": Fraction})


def check_step(step: str) -> None:
    """'lhs=value' is true arithmetic (for steps made only of numbers and operators)."""
    lhs, value = step.split("=")
    assert arithmetic(lhs) == Fraction(value), step


def problems_at_all_difficulties(task: str, per_difficulty: int, seed: int = 0) -> list[Problem]:
    rng = random.Random(seed)
    return [make_problem(task, rng, d) for d in DIFFICULTIES[task] for _ in range(per_difficulty)]


# ----------------------------------------------------------------------------- problems

def test_unknown_task_is_a_clear_error():
    message = "unknown task 'x'; choose from add, mul, countdown, linear"
    with pytest.raises(ValueError, match=re.escape(message)):
        make_problem("x", random.Random(0), 1)
    with pytest.raises(ValueError, match=re.escape(message)):
        make_problems("x", 3, seed=0)
    with pytest.raises(ValueError, match=re.escape(message)):
        build_corpus(3, tasks=("add", "x"), seed=0)
    assert TASKS == ("add", "mul", "countdown", "linear")


def test_bad_difficulty_and_split_raise():
    with pytest.raises(ValueError, match="difficulty 9"):
        make_problem("add", random.Random(0), 9)
    with pytest.raises(ValueError, match="difficulty 1"):
        make_problem("countdown", random.Random(0), 1)
    with pytest.raises(ValueError, match="split"):
        make_problems("add", 3, split="test", seed=0)
    with pytest.raises(ValueError, match="distinct"):   # d=1 addition has only 200 questions in all
        make_problems("add", 500, seed=0, difficulty=1)


@pytest.mark.parametrize("task", TASKS)
def test_make_problems_is_deterministic_distinct_and_split(task):
    a = make_problems(task, 300, seed=1)
    assert a == make_problems(task, 300, seed=1)
    assert a != make_problems(task, 300, seed=2)
    assert len({p.question for p in a}) == 300
    assert all(p.task == task and split_of(p) == "train" for p in a)
    assert all(split_of(p) == "eval" for p in make_problems(task, 100, split="eval", seed=1))


def test_add_answers_and_question_format():
    for p in problems_at_all_difficulties("add", 300):
        m = re.fullmatch(r"(_*)(0|[1-9]\d*)([+-])(_*)(0|[1-9]\d*)", p.question)  # never a leading zero
        assert m, p.question
        pad_a, a, op, pad_b, b = m.groups()
        assert len(pad_a + a) == len(pad_b + b)                                # one fixed width
        a, b = int(a), int(b)
        assert p.answer == str(a + b if op == "+" else a - b)


def test_mul_answers():
    for p in problems_at_all_difficulties("mul", 300):
        a, b = re.fullmatch(r"([1-9]\d*)\*([1-9]\d?)", p.question).groups()
        assert int(p.answer) == int(a) * int(b)
        assert 2 <= int(b) <= 99


def countdown_values(expr: str) -> tuple[list[int], Fraction, list[Fraction]]:
    """Numbers used, value and every intermediate result of an expression (an ast walk of our own)."""
    numbers, intermediates = [], []

    def walk(node):
        if isinstance(node, ast.Constant):
            numbers.append(node.value)
            return Fraction(node.value)
        left, right = walk(node.left), walk(node.right)
        value = {ast.Add: left + right, ast.Sub: left - right, ast.Mult: left * right,
                 ast.Div: left / right if right else None}[type(node.op)]
        intermediates.append(value)
        return value

    assert re.fullmatch(r"[0-9+\-*/()]+", expr), expr
    value = walk(ast.parse(expr, mode="eval").body)
    assert value == arithmetic(expr)
    return numbers, value, intermediates


def test_countdown_solutions_use_each_number_once_and_hit_the_target():
    for p in problems_at_all_difficulties("countdown", 300):
        numbers_text, target = p.question.split(" -> ")
        numbers = [int(x) for x in numbers_text.split(" ")]
        assert tuple(numbers) == p.numbers == tuple(sorted(numbers))
        assert p.answer == target
        used, value, intermediates = countdown_values(p.solution)
        assert sorted(used) == numbers
        assert value == int(target)
        assert all(v is not None and v.denominator == 1 and 0 < v <= 100 for v in intermediates)
        assert all(1 <= x <= 20 for x in numbers)


def test_linear_answers_solve_the_equation_and_are_reduced():
    for p in problems_at_all_difficulties("linear", 300):
        left, right = p.question.split("=")
        x = Fraction(p.answer)
        assert str(x) == p.answer                                  # reduced, "-3/4" style

        def value(side):                                           # "3x+5", "-4x-7", "20"
            m = re.fullmatch(r"(-?\d+)x([+-]\d+)|(-?\d+)", side)
            assert m, side
            return int(m.group(1)) * x + int(m.group(2)) if m.group(1) else Fraction(int(m.group(3)))

        assert value(left) == value(right)


def test_difficulty_dial():
    rng = random.Random(0)
    for d in DIFFICULTIES["add"]:
        digits = [len(n) for p in (make_problem("add", rng, d) for _ in range(200))
                  for n in re.split(r"[+-]", p.question.replace("_", ""))]
        assert max(digits) == d and min(digits) == max(1, d - 2)
    for d in DIFFICULTIES["mul"]:
        assert {len(make_problem("mul", rng, d).question.split("*")[0]) for _ in range(50)} == {d}
    for d in DIFFICULTIES["countdown"]:  # d-1 or d numbers, half each
        assert {len(make_problem("countdown", rng, d).numbers) for _ in range(50)} == {d - 1, d}
    linear = {d: [make_problem("linear", rng, d) for _ in range(200)] for d in DIFFICULTIES["linear"]}
    assert all(Fraction(p.answer).denominator == 1 and p.question.count("x") == 1 for p in linear[1])
    assert any(Fraction(p.answer).denominator > 1 for p in linear[2])
    assert all(p.question.count("x") == 2 for p in linear[3])


def test_train_and_eval_splits_are_disjoint():
    for task, n in [("add", 5000), ("mul", 2000), ("countdown", 2000), ("linear", 2000)]:
        train = {p.question for p in make_problems(task, n, seed=3)}
        held_out = {p.question for p in make_problems(task, n // 10, split="eval", seed=3)}
        assert len(train) == n and not train & held_out
    # About EVAL_FRACTION of the problem space is held out.
    rng = random.Random(0)
    share = sum(split_of(make_problem("add", rng, 5)) == "eval" for _ in range(5000)) / 5000
    assert 0.08 < share < 0.12
    # Held out at every width: re-padding an eval question to another width keeps it in eval.
    for p in eval_set("add", 100):
        a, op, b = re.fullmatch(r"_*(\d+)([+-])_*(\d+)", p.question).groups()
        assert split_of(Problem("add", f"{a:_>8}{op}{b:_>8}", p.answer)) == "eval"


@pytest.mark.parametrize("task", TASKS)
def test_eval_set_is_fixed(task):
    held_out = eval_set(task)
    assert len(held_out) == 200 and held_out == eval_set(task)
    assert held_out == make_problems(task, 200, split="eval", seed=EVAL_SEED)
    assert eval_set(task, 50) == held_out[:50]
    assert all(split_of(p) == "eval" for p in held_out)


# ----------------------------------------------------------------------------- prompt and completions

def test_template_and_prompt_format():
    assert TEMPLATE == ("User asks, Assistant thinks in <think> </think> then answers in <answer> </answer>.\n"
                        "User: {question}\nAssistant:")
    p = Problem("add", "_1663+_5242", "6905")
    assert prompt(p) == ("User asks, Assistant thinks in <think> </think> then answers in <answer> </answer>.\n"
                         "User: _1663+_5242\nAssistant:")


def test_worked_examples_from_the_docstrings():
    def think(problem):
        return thinking_of(completion(problem))

    assert completion(Problem("add", "_1663+_5242", "6905")) == \
        "<think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>"
    assert think(Problem("add", "_5242-_1663", "3579")) == "2-3-0=-1 4-6-1=-3 2-6-1=-5 5-1-1=3 0-0-0=0"
    assert think(Problem("add", "_1663-_5242", "-3579")) == "swap 2-3-0=-1 4-6-1=-3 2-6-1=-5 5-1-1=3 0-0-0=0"
    assert think(Problem("mul", "347*6", "2082")) == "7*6+0=42 4*6+4=28 3*6+2=20"
    assert think(Problem("mul", "347*86", "29842")) == ("7*6+0=42 4*6+4=28 3*6+2=20 7*8+0=56 4*8+5=37 3*8+3=27 "
                                                       "2+0+0=2 8+6+0=14 0+7+1=8 2+7+0=9 0+2+0=2")
    assert think(Problem("linear", "3x+5=20", "5")) == "3x=20-5=15 x=15/3=5"
    assert think(Problem("linear", "4x-7=-2", "5/4")) == "4x=-2+7=5 x=5/4"
    assert think(Problem("linear", "5x+3=2x+9", "2")) == "5x-2x=3x 3x=9-3=6 x=6/3=2"
    assert think(Problem("linear", "-3x+5=20", "-5")) == "-3x=20-5=15 x=-15/3=-5"
    countdown = Problem("countdown", "6 11 18 20 -> 33", "33", (6, 11, 18, 20), "20-11+18+6")
    assert completion(countdown) == ("<think>6*11=66 66-20=46 46+18=64 33<64 no 20-11=9 9+18=27 27+6=33 33=33"
                                     "</think><answer>20-11+18+6</answer>")    # the module docstring's example


@pytest.mark.parametrize("task", TASKS)
def test_completion_modes(task):
    rng = random.Random(0)
    for p in problems_at_all_difficulties(task, 40):
        n = n_steps(p)
        long_text = completion(p)
        long_steps = split_steps(thinking_of(long_text))
        assert len(long_steps) == n >= 1
        assert COMPLETION.fullmatch(long_text).group(2) == (p.solution if task == "countdown" else p.answer)
        assert answer_text(p) == COMPLETION.fullmatch(long_text).group(2)
        assert completion(p, steps=0) == f"<think></think><answer>{answer_text(p)}</answer>"   # SHORT
        assert completion(p, steps=n) == long_text
        for k in range(1, n):                                                                # GRADED
            graded = thinking_of(completion(p, steps=k))
            worked, guess = graded.rsplit(" ", 1)
            assert len(split_steps(worked)) == k and thinking_of(long_text).startswith(worked + " ")
            assert guess == f"{answer_text(p)}?"                       # the true answer, guessed
        for k in range(n):                                                                   # REFLECT
            text = completion(p, steps=k, reflect=True, rng=rng)
            before, after = thinking_of(text).split(" wait ")
            worked, guess = (" " + before).rsplit(" ", 1)
            assert (worked + " " + after).strip() == thinking_of(long_text)       # guess, wait, then the rest
            assert guess.endswith("?") and guess[:-1] != answer_text(p)            # the guess is wrong
            assert len(guess) == len(answer_text(p)) + 1                            # one digit off
            assert sum(a != b for a, b in zip(guess, answer_text(p))) == 1
            assert COMPLETION.fullmatch(text).group(2) == answer_text(p)
        assert completion(p, steps=0, reflect=True) == completion(p, steps=0, reflect=True)  # no rng: by the problem
        with pytest.raises(ValueError):
            completion(p, steps=n + 1)
        with pytest.raises(ValueError):
            completion(p, reflect=True)                                # LONG has no stop to reflect at


def test_wrong_guess_changes_an_unworked_digit():
    rng = random.Random(0)
    for _ in range(200):
        guess = wrong_guess("6905", 2, rng)
        assert guess[2:] == "05" and guess[:2] != "69" and guess[0] != "0"    # the two worked digits kept
    assert {wrong_guess("-42", 5, rng)[1] for _ in range(100)} <= set("123456789")  # all worked: any digit
    assert wrong_guess("7", 1, rng) != "7"
    with pytest.raises(ValueError):
        wrong_guess("x", 0, rng)


def test_add_trace_columns_and_answer_can_be_read_back():
    """Each step works column i of the question with the carry/borrow of step i-1, and the answer is the
    step results read backwards (r mod 10, plus the final carry), with a minus sign after "swap"."""
    for p in problems_at_all_difficulties("add", 200, seed=1):
        top, op, bottom = re.fullmatch(r"(_*\d+)([+-])(_*\d+)", p.question).groups()
        steps = split_steps(thinking_of(completion(p)))
        swapped = steps[0] == "swap"
        assert swapped == (op == "-" and int(top.strip("_")) < int(bottom.strip("_")))
        if swapped:
            steps, top, bottom = steps[1:], bottom, top
        assert len(steps) == len(top)
        carry, total = 0, 0
        for i, step in enumerate(steps):
            m = re.fullmatch(r"(\d)([+-])(\d)([+-])([01])=(-?\d+)", step)
            assert m, step
            x, y = (int(s[-1 - i]) if s[-1 - i] != "_" else 0 for s in (top, bottom))
            assert (int(m.group(1)), m.group(2), int(m.group(3)), m.group(4), int(m.group(5))) == (x, op, y, op, carry)
            check_step(step)
            r = int(m.group(6))
            carry = r // 10 if op == "+" else int(r < 0)
            total += r % 10 * 10 ** i
        total += carry * 10 ** len(steps) if op == "+" else 0
        assert ("-" if swapped else "") + str(total) == p.answer


def test_mul_countdown_linear_steps_are_true():
    for p in problems_at_all_difficulties("mul", 100):
        steps = split_steps(thinking_of(completion(p)))
        d, b = len(p.question.split("*")[0]), int(p.question.split("*")[1])
        assert len(steps) == (d if b < 10 else 3 * d + 2)
        for step in steps:
            assert re.fullmatch(r"\d[*+]\d\+\d+=\d+", step), step
            check_step(step)
    dead_ends = Counter()
    for p in problems_at_all_difficulties("countdown", 100):
        thinking = thinking_of(completion(p))
        *failed, solution = thinking.split(" no ")
        dead_ends[len(failed)] += 1
        assert countdown.attempts(completion(p)) == len(failed) + 1
        assert len(set(failed)) == len(failed)                          # distinct dead ends
        target = int(p.answer)
        for attempt in failed + [solution]:
            *steps, check = attempt.split(" ")                          # its steps, then its check
            assert len(steps) == len(p.numbers) - 1
            for step in steps:
                check_step(step)
            for before, step in zip(steps, steps[1:]):                 # a chain: each step uses the value so far
                assert before.split("=")[-1] in re.split(r"[-+*/]", step.split("=")[0]), (before, step)
            value = int(steps[-1].split("=")[-1])                       # the check: target, how it compares, result
            sign = "=" if target == value else "<" if target < value else ">"
            assert check == f"{target}{sign}{value}", (attempt, check)
            assert (sign == "=") == (attempt is solution)               # dead ends miss, the solution hits
    assert set(dead_ends) == set(range(countdown.MAX_DEAD_ENDS + 1))     # 0..3 dead ends, about evenly
    assert min(dead_ends.values()) > 60
    for p in problems_at_all_difficulties("linear", 100):
        *moves, division = split_steps(thinking_of(completion(p)))
        for step in moves:
            if re.fullmatch(r"-?\d+x[+-]\d+x=-?\d+x", step):            # "5x-2x=3x"
                a, c, r = map(int, re.fullmatch(r"(-?\d+)x([+-]\d+)x=(-?\d+)x", step).groups())
                assert a + c == r
            else:                                                      # "3x=20-5=15"
                check_step(re.fullmatch(r"-?\d+x=(.*)", step).group(1))
        assert re.fullmatch(r"x=-?\d+(/\d+)?(=-?\d+(/\d+)?)?", division), division
        parts = division.split("=")[1:]
        assert Fraction(parts[0]) == Fraction(parts[-1]) == Fraction(p.answer)


# ----------------------------------------------------------------------------- corpus

def test_corpus_mix_follows_the_knobs():
    pairs = build_corpus(4000, seed=0, long_frac=0.4, short_frac=0.3, reflect_rate=0.25)
    assert pairs == build_corpus(4000, seed=0, long_frac=0.4, short_frac=0.3, reflect_rate=0.25)
    modes = Counter()
    for prompt_text, completion_text in pairs:
        question = PROMPT.fullmatch(prompt_text).group(1)
        top, op, bottom = re.fullmatch(r"(_*\d+)([+-])(_*\d+)", question).groups()
        assert split_of(Problem("add", question, "")) == "train"
        n = len(top) + (op == "-" and int(top.strip("_")) < int(bottom.strip("_")))
        thinking = thinking_of(completion_text)
        if " wait " in thinking:
            assert re.sub(r"[^\s>]+\? wait ", "", completion_text) == completion_of_long(prompt_text, completion_text)
            modes["reflect"] += 1
            continue
        k = len([s for s in split_steps(thinking) if not s.endswith("?")])
        modes["short" if k == 0 else "long" if k == n else "graded"] += 1
    stops = 0.3 + 0.3  # SHORT and GRADED examples, a quarter of which REFLECT
    assert abs(modes["long"] / 4000 - 0.4) < 0.03
    assert abs(modes["short"] / 4000 - 0.3 * 0.75) < 0.03
    assert abs(modes["graded"] / 4000 - 0.3 * 0.75) < 0.03
    assert abs(modes["reflect"] / 4000 - stops * 0.25) < 0.03


def test_corpus_knobs_tasks_and_difficulty():
    assert all(c == completion_of_long(p, c) for p, c in build_corpus(50, seed=1, long_frac=1.0, short_frac=0.0))
    assert all(c.startswith("<think></think>") for _, c in build_corpus(50, seed=1, long_frac=0.0, short_frac=1.0))
    assert not any(" wait " in c for _, c in build_corpus(200, seed=1))       # reflect_rate defaults to 0
    mixed = build_corpus(400, tasks=TASKS, seed=2, difficulty={"add": 8, "countdown": 6})
    questions = [PROMPT.fullmatch(p).group(1) for p, _ in mixed]
    kinds = Counter("countdown" if "->" in q else "linear" if "x" in q else "mul" if "*" in q else "add"
                    for q in questions)
    assert set(kinds) == set(TASKS) and min(kinds.values()) > 60
    assert all(len(q.split("+")[0].split("-")[0]) == 8 for q in questions if re.fullmatch(r"[_\d]+[+-][_\d]+", q))
    assert all(len(q.split(" -> ")[0].split(" ")) in (5, 6) for q in questions if "->" in q)
    with pytest.raises(ValueError):
        build_corpus(10, seed=0, long_frac=0.8, short_frac=0.3)


def completion_of_long(prompt_text: str, completion_text: str) -> str:
    """The LONG completion of an "add" prompt, rebuilt from the question (the answer is read from the text)."""
    question = PROMPT.fullmatch(prompt_text).group(1)
    return completion(Problem("add", question, COMPLETION.fullmatch(completion_text).group(2)))


# ----------------------------------------------------------------------------- tokenizer

def all_kinds_of_text(n_per_task: int) -> list[str]:
    texts = []
    for task in TASKS:
        for d in DIFFICULTIES[task]:
            pairs = build_corpus(n_per_task, tasks=(task,), seed=7, reflect_rate=0.3, difficulty=d)
            texts += [p + c for p, c in pairs]
        texts += [prompt(p) + completion(p) for p in eval_set(task, 50)]
    return texts


def test_tokenizer_round_trip_on_thousands_of_texts():
    tok = default_tokenizer()
    texts = all_kinds_of_text(200)
    assert len(texts) > 4000
    for text, ids in zip(texts, tok.encode_batch(texts, bos=True, eos=True)):
        assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id and ids == tok.encode(text, bos=True, eos=True)
        assert tok.decode(ids) == text
        assert all(0 <= i < tok.vocab_size for i in ids)
    # A prompt and its completion can be encoded apart and concatenated (the cut falls between tokens).
    for prompt_text, completion_text in build_corpus(500, tasks=TASKS, seed=8, reflect_rate=0.3):
        assert tok.encode(prompt_text) + tok.encode(completion_text) == tok.encode(prompt_text + completion_text)


def test_tokenizer_pieces_tags_and_template_cost():
    tok = default_tokenizer()
    for tag in ("<think>", "</think>", "<answer>", "</answer>"):
        ids = tok.encode(tag)
        assert len(ids) == 1 and tok.decode(ids) == tag
    text = prompt(Problem("add", "_1663+_5242", "6905")) + completion(Problem("add", "_1663+_5242", "6905"))
    assert tok.decode(tok.encode(text)).count("<think>") == 2
    assert tok.hf.decode(tok.encode(text)) == text      # not special: HF's default decode (as TRL uses) keeps them
    assert [tok.hf.id_to_token(i) for i in tok.encode("Assistant:<think>10 wait x=3/4</think>")] == \
        ["Assistant", ":", "<think>", "1", "0", " wait", " x", "=", "3", "/", "4", "</think>"]
    preamble, after = TEMPLATE.split("{question}")
    assert len(tok.encode(preamble)) + len(tok.encode(after)) <= 25
    for ch in string.digits + string.ascii_letters + string.punctuation + " \n":
        assert len(tok.encode(ch)) == 1 and tok.decode(tok.encode(ch)) == ch
    assert tok.decode([tok.pad_id, *tok.encode("1+1"), tok.eos_id, tok.pad_id]) == "1+1"
    assert len({tok.pad_id, tok.bos_id, tok.eos_id, tok.unk_id}) == 4


@pytest.mark.parametrize("text, piece", [("hello", "'hello'"), ("1+1 hello", "' hello'"), ("a\tb", r"'\t'"),
                                         ("caf\u00e9", "'caf'"), ("3\u00e9", "'\u00e9'"), ("x <bos>", "'<bos>'")])
def test_tokenizer_rejects_what_it_cannot_encode(text, piece):
    with pytest.raises(ValueError, match=re.escape(piece)):
        default_tokenizer().encode(text)


def test_tokenizer_build_save_and_load(tmp_path):
    tok = Tokenizer.build(["hi there", "<think>1+1=2</think>"])
    assert tok.vocab_size == 4 + 4 + 96 + 2                   # specials, tags, characters, "hi" and " there"
    assert tok.decode(tok.encode("hi there there")) == "hi there there"
    with pytest.raises(ValueError, match="' hi'"):
        tok.encode("hi hi")
    with pytest.raises(ValueError, match="printable ASCII"):
        Tokenizer.build(["na\u00efve"])
    default = default_tokenizer()
    default.save(tmp_path / "tokenizer.json")
    tmp_dir = tmp_path / "ckpt"
    tmp_dir.mkdir()
    default.save(tmp_dir)
    for loaded in (Tokenizer.load(tmp_path / "tokenizer.json"), Tokenizer.load(tmp_dir)):
        assert loaded.vocab_size == default.vocab_size
        assert (loaded.bos_id, loaded.eos_id, loaded.pad_id) == (default.bos_id, default.eos_id, default.pad_id)
        for text in all_kinds_of_text(5):
            assert loaded.encode(text, bos=True) == default.encode(text, bos=True)
            assert loaded.decode(loaded.encode(text)) == text


def test_harder_level_is_one_above_training_and_held_out():
    from data import harder_level, harder_problems

    assert harder_level("add") == 6 and harder_level("add", 3) == 4
    assert harder_level("add", DIFFICULTIES["add"].stop - 1) is None  # trained at the hardest: none
    ps = harder_problems(["add", "countdown"], 20)
    assert [p.task for p in ps] == ["add"] * 20 + ["countdown"] * 20
    assert all(split_of(p) == "eval" for p in ps)
    assert all(len(p.question.split("+")[0].split("-")[0]) == 6 for p in ps if p.task == "add")  # width 6
    assert {len(p.numbers) for p in ps if p.task == "countdown"} == {4, 5}  # 3-4 numbers in training


# ----------------------------------------------------------------------------- reading reflection back

def test_reflection_is_read_back_from_every_mode():
    """evaluate's reflection readers and tools.reflection.way name the mode each completion was written in;
    a reflection "fixes" when its guess is wrong and its answer right, never on a wrong answer."""
    from evaluate import guesses, reflection_count, reflection_fixes
    from tools.reflection import way
    rng = random.Random(0)
    for p in problems_at_all_difficulties("add", 20, seed=2):
        n = n_steps(p)
        texts = {"answer at once": completion(p, steps=0), "steps to the end": completion(p),
                 "guess, then wait": completion(p, steps=0, reflect=True, rng=rng)}
        if n > 1:
            k = rng.randint(1, n - 1)
            texts |= {"steps, then commit": completion(p, steps=k),
                      "steps, then wait": completion(p, steps=k, reflect=True, rng=rng)}
        for name, text in texts.items():
            reflects = "wait" in name
            assert way(p, text) == name
            assert reflection_count(text) == reflects
            assert guesses(text) == (name not in ("answer at once", "steps to the end"))
            assert reflection_fixes(p, text) == reflects                     # the corpus's guesses are wrong
        wrong_answer = texts["guess, then wait"].replace(f"<answer>{p.answer}<", "<answer>0.5<")
        assert not reflection_fixes(p, wrong_answer)
    p = next(p for p in problems_at_all_difficulties("add", 5, seed=2) if n_steps(p) > 1)
    assert way(p, completion(p).split(" ", 1)[0] + "</think><answer>1</answer>") == "steps, then stop"
    assert reflection_count("<think>1+2+0=3 wait</think><answer>wait</answer>") == 1  # the thinking only


def test_completion_budget_covers_every_worked_solution():
    """The sampling budget of each family holds its longest worked solution (held-out set, default level)."""
    from data import completion_budget

    tok = default_tokenizer()
    for task in TASKS:
        longest = max(len(tok.encode(completion(p))) for p in eval_set(task, 200))
        assert longest + 8 <= completion_budget([task])
    assert completion_budget(["add", "countdown"]) == completion_budget(["countdown"])


def test_countdown_attempts_and_full_thinking():
    from data import full_completion

    p = Problem("countdown", "6 11 18 20 -> 33", "33", (6, 11, 18, 20), "20-11+18+6")
    assert countdown.attempts(completion(p)) == 2
    assert countdown.attempts("<think>20-11=9 9+18=27 27+6=33 33=33</think><answer>20-11+18+6</answer>") == 1
    assert countdown.attempts("<think>20-11=9 9+18=27 27+6=33</think><answer>20-11+18+6</answer>") == 1  # no check
    assert countdown.attempts("<think>6*11=66 66-20=46 46+18=64 no 20-11+18+6?</think><answer>x</answer>") == 1
    assert countdown.attempts("<think></think><answer>20-11+18+6</answer>") == 0
    assert countdown.attempts("no think tags at all") == 0
    assert countdown.attempts("x</think>1+2=3<think>4+5=9 no 1+1=2</think>") == 2  # any string, even out of order
    assert full_completion(p) == "<think>20-11=9 9+18=27 27+6=33 33=33</think><answer>20-11+18+6</answer>"
    add = Problem("add", "_1663+_5242", "6905")
    assert full_completion(add) == completion(add)


def test_countdown_failures_name_the_first_cause():
    """tools.countdown_failures gives each wrong completion the first thing that broke it, in either format
    (with the check written out, or the earlier one without it); a right completion has none."""
    from tools.countdown_failures import cause, repeats_a_dead_end

    p = Problem("countdown", "6 11 18 20 -> 33", "33", (6, 11, 18, 20), "20-11+18+6")
    cases = {
        completion(p): None,
        "<think>20-11=9 9+18=27 27+6=33</think><answer>20-11+18+6</answer>": None,
        "<think>20-11=9 9+18=27": "no answer",
        "<think></think><answer>20+11-18+6</answer>": "answered at once",
        "<think>20-11=9 9+18=28 28+6=33 33=33</think><answer>20-11+18+6+1</answer>": "slip in a step",
        "<think>6*11=66 66-20=46 46+18=64 33>64 no</think><answer>6</answer>": "wrong check",
        "<think>6*11=66 66-20=46 46+18=64 34<64 no</think><answer>6</answer>": "wrong check",
        "<think>20-11=9 9+18=27 27+6=33 33=33 no</think><answer>6</answer>": "missed a hit",
        "<think>6*11=66 66-20=46 46+18=64 33<64 no 20-11+18?</think><answer>20-11+18</answer>": "stopped at a guess",
        "<think>6*11=66 66-20=46 46+18=64</think><answer>6*11-20+18</answer>": "answered a miss",
        "<think>6*11=66 66-20=46 46+18=64 33<64</think><answer>6*11-20+18</answer>": "answered a miss",
        "<think>20+20=40 40-18=22 22+11=33 33=33</think><answer>20+20-18+11</answer>": "hit, wrong numbers",
        "<think>20-11=9 9+18=27 27+6=33 33=33</think><answer>20-11+18-6</answer>": "answer off",
    }
    for text, why in cases.items():
        assert cause(p, text) == why, text
    assert cause(Problem("countdown", "2 3 15 -> 14", "14", (2, 3, 15), "15+2-3"),
                 "<think>15+2=17 17-2=15 14<15</think><answer>15+2-2</answer>") == "answered a miss"
    dead = "6*11=66 66-20=46 46+18=64 33<64 no "
    assert repeats_a_dead_end(f"<think>{dead}{dead}20-11=9</think>")
    assert not repeats_a_dead_end(completion(p)) and not repeats_a_dead_end("any string</think>no no")


def test_countdown_failures_bad_input_is_one_error_line(tmp_path, capsys):
    from tools.countdown_failures import main

    assert main([str(tmp_path / "no-such-run")]) == 2
    assert main([str(tmp_path), "--n", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(line.startswith("error: ") for line in err), err


def test_countdown_odds_of_blind_search():
    """tools.countdown_odds: 2 2 -> 4 is hit by 2+2 and 2*2 and missed by 2/2, so two chains in three hit."""
    from tools.countdown_odds import hit_rate

    p = Problem("countdown", "2 2 -> 4", "4", (2, 2), "2+2")
    assert 0.5 < hit_rate(p, random.Random(0), tries=300) < 0.8
    assert hit_rate(Problem("countdown", "2 2 -> 3", "3", (2, 2), ""), random.Random(0)) == 0.0  # no chain makes 3
