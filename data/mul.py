"""Task "mul": a d-digit number times a 1- or 2-digit number, long multiplication digit by digit.

Difficulty d (1..6, default 3) is the number of digits of the first operand (exactly d). The second is
2..9 or 10..99, half each. Every step is a one-digit operation on digits just written, the same shape
as the column steps of task "add", so nothing asks the model for a multi-digit result at once.

For each digit m of the multiplier, least significant first, one step per digit x of the first operand
(least significant first): x*m + carry in = p. The carry into the next step is the tens digit of p.

    question  347*6
    thinking  7*6+0=42 4*6+4=28 3*6+2=20
    answer    2082          (read like an addition: last result whole, then last digits backwards)

A 2-digit multiplier gives two such blocks (partial products a*units and a*tens), then their sum in
d+2 column steps of task "add", the tens partial product shifted one place left (its column 0 is 0):

    question  347*86
    thinking  7*6+0=42 4*6+4=28 3*6+2=20 7*8+0=56 4*8+5=37 3*8+3=27 2+0+0=2 8+6+0=14 0+7+1=8 2+7+0=9 0+2+0=2
    answer    29842

The top digits of each addition step are 2082 (the first block) read backwards, the bottom ones 27760
(the second block, shifted). Steps: d for a 1-digit multiplier, 3d+2 for a 2-digit one.
"""

import random
import re

from data.arith import add_columns
from data.common import Problem, Step

DEFAULT_DIFFICULTY = 3
DIFFICULTIES = range(1, 7)

_QUESTION = re.compile(r"(\d+)\*(\d+)")  # "347*86"


def generate(rng: random.Random, difficulty: int) -> Problem:
    """A random d-digit number times 2..9 or 10..99 (half each)."""
    a = rng.randint(10 ** (difficulty - 1), 10 ** difficulty - 1)
    b = rng.randint(2, 9) if rng.random() < 0.5 else rng.randint(10, 99)
    return Problem("mul", f"{a}*{b}", str(a * b))


def read(text: str, difficulty: int) -> Problem:
    """A question typed by a person ("347*86", "347 * 6") as `generate` writes it, or ValueError
    saying what is asked: the first number has exactly `difficulty` digits, the second is 2 to 99."""
    m = _QUESTION.fullmatch(text.replace(" ", ""))
    if m is None:
        raise ValueError(f"{text!r} is not a mul question: this run answers {describe(difficulty)}")
    a, b = int(m.group(1)), int(m.group(2))
    if not (10 ** (difficulty - 1) <= a < 10 ** difficulty and 2 <= b <= 99):
        raise ValueError(f"{text!r} is outside what this run was trained on: it answers {describe(difficulty)}")
    return Problem("mul", f"{a}*{b}", str(a * b))


def describe(difficulty: int) -> str:
    """What a run trained at this difficulty answers, with examples of that width."""
    a = "347285"[:difficulty]
    return f"mul questions like {a}*6 or {a}*86: a {difficulty}-digit number times a number from 2 to 99"


def steps(problem: Problem) -> list[Step]:
    """The worked solution, read back from the question alone (see the module docstring)."""
    m = _QUESTION.fullmatch(problem.question)
    if m is None:
        raise ValueError(f"not a mul question: {problem.question!r}")
    a, b = int(m.group(1)), int(m.group(2))
    width = len(str(a))
    out = []
    for mult in (b % 10, b // 10) if b >= 10 else (b,):
        carry = 0
        for i in range(width):
            x = a // 10 ** i % 10
            p = x * mult + carry
            out.append(Step(f"{x}*{mult}+{carry}", p))
            carry = p // 10
    if b >= 10:
        out += add_columns(a * (b % 10), a * (b // 10) * 10, width + 2)
    return out


def answer_text(problem: Problem) -> str:
    return problem.answer
