"""Task "linear": solve a linear equation in x; the answer is a reduced fraction ("5", "-3/4", "7/2").

Difficulty (1..3, default 2):
  1  a*x+b=c with an integer solution: a in 2..9, x in -9..9, b in +-1..9.
  2  a*x+b=c with any rational solution: a in +-2..9, b in +-1..20, c in -20..20.
  3  a*x+b=c*x+e (x on both sides): a, c in +-2..9 with |a-c| >= 2, b, e in +-1..20.
The question writes coefficients and constants without spaces ("3x+5=20", "-4x-7=2x+13").

One step per move; a step that divides also reduces, a step that moves x collects the coefficients:

    question  3x+5=20            question  4x-7=-2            question  5x+3=2x+9
    thinking  3x=20-5=15         thinking  4x=-2+7=5          thinking  5x-2x=3x 3x=9-3=6 x=6/3=2
              x=15/3=5                     x=5/4
    answer    5                  answer    5/4                answer    2

(The thinking is one line; it is folded here.) The division step puts the sign on the numerator
("x=-15/3=-5"), and skips "=..." when there is nothing to reduce ("x=5/4"). Steps: 2, or 3 with x on
both sides.
"""

import random
import re
from fractions import Fraction

from data.common import Problem, Step

DEFAULT_DIFFICULTY = 2
DIFFICULTIES = range(1, 4)

# "3x+5=20" or "5x+3=2x+9": a, b, then c, e when x is on both sides
_QUESTION = re.compile(r"(-?\d+)x([+-]\d+)=(?:(-?\d+)x([+-]\d+)|(-?\d+))")


def generate(rng: random.Random, difficulty: int) -> Problem:
    """A random equation of the given difficulty (see the module docstring)."""
    if difficulty == 1:
        a, x, b = rng.randint(2, 9), rng.randint(-9, 9), _nonzero(rng, 9)
        return _problem(a, b, a * x + b)
    if difficulty == 2:
        a, b, c = _nonzero(rng, 9, low=2), _nonzero(rng, 20), rng.randint(-20, 20)
        return _problem(a, b, c)
    while True:
        a, c = _nonzero(rng, 9, low=2), _nonzero(rng, 9, low=2)
        if abs(a - c) >= 2:
            break
    b, e = _nonzero(rng, 20), _nonzero(rng, 20)
    return _problem(a, b, c, e)


def read(text: str, difficulty: int) -> Problem:
    """A question typed by a person ("3x+5=20", "5x + 3 = 2x + 9") as `generate` writes it, or ValueError
    saying what is asked for anything `generate` could not have written at this difficulty."""
    m = _QUESTION.fullmatch(text.replace(" ", ""))
    if m is None:
        raise ValueError(f"{text!r} is not a linear question: this run answers {describe(difficulty)}")
    a, b = int(m.group(1)), int(m.group(2))
    if m.group(3) is not None:
        c, e = int(m.group(3)), int(m.group(4))
        fits = difficulty == 3 and 2 <= abs(a) <= 9 and 2 <= abs(c) <= 9 and abs(a - c) >= 2 and 1 <= abs(b) <= 20 \
            and 1 <= abs(e) <= 20
    else:
        c, e = int(m.group(5)), None
        fits = (difficulty == 1 and 2 <= a <= 9 and 1 <= abs(b) <= 9 and (c - b) % a == 0 and abs(c - b) // a <= 9) \
            or (difficulty == 2 and 2 <= abs(a) <= 9 and 1 <= abs(b) <= 20 and abs(c) <= 20)
    if not fits:
        raise ValueError(f"{text!r} is outside what this run was trained on: it answers {describe(difficulty)}")
    return _problem(a, b, c, e)


def describe(difficulty: int) -> str:
    """What a run trained at this difficulty answers (the ranges of `generate`)."""
    return {1: "linear questions like 3x+5=20: a*x+b=c with a from 2 to 9, b from -9 to 9 (not 0) "
               "and a whole solution from -9 to 9",
            2: "linear questions like 3x+5=20 or -4x-7=2: a*x+b=c with a from -9 to 9 (|a| >= 2), "
               "b from -20 to 20 (not 0) and c from -20 to 20",
            3: "linear questions like 5x+3=2x+9: a*x+b=c*x+e with a and c from -9 to 9 (|a|, |c| and |a-c| >= 2), "
               "b and e from -20 to 20 (not 0)"}[difficulty]


def steps(problem: Problem) -> list[Step]:
    """The worked solution, read back from the question alone (see the module docstring)."""
    m = _QUESTION.fullmatch(problem.question)
    if m is None:
        raise ValueError(f"not a linear question: {problem.question!r}")
    a, b = int(m.group(1)), int(m.group(2))
    out = []
    if m.group(3) is not None:                       # a*x+b=c*x+e -> (a-c)*x+b=e
        c, e = int(m.group(3)), int(m.group(4))
        out.append(Step(f"{a}x{-c:+d}x", a - c, unit="x"))  # "5x-2x=3x"
        a, c = a - c, e
    else:
        c = int(m.group(5))
    out.append(Step(f"{a}x={c}{-b:+d}", c - b))           # a*x = c-b: "3x=20-5=15"
    numerator, denominator = (c - b) * (1 if a > 0 else -1), abs(a)
    x = Fraction(numerator, denominator)
    if x.denominator == denominator:                     # nothing to reduce: "x=5/4"
        out.append(Step("x", x))
    else:                                                # "x=15/3=5", "x=-6/4=-3/2"
        out.append(Step(f"x={numerator}/{denominator}", x))
    return out


def answer_text(problem: Problem) -> str:
    return problem.answer


def _problem(a: int, b: int, c: int, e: int | None = None) -> Problem:
    """a*x+b=c, or a*x+b=c*x+e when e is given, with its solution."""
    if e is None:
        return Problem("linear", f"{a}x{b:+d}={c}", str(Fraction(c - b, a)))
    return Problem("linear", f"{a}x{b:+d}={c}x{e:+d}", str(Fraction(e - b, a - c)))


def _nonzero(rng: random.Random, high: int, low: int = 1) -> int:
    """A random integer with low <= |n| <= high and a random sign."""
    return rng.choice((-1, 1)) * rng.randint(low, high)
