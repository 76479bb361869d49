"""Task "countdown": reach a target from 3-4 given numbers with + - * /, using each number exactly once.

The shape of the Countdown-Tasks-3to4 set that TinyZero-style R1-Zero reproductions train on, scaled to a
model that must do each step's arithmetic in its head: difficulty d (3..6, default 4) gives d-1 or d
numbers (half each: 3 or 4 at the default), each from 1 to 20, and a target from 1 to 100. A problem is
made by chaining the numbers in a random order: the first two combined by a random operation, then the
value so far with each next number, every intermediate result a positive integer of at most MAX_VALUE.
So every problem has a solution, a chain of whole-number steps. (Countdown-Tasks-3to4 draws numbers up
to 99 and also allows (a.b).(c.d) shapes and fractions; a chain keeps the one thing a step must carry
over, the value so far, right before it.) The numbers are listed sorted, so two problems with the same
numbers and target are the same question.

The worked solution is a search. An attempt is a chain that uses every number once, and it ends with a
check: the target copied, then how it compares with the chain's result ("33<64"). An attempt that misses
is a dead end, marked " no", and the next attempt starts over; the attempt that reaches the target ("33=33")
is the solution, and the answer writes it as one expression:

    question  6 11 18 20 -> 33
    thinking  6*11=66 66-20=46 46+18=64 33<64 no 20-11=9 9+18=27 27+6=33 33=33
    answer    20-11+18+6

Why the check is written out: without it (an earlier version: "46+18=64 no"), the model had to compare
the result with the target in the prompt in the one token that decides between " no" and stopping. A
tiny model did that badly. After RL, 31.6% of its held-out samples stopped on an attempt that missed and
answered with it, which is the commonest way it was wrong (python -m tools.countdown_failures,
docs/results.md §8). Copying the target next to the result turns the decision into a comparison of two
numbers a few tokens apart.

Each problem shows 0 to MAX_DEAD_ENDS dead ends first (how many and which by a hash of the question, so
a problem always gets the same thinking), distinct chains drawn at random. So a model pre-trained on
these has seen how to search, check each result against the target and go on, but not how long to go
on: a completion that stops early (the corpus's GRADED and SHORT examples, data/corpus.py) commits to an
expression it did not verify, which is usually wrong. Trying more attempts is the way to be right more
often, and that is what RL can find (R1 §2.2.4: thinking grows because it pays). `attempts` counts the
attempts of a completion, for the curve of search length during RL.

How often a random chain hits the target: 16% with 3 numbers, 6% with 4 (averaged over generated
problems, whose targets are the ones many chains reach). Three random attempts then find a solution
38% (3 numbers) and 17% (4) of the time; a model must learn to aim to do better (python -m
tools.countdown_odds).
"""

import ast
import itertools
import random
import re

from data.common import Problem, Step

DEFAULT_DIFFICULTY = 4
DIFFICULTIES = range(3, 7)     # difficulty d: d-1 or d numbers
LOW, HIGH = 1, 20              # range of each given number
MAX_VALUE = 100                # bound on the target and every intermediate result
MAX_DEAD_ENDS = 3              # a worked solution shows 0..MAX_DEAD_ENDS failed attempts first
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}
_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}
STEP = re.compile(r"(\d+)([-+*/])(\d+)=(\d+)")  # one worked step, "13*4=52": a, op, b, result
CHECK = re.compile(r"(\d+)([<>=])(\d+)")  # an attempt checked against the target, "33<64": target, sign, result


def generate(rng: random.Random, difficulty: int) -> Problem:
    """d-1 or d random numbers, chained at random into a positive-integer target (see the module docstring)."""
    while True:
        numbers = [rng.randint(LOW, HIGH) for _ in range(rng.choice((difficulty - 1, difficulty)))]
        chain = _random_chain(rng, numbers)
        if chain is not None:
            target, solution, _ = chain[-1]
            return _problem(numbers, target, solution)


def read(text: str, difficulty: int) -> Problem:
    """A question typed by a person ("20 6 18 11 -> 33", commas allowed) as `generate` writes it, with a
    solution found by `solve`; ValueError saying what is asked for anything `generate` could not write."""
    m = re.fullmatch(r"\s*(\d+(?:[\s,]+\d+)*)\s*->\s*(\d+)\s*", text)
    if m is None:
        raise ValueError(f"{text!r} is not a countdown question: this run answers {describe(difficulty)}")
    numbers, target = sorted(int(x) for x in re.split(r"[\s,]+", m.group(1))), int(m.group(2))
    if len(numbers) not in (difficulty - 1, difficulty) or not all(LOW <= x <= HIGH for x in numbers) \
            or not 1 <= target <= MAX_VALUE:
        raise ValueError(f"{text!r} is outside what this run was trained on: it answers {describe(difficulty)}")
    solution = solve(numbers, target)
    if solution is None:
        raise ValueError(f"{text!r} has no solution as a chain of whole-number steps of at most {MAX_VALUE}, and "
                         f"this run was trained only on puzzles that have one")
    return _problem(numbers, target, solution)


def solve(numbers: list[int], target: int) -> str | None:
    """An expression reaching `target` that uses each number once as a chain, the way `generate` builds
    one (every intermediate result a positive integer <= MAX_VALUE); None if there is none. Depth-first
    over the next number and operation; a (value, numbers left) already seen to fail is not searched again."""
    failed: set[tuple] = set()

    def search(item, rest):
        if not rest:
            return item[1] if item[0] == target else None
        key = (item[0], tuple(sorted(rest)))
        if key in failed:
            return None
        for i, x in enumerate(rest):
            for nxt in _next_items(item, x):
                found = search(nxt, rest[:i] + rest[i + 1:])
                if found is not None:
                    return found
        failed.add(key)
        return None

    for i, j in itertools.permutations(range(len(numbers)), 2):
        rest = [x for k, x in enumerate(numbers) if k not in (i, j)]
        for first in _next_items((numbers[i], str(numbers[i]), 3), numbers[j], both_orders=False):
            found = search(first, rest)
            if found is not None:
                return found
    return None


def describe(difficulty: int) -> str:
    """What a run trained at this difficulty answers, with an example of that size."""
    example = [6, 11, 18, 20, 2, 5][:difficulty]
    return (f"countdown questions like {' '.join(map(str, example))} -> 33: {difficulty - 1} or {difficulty} "
            f"numbers from {LOW} to {HIGH} and a target from 1 to {MAX_VALUE}")


def steps(problem: Problem) -> list[Step]:
    """The dead ends (0..MAX_DEAD_ENDS, by a hash of the question) then the solution's steps in evaluation order."""
    return dead_ends(problem) + solution_steps(problem)


def solution_steps(problem: Problem) -> list[Step]:
    """The steps of the solution alone (the attempt that reaches the target), in evaluation order."""
    steps = _steps_of(problem.solution)
    return steps[:-1] + [_checked(steps[-1], int(problem.answer))]


def answer_text(problem: Problem) -> str:
    return problem.solution


def attempts(text: str) -> int:
    """Complete attempts in a completion's thinking: its dead ends (steps marked " no") plus one when the
    thinking ends on a worked step (an attempt it stopped at and answered from) rather than on a guess
    or a dead end; a check ("33=33") counts as its attempt's last step.
    "6*11=66 66-20=46 46+18=64 33<64 no 20-11=9 9+18=27 27+6=33 33=33" -> 2; "" -> 0."""
    if "<think>" not in text:
        return 0
    words = text.split("<think>", 1)[1].split("</think>", 1)[0].split()
    return words.count("no") + bool(words and (STEP.fullmatch(words[-1]) or CHECK.fullmatch(words[-1])))


def _valid_ops(a: int, b: int) -> list[tuple[str, int]]:
    """The operations on (a, b) whose result is a positive integer <= MAX_VALUE, with their results."""
    out = [("+", a + b), ("*", a * b)]
    if a > b:
        out.append(("-", a - b))
    if b > 1 and a % b == 0:
        out.append(("/", a // b))
    return [(op, v) for op, v in out if v <= MAX_VALUE]


def _next_items(item: tuple, x: int, both_orders: bool = True) -> list[tuple[int, str, int]]:
    """A chain's value so far (a pool item, see _combine) combined with the next number x, as the left
    operand ("36+7") or, for - and / where only that order is valid, as the right one ("20-12")."""
    out = [_combine(item, (x, str(x), 3), op, v) for op, v in _valid_ops(item[0], x)]
    if both_orders:
        out += [_combine((x, str(x), 3), item, op, v) for op, v in _valid_ops(x, item[0]) if op in "-/"]
    return out


def _random_chain(rng: random.Random, numbers: list[int]) -> list[tuple[int, str, int]] | None:
    """The numbers in a random order, each combined by a random valid operation with the value so far:
    the pool item after each step, or None when some step had no valid operation."""
    order = rng.sample(numbers, len(numbers))
    item, chain = (order[0], str(order[0]), 3), []
    for k, x in enumerate(order[1:]):
        options = _next_items(item, x, both_orders=k > 0)
        if not options:
            return None
        item = rng.choice(options)
        chain.append(item)
    return chain


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


def _steps_of(expression: str) -> list[Step]:
    """The steps of an expression we generated, in evaluation order ("20-11+18" -> 20-11=9 9+18=27)."""
    out: list[Step] = []
    _evaluate(ast.parse(expression, mode="eval").body, out)
    return out


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


def dead_ends(problem: Problem) -> list[Step]:
    """0..MAX_DEAD_ENDS distinct chains that miss the target, each last step marked " no"; how many and
    which are fixed by a hash of the question."""
    rng = random.Random(f"dead ends:{problem.question}")  # a str seed is hashed the same way in every run
    want, target, seen, out = rng.randint(0, MAX_DEAD_ENDS), int(problem.answer), set(), []
    for _ in range(20 * want):
        if len(seen) == want:
            break
        chain = _random_chain(rng, list(problem.numbers))
        if chain is None or chain[-1][0] == target or chain[-1][1] in seen:
            continue
        seen.add(chain[-1][1])
        attempt = _steps_of(chain[-1][1])
        out += attempt[:-1] + [_checked(attempt[-1], target)]
    return out


def _checked(step: Step, target: int) -> Step:
    """An attempt's last step with its check against the target written out: the target copied, then how
    it compares with the result, and " no" for a miss: "46+18=64 33<64 no", "27+6=33 33=33"."""
    sign = "=" if target == step.value else "<" if target < step.value else ">"
    return Step(step.lhs, step.value, note=f" {target}{sign}{step.value}" + (" no" if sign != "=" else ""))
