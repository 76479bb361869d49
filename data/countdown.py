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
import itertools
import random
import re

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
            ops = _valid_ops(pool[i][0], pool[j][0])
            if not ops:
                break
            op, value = rng.choice(ops)
            rest = [item for k, item in enumerate(pool) if k not in (i, j)]
            pool = rest + [_combine(pool[i], pool[j], op, value)]
        if len(pool) == 1:
            target, solution, _ = pool[0]
            return _problem(numbers, target, solution)


def read(text: str, difficulty: int) -> Problem:
    """A question typed by a person ("50 25 7 3 -> 175", commas allowed) as `generate` writes it, with a
    solution found by `solve`; ValueError saying what is asked for anything `generate` could not write."""
    m = re.fullmatch(r"\s*(\d+(?:[\s,]+\d+)*)\s*->\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a countdown question: this run answers {describe(difficulty)}")
    numbers, target = sorted(int(x) for x in re.split(r"[\s,]+", m.group(1))), int(m.group(2))
    if len(numbers) != difficulty or not all(1 <= x <= 10 or x in LARGE for x in numbers) \
            or not 1 <= target <= MAX_VALUE:
        raise ValueError(f"{text!r} is outside what this run was trained on: it answers {describe(difficulty)}")
    solution = solve(numbers, target)
    if solution is None:
        raise ValueError(f"{text!r} has no solution with whole-number steps, and this run was trained only on "
                         f"puzzles that have one")
    return _problem(numbers, target, solution)


def solve(numbers: list[int], target: int) -> str | None:
    """An expression reaching `target` that uses each number once, combining two at a time as `generate`
    does (every intermediate result a positive integer <= MAX_VALUE); None if there is none.
    Depth-first over pairs; a multiset of values already seen to fail is not searched again."""
    failed: set[tuple[int, ...]] = set()

    def search(pool):
        if len(pool) == 1:
            return pool[0][1] if pool[0][0] == target else None
        values = tuple(sorted(v for v, _, _ in pool))
        if values in failed:
            return None
        for i, j in itertools.permutations(range(len(pool)), 2):
            rest = [item for k, item in enumerate(pool) if k not in (i, j)]
            for op, value in _valid_ops(pool[i][0], pool[j][0]):
                found = search(rest + [_combine(pool[i], pool[j], op, value)])
                if found is not None:
                    return found
        failed.add(values)
        return None

    return search([(x, str(x), 3) for x in numbers])


def describe(difficulty: int) -> str:
    """What a run trained at this difficulty answers, with an example of that size."""
    example = [3, 7, 25, 50, 100][:difficulty]
    return (f"countdown questions like {' '.join(map(str, example))} -> {sum(example)}: {difficulty} numbers "
            f"(each 1 to 10, 25, 50, 75 or 100) and a target from 1 to {MAX_VALUE}")


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


def _problem(numbers: list[int], target: int, solution: str) -> Problem:
    numbers = sorted(numbers)  # listed sorted: the same numbers and target are the same question
    return Problem("countdown", " ".join(map(str, numbers)) + f" -> {target}", str(target), tuple(numbers), solution)


def _combine(a: tuple, b: tuple, op: str, value: int) -> tuple[int, str, int]:
    """Pool items (value, expression text, precedence of its top operator; 3 for a number) a and b
    combined by `op` into the item of `value`. Parenthesized so that parsing the text gives back
    exactly this tree (left-associative reading): a left operand needs them below the operator's
    precedence, a right one at or below."""
    (_, a_text, a_prec), (_, b_text, b_prec), prec = a, b, _PRECEDENCE[op]
    left = f"({a_text})" if a_prec < prec else a_text
    right = f"({b_text})" if b_prec <= prec else b_text
    return value, left + op + right, prec


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
