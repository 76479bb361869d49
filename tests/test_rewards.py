"""Tests for rewards.py: format, parsing, equivalence, hacking and adversarial inputs, DAPO penalty."""
import ast
import signal
import threading
import time
from fractions import Fraction

import pytest
from hypothesis import given, settings, strategies as st

import rewards
from rewards import (accuracy_reward, answers_equal, extract_answer, format_reward, parse_expression,
                     parse_number, reward)

COUNTDOWN = (3, 7, 25, 50)  # target 175 = (3*25-50)*7 = (7-3)*50-25


def wrap(answer: str, think: str = "x") -> str:
    return f"<think>{think}</think><answer>{answer}</answer>"


# ---------------------------------------------------------------- format and extraction

@pytest.mark.parametrize("completion, expected", [
    ("<think>3+2=5</think><answer>6905</answer>", "6905"),
    ("<think> 3+2=5 </think> <answer> 6905 </answer>", "6905"),
    ("  <think>a\nb</think>\n\n<answer>-3/4</answer>\n", "-3/4"),
    ("<think></think><answer>1</answer>", "1"),  # empty reasoning is still the right shape
    ("<think>x</think><answer>6905 6906</answer>", "6905 6906"),  # well-formed, wrong content
])
def test_well_formed(completion, expected):
    assert format_reward(completion) == 1.0
    assert extract_answer(completion) == expected


@pytest.mark.parametrize("completion", [
    "6905",
    "<answer>6905</answer>",  # no think block
    "<think>x</think>",  # no answer block
    "<answer>6905</answer><think>x</think>",  # wrong order
    "<think>x</think><answer>6905</answer><answer>6906</answer>",  # two answer blocks
    "<think>x</think><think>y</think><answer>6905</answer>",  # two think blocks
    "<think><answer>6905</answer></think>",  # answer only inside think
    "<think><answer>6905</answer></think><answer>6905</answer>",  # tag inside think
    "<think>x</think><answer>6905<think></answer>",  # tag inside answer
    "<think>x</think><answer><Answer>6905</answer>",  # tags in any case count
    "<think>x</think><answer>  </answer>",  # empty answer
    "<think>x</think><answer></answer>",
    "<think>x</think><answer>6905</answer> so 6905",  # trailing text
    "Sure! <think>x</think><answer>6905</answer>",  # leading text
    "<think>x</think> hence <answer>6905</answer>",  # text between blocks
    "<think>x</think><answer>6905",  # truncated
    "<think>x</think><answer>6905</answer",
    "<think>x<answer>6905</answer>",  # think never closed
    "<THINK>x</THINK><ANSWER>6905</ANSWER>",
    "",
])
def test_malformed(completion):
    assert format_reward(completion) == 0.0
    assert extract_answer(completion) is None
    assert accuracy_reward(completion, "6905") == 0.0


def test_completion_length_cap():
    just_under = wrap("6905", think="x" * (rewards.MAX_COMPLETION_CHARS - 40))
    over = wrap("6905", think="x" * rewards.MAX_COMPLETION_CHARS)
    assert accuracy_reward(just_under, "6905") == 1.0 and format_reward(just_under) == 1.0
    assert accuracy_reward(over, "6905") == 0.0 and format_reward(over) == 0.0


# ---------------------------------------------------------------- numbers and expressions

@pytest.mark.parametrize("text, expected", [
    ("6905", Fraction(6905)), ("-12", Fraction(-12)), ("+7", Fraction(7)), (" 42 ", Fraction(42)),
    ("0.5", Fraction(1, 2)), ("-2.25", Fraction(-9, 4)), ("5/3", Fraction(5, 3)), ("-3/4", Fraction(-3, 4)),
    ("2/4", Fraction(1, 2)), ("007", Fraction(7)), ("3.0", Fraction(3)),
])
def test_parse_number_valid(text, expected):
    assert parse_number(text) == expected


@pytest.mark.parametrize("text", [
    "", "-", "+", ".5", "5.", "1/0", "0/0", "6/-8", "1e5", "1e999999", "1_000", "1,000", "1 000",
    "٣", "６９０５", "½", "1+2", "6905 6906", "6905\n6906", "0x10", "inf", "nan", "1/2/3", "--5",
    "1" * 65, "\x00", "5\x00",
])
def test_parse_number_invalid(text):
    assert parse_number(text) is None


@pytest.mark.parametrize("text, value, literals", [
    ("(3*25-50)*7", Fraction(175), [3, 25, 50, 7]),
    ("(7 - 3) * 50 - 25", Fraction(175), [7, 3, 50, 25]),
    ("1/2 + 1/3", Fraction(5, 6), [1, 2, 1, 3]),
    ("-(4)", Fraction(-4), [4]),
    ("+4 - -4", Fraction(8), [4, 4]),
    ("8/(3-8/3)", Fraction(24), [8, 3, 8, 3]),
    ("((((((((((((((((((((1))))))))))))))))))))", Fraction(1), [1]),  # depth 20 is allowed
    ("999999999999*999999999999", Fraction(999999999999**2), [999999999999, 999999999999]),
])
def test_parse_expression_valid(text, value, literals):
    assert parse_expression(text) == (value, literals)


@pytest.mark.parametrize("text", [
    "", "1+", "()", "1 2", "07", "1/0", "0/0", "1/(2-2)", "2**3", "2* *3", "7//2", "7%2", "1.5+1",
    "x+1", "abs(-1)", "[1]", "1;2", "1==1", "1000000000000+1",  # 13-digit literal
    "(" * 21 + "1" + ")" * 21, "(1", "1)", ")1(", "1+" * 99 + "1",  # too many nodes
    "1" + " " * 300,
], ids=lambda text: repr(text[:24]))
def test_parse_expression_invalid(text):
    assert parse_expression(text) is None


def test_nesting_is_checked_before_ast(monkeypatch):
    seen, real_parse = [], ast.parse
    with monkeypatch.context() as patch:  # rewards.ast is the global ast module: undo before asserting
        patch.setattr(rewards.ast, "parse",
                      lambda text, *a, **k: seen.append(text) or real_parse(text, *a, **k))
        results = [parse_expression(text) for text in
                   ["(" * 30 + "1" + ")" * 30, "(" * 10_000 + "1" + ")" * 10_000, "9**9**9**9", "(1)"]]
    assert results == [None, None, None, (Fraction(1), [1])]
    assert seen == ["(1)"]  # only the harmless input reached ast.parse


# ---------------------------------------------------------------- equivalence and accuracy

@pytest.mark.parametrize("a, b", [
    ("1/2", "0.5"), ("2/4", "1/2"), ("3", "3.0"), ("-3/4", "-0.75"), ("+5", "5"), ("1+2", "3"),
    ("1/4+1/4", "0.5"), ("(3*25-50)*7", "175"), ("2*(3+4)", "14"), ("-(1/3)", "-1/3"),
])
def test_answers_equal(a, b):
    assert answers_equal(a, b) and answers_equal(b, a)


@pytest.mark.parametrize("a, b", [
    ("1/2", "0.51"), ("3", "-3"), ("1+2", "4"), ("6905", "6905 6906"), ("6905", "6905, 6906"),
    ("1/3", "0.333"), ("", ""), ("x", "x"), ("1/0", "1/0"), ("2**3", "8"), ("٣", "3"), ("1e3", "1000"),
])
def test_answers_not_equal(a, b):
    assert not answers_equal(a, b) and not answers_equal(b, a)


@pytest.mark.parametrize("answer_text, reference, expected", [
    ("6905", "6905", 1.0), ("+6905", "6905", 1.0), ("6905.0", "6905", 1.0), ("-12", "-12", 1.0),
    ("10/6", "5/3", 1.0), ("-0.75", "-3/4", 1.0), ("6906", "6905", 0.0), ("12", "-12", 0.0),
    ("5/3", "1.66", 0.0), ("1663+5242", "6905", 0.0),  # expression of the question is not a number
    ("6905 6906", "6905", 0.0), ("6905, 6906", "6905", 0.0), ("6905.", "6905", 0.0),
])
def test_accuracy_numbers(answer_text, reference, expected):
    assert accuracy_reward(wrap(answer_text), reference) == expected


def test_bad_reference_raises():
    with pytest.raises(ValueError):
        accuracy_reward(wrap("5"), "five")


@pytest.mark.parametrize("expr, target, expected", [
    ("(3*25-50)*7", "175", 1.0),
    ("(7-3)*50-25", "175", 1.0),
    ("7*(25*3-50)", "175", 1.0),
    ("(3*25-50)*7", "176", 0.0),  # wrong value
    ("(3*25-50)*7*7/7", "175", 0.0),  # 7 used three times
    ("(25-50)*7", "-175", 0.0),  # 3 omitted
    ("7*25", "175", 0.0),  # two numbers omitted
    ("(3*25-50)*7+1-1", "175", 0.0),  # foreign numbers
    ("175", "175", 0.0),  # the target itself
    ("(3*25-50)*7 = 175", "175", 0.0),
    ("(3*25-50)**1*7", "175", 0.0),
])
def test_countdown(expr, target, expected):
    assert accuracy_reward(wrap(expr), target, COUNTDOWN) == expected


# ---------------------------------------------------------------- the hacking table

@pytest.mark.parametrize("completion, reference, numbers, fmt", [
    ("<think>x</think><answer>6905</answer><answer>6906</answer>", "6905", None, 0.0),
    ("<think>x</think><answer>6906</answer><answer>6905</answer>", "6905", None, 0.0),
    ("<think>so <answer>6905</answer></think>", "6905", None, 0.0),
    ("<think>6905</think><answer> </answer>", "6905", None, 0.0),
    (wrap("6905 6906"), "6905", None, 1.0),
    (wrap("6905, 6906"), "6905", None, 1.0),
    (wrap("6905") + " 6905", "6905", None, 0.0),
    ("<think>x</think><answer>6905", "6905", None, 0.0),
    (wrap("1663+5242"), "6905", None, 1.0),
    (wrap("(3*25-50)*7*7/7"), "175", COUNTDOWN, 1.0),
    (wrap("(25-50)*7"), "-175", COUNTDOWN, 1.0),
    (wrap("(3*25-50)*7+0"), "175", COUNTDOWN, 1.0),
    (wrap("6905", think="x" * 20_000), "6905", None, 0.0),
])
def test_hacking(completion, reference, numbers, fmt):
    total, parts = reward(completion, reference, numbers)
    assert parts["accuracy"] == 0.0
    assert parts["format"] == fmt
    assert total == fmt


# ---------------------------------------------------------------- adversarial input

ADVERSARIAL = rewards.HOSTILE_ANSWERS


@pytest.mark.parametrize("case", ADVERSARIAL, ids=lambda c: repr(c[:24]))
def test_adversarial(case, tmp_path):
    case = case.replace("PWNED", str(tmp_path / "pwned"))
    completion = wrap(case)
    calls = [
        (lambda: accuracy_reward(completion, "6905"), {0.0}),
        (lambda: accuracy_reward(completion, "175", COUNTDOWN), {0.0}),
        (lambda: reward(completion, "6905")[1]["accuracy"], {0.0}),
        (lambda: answers_equal(case, "6905"), {False}),
        (lambda: answers_equal(case, case), {False}),
        (lambda: parse_number(case), {None}),
    ]
    # The structure is fine (format 1) unless the completion is over the length cap; the content is not.
    well_formed = len(completion) <= rewards.MAX_COMPLETION_CHARS
    calls += [(lambda: format_reward(completion), {float(well_formed)}),
              (lambda: extract_answer(completion), {case.strip() if well_formed else None})]
    for call, allowed in calls:
        start = time.perf_counter()
        result = call()
        assert time.perf_counter() - start < 0.1  # a safety bound, not a speed test
        assert result in allowed
    assert not (tmp_path / "pwned").exists()


def test_large_valid_expression_is_exact_and_fast():
    text = "1" + "*999999999999" * 14  # 183 characters, a 168-digit value
    start = time.perf_counter()
    assert parse_expression(text)[0] == 999999999999**14
    assert answers_equal(text, str(999999999999**14)[:60]) is False
    assert answers_equal(text, text) is True
    assert time.perf_counter() - start < 0.1


def test_huge_completion_scores_zero_fast():
    completion = wrap("6905", think="(" * 1_000_000)
    start = time.perf_counter()
    assert reward(completion, "6905") == (0.0, {"accuracy": 0.0, "format": 0.0, "consistency": 0.0,
                                                "overlong": 0.0, "reward": 0.0})
    assert time.perf_counter() - start < 0.1


def test_sympy_time_limit(monkeypatch):
    def slow(expr):
        time.sleep(5)
        return 0
    monkeypatch.setattr(rewards.sympy, "simplify", slow)
    monkeypatch.setattr(rewards, "SYMPY_TIME_LIMIT_S", 0.05)
    handler = signal.getsignal(signal.SIGALRM)
    start = time.perf_counter()
    assert answers_equal("1+2", "3") is False  # the timer fired, so no proof
    assert time.perf_counter() - start < 1.0
    assert signal.getsignal(signal.SIGALRM) is handler
    assert signal.getitimer(signal.ITIMER_REAL) == (0.0, 0.0)


def test_answers_equal_off_main_thread():
    results = []
    worker = threading.Thread(target=lambda: results.append(answers_equal("1+2", "3")))
    worker.start()
    worker.join()
    assert results == [True]


# ---------------------------------------------------------------- reward and DAPO overlong penalty

def test_reward_parts_and_weights():
    right, wrong = wrap("6905"), wrap("6906")
    assert reward(right, "6905") == (2.0, {"accuracy": 1.0, "format": 1.0, "consistency": 0.0, "overlong": 0.0,
                                              "reward": 2.0})
    assert reward(wrong, "6905")[0] == 1.0
    assert reward(right, "6905", format_weight=0.0)[0] == 1.0  # Dr. GRPO: no separate format reward
    assert reward(wrong, "6905", format_weight=0.0)[0] == 0.0
    assert reward(right, "6905", format_weight=0.5)[0] == 1.5


@pytest.mark.parametrize("length, expected", [
    (0, 0.0), (16_384, 0.0), (16_385, -1 / 4096), (18_432, -0.5), (20_479, -4095 / 4096),
    (20_480, -1.0), (20_481, -1.0), (100_000, -1.0),
])
def test_overlong_penalty(length, expected):
    total, parts = reward(wrap("6905"), "6905", completion_len=length, max_len=20_480, overlong_cache=4096)
    assert parts["overlong"] == pytest.approx(expected, abs=1e-12)
    assert total == pytest.approx(2.0 + expected, abs=1e-12)


def test_overlong_penalty_off_by_default():
    assert reward(wrap("6905"), "6905", completion_len=10**6, max_len=100)[1]["overlong"] == 0.0
    with pytest.raises(ValueError):
        reward(wrap("6905"), "6905", completion_len=10, max_len=100, overlong_cache=-1)


# ---------------------------------------------------------------- properties

FRAGMENTS = ["<think>", "</think>", "<answer>", "</answer>", "<Answer>", "<answer", " ", "\n", "0", "1",
             "7", "25", "6905", "+", "-", "*", "**", "/", "(", ")", ".", "e", "x", "\x00", "٣"]
fragments = st.lists(st.sampled_from(FRAGMENTS), max_size=40).map("".join)
completions = st.one_of(st.text(max_size=500), fragments,
                        st.tuples(fragments, fragments).map(lambda t: wrap(t[1], think=t[0])))


def check_invariants(completion: str, reference: str = "6905"):
    fmt, acc = format_reward(completion), accuracy_reward(completion, reference)
    assert fmt in (0.0, 1.0) and acc in (0.0, 1.0)
    assert (extract_answer(completion) is None) == (fmt == 0.0)
    assert acc <= fmt  # a right answer is always a well-formed one
    assert accuracy_reward(completion, "175", COUNTDOWN) <= fmt
    total, parts = reward(completion, reference, completion_len=len(completion), max_len=300,
                          overlong_cache=100)
    assert -1.0 <= parts["overlong"] <= 0.0 and -1.0 <= total <= 2.0


@settings(deadline=None, max_examples=300)
@given(st.text(max_size=500))
def test_random_text_never_raises(text):
    check_invariants(text)
    assert answers_equal(text, "6905") in (True, False)
    number, expression = parse_number(text), parse_expression(text)
    assert number is None or isinstance(number, Fraction)
    assert expression is None or all(0 <= n < 10**12 for n in expression[1])


@settings(deadline=None, max_examples=300)
@given(completions, fragments, fragments)
def test_fragment_completions_never_raise(completion, a, b):
    check_invariants(completion)
    assert answers_equal(a, b) == answers_equal(b, a)
    parsed = parse_expression(a)
    assert parsed is None or all(0 <= n < 10**12 for n in parsed[1])


def _combine(parts):
    (ls, lv, ll), op, (rs, rv, rl) = parts
    if lv is None or rv is None or (op == "/" and rv == 0):
        value = None
    else:
        value = {"+": lv + rv, "-": lv - rv, "*": lv * rv, "/": lv / rv if rv else None}[op]
    return f"({ls}{op}{rs})", value, ll + rl


leaves = st.integers(0, 999).map(lambda n: (str(n), Fraction(n), [n]))
trees = st.recursive(leaves, lambda kids: st.tuples(kids, st.sampled_from("+-*/"), kids).map(_combine),
                     max_leaves=10)


@settings(deadline=None, max_examples=300)
@given(trees)
def test_expression_value_matches_independent_fold(tree):
    text, value, literals = tree
    expected = None if value is None else (value, literals)
    assert parse_expression(text) == expected
    if value is not None:
        assert answers_equal(text, f"{value.numerator}/{value.denominator}")
        assert accuracy_reward(wrap(text), str(value.numerator), literals) == float(value.denominator == 1)


def test_module_has_no_dynamic_code():
    tree = ast.parse(open(rewards.__file__).read())
    called = {node.func.id for node in ast.walk(tree) if isinstance(node, ast.Call)
              and isinstance(node.func, ast.Name)}
    called |= {node.func.attr for node in ast.walk(tree) if isinstance(node, ast.Call)
               and isinstance(node.func, ast.Attribute)}
    assert not called & {"eval", "exec", "sympify", "parse_expr", "__import__"}
