"""Task "countdown": reach a target from d given numbers with + - * /, using each number exactly once.

Difficulty d (2..5, default 3) is how many numbers are given. Each number is "large" (25, 50, 75 or 100)
with probability 1/4, else 1..10, as in the TV game. A problem is made by combining the numbers at
random, two at a time, into one value, keeping every intermediate result a positive integer of at most
MAX_VALUE: so a solution always exists and its steps are all whole-number arithmetic. The numbers are
listed sorted, so two problems with the same numbers and target are the same question.

    question  3 7 25 50 -> 175
    thinking  50+25=75 75*7=525 525/3=175
    answer    (50+25)*7/3

Problem.answer is the target ("175"); the completion answers with an expression (Problem.solution),
which the reward checks: it must use each number once and equal the target. The thinking is the
solution's steps in evaluation order. Half of the problems (chosen by a hash of the question, so a
problem always gets the same thinking) first show a dead end: a complete attempt that misses the
target, marked " no", before the real steps:

    question  3 7 25 50 -> 175
    thinking  50*7=350 350+25=375 375-3=372 no 50+25=75 75*7=525 525/3=175
    answer    (50+25)*7/3

A tiny model cannot really search, so the long mode here is less of an advantage than in "add"; it
does let the model check each step's value against the target before it commits to an expression.
"""

import ast
import random

from data.common import Problem, Step

DEFAULT_DIFFICULTY = 3
DIFFICULTIES = range(2, 6)
MAX_VALUE = 999                # bound on the target and every intermediate result
LARGE = (25, 50, 75, 100)
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def generate(rng: random.Random, difficulty: int) -> Problem:
    """Random numbers, combined at random into a positive-integer target (see the module docstring)."""
    while True:
        numbers = [rng.choice(LARGE) if rng.random() < 0.25 else rng.randint(1, 10) for _ in range(difficulty)]
        # Each pool item is (value, expression text, precedence of its top operator; 3 for a number).
        pool = [(x, str(x), 3) for x in numbers]
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            (a, a_text, a_prec), (b, b_text, b_prec) = pool[i], pool[j]
            ops = _valid_ops(a, b)
            if not ops:
                break
            op, value = rng.choice(ops)
            prec = _PRECEDENCE[op]
            # Parenthesize so that parsing the text gives back exactly this tree (left-associative
            # reading): a left operand needs them below the operator's precedence, a right one at or below.
            left = f"({a_text})" if a_prec < prec else a_text
            right = f"({b_text})" if b_prec <= prec else b_text
            pool = [item for k, item in enumerate(pool) if k not in (i, j)] + [(value, left + op + right, prec)]
        if len(pool) == 1:
            target, solution, _ = pool[0]
            numbers.sort()
            question = " ".join(map(str, numbers)) + f" -> {target}"
            return Problem("countdown", question, str(target), tuple(numbers), solution)


def steps(problem: Problem) -> list[Step]:
    """Dead end (for half of the problems) then the solution's steps in evaluation order."""
    solution: list[Step] = []
    _evaluate(ast.parse(problem.solution, mode="eval").body, solution)
    return _dead_end(problem) + solution


def answer_text(problem: Problem) -> str:
    return problem.solution


def _valid_ops(a: int, b: int) -> list[tuple[str, int]]:
    """The operations on (a, b) whose result is a positive integer <= MAX_VALUE, with their results."""
    out = [("+", a + b), ("*", a * b)]
    if a > b:
        out.append(("-", a - b))
    if b > 1 and a % b == 0:
        out.append(("/", a // b))
    return [(op, v) for op, v in out if v <= MAX_VALUE]


def _evaluate(node: ast.expr, out: list[Step]) -> int:
    """The value of an expression we generated (numbers and + - * / only); its steps go to `out`.

    Post-order, so each step uses values already written. The parse is our own text, never model output.
    """
    if isinstance(node, ast.Constant) and type(node.value) is int:
        return node.value
    if not (isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS):
        raise ValueError(f"unexpected node in a countdown solution: {ast.dump(node)}")
    a, b = _evaluate(node.left, out), _evaluate(node.right, out)
    op = _AST_OPS[type(node.op)]
    value = {"+": a + b, "-": a - b, "*": a * b, "/": a // b}[op]
    out.append(Step(f"{a}{op}{b}", value))
    return value


def _dead_end(problem: Problem) -> list[Step]:
    """For half of the problems, a complete attempt that misses the target, its last step marked " no"."""
    rng = random.Random(f"dead end:{problem.question}")  # a str seed is hashed the same way in every run
    if rng.random() < 0.5:
        return []
    target = int(problem.answer)
    for _ in range(20):
        pool, out = list(problem.numbers), []
        while len(pool) > 1:
            i, j = rng.sample(range(len(pool)), 2)
            ops = _valid_ops(pool[i], pool[j])
            if not ops:
                break
            op, value = rng.choice(ops)
            out.append(Step(f"{pool[i]}{op}{pool[j]}", value))
            pool = [x for k, x in enumerate(pool) if k not in (i, j)] + [value]
        if len(pool) == 1 and pool[0] != target:
            return out[:-1] + [Step(out[-1].lhs, out[-1].value, note=" no")]
    return []
