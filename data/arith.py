"""Task "add": multi-digit addition and subtraction, worked column by column (the headline task).

Difficulty d (1..8, default 5) is the width: each operand has between max(1, d-2) and d digits (3 to 5 at
d=5, as in the prototype) and is written right-aligned at width d with "_" padding, so each place value
sits at the same position in every prompt of that difficulty and the model can find "column i" by
position alone. A leading zero is never written ("_0042" is never used, "___42" is).

Addition, one step per column, least significant first: top digit + bottom digit + carry in = sum.

    question  _1663+_5242
    thinking  3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0
    answer    6905

The carry into a column is the tens digit of the previous sum (visible: the sum has two digits). The
answer is the sums read backwards: the last sum whole, then the last digit of each earlier one (here
"0", "6", "9", "0", "5"), leading zeros dropped. All d columns are written, padding counting as 0, so
the number of steps depends only on d.

Subtraction, same shape: top digit - bottom digit - borrow in = r, with r in -10..9.

    question  _5242-_1663
    thinking  2-3-0=-1 4-6-1=-3 2-6-1=-5 5-1-1=3 0-0-0=0
    answer    3579

Every step is true arithmetic. A negative r means "borrow": the column's digit is r+10 (-1 -> 9, -3 -> 7,
-10 -> 0) and the next column's borrow in is 1, visible as the "-" of the previous result, just as a
carry is visible as the two digits of a sum. The step is computed from what was just written (three
digits), like an addition step; the only new skill is reading -k as 10-k when writing the answer.

A negative result first swaps the operands, so the columns always subtract the smaller number:

    question  _1663-_5242
    thinking  swap 2-3-0=-1 4-6-1=-3 2-6-1=-5 5-1-1=3 0-0-0=0
    answer    -3579

"swap" is a step of its own (d+1 steps in all); it means "the bottom number is larger: compute
bottom - top and answer with a minus sign". Deciding it means comparing two numbers, which short mode
has to do too.
"""

import random
import re

from data.common import Problem, Step

DEFAULT_DIFFICULTY = 5
DIFFICULTIES = range(1, 9)

_QUESTION = re.compile(r"(_*\d+)([+-])(_*\d+)")  # "_1663+_5242": top, operator, bottom


def generate(rng: random.Random, difficulty: int) -> Problem:
    """A random addition or subtraction (half each) with operands of max(1, d-2)..d digits."""
    d = difficulty
    top, bottom = _operand(rng, d), _operand(rng, d)
    return _problem(top, rng.choice("+-"), bottom, d)


def read(text: str, difficulty: int) -> Problem:
    """A question typed by a person ("123+456", "5242 - 1663"; padding optional) written the way
    `generate` writes it at this difficulty ("__123+__456" at 5), or ValueError saying what is asked.
    Operands must have as many digits as `generate` gives them: at width 5 the model never saw "____1"."""
    m = re.fullmatch(r"(\d+)([+-])(\d+)", text.replace(" ", "").replace("_", ""))
    if m is None:
        raise ValueError(f"{text!r} is not an add question: this run answers {describe(difficulty)}")
    top, op, bottom = int(m.group(1)), m.group(2), int(m.group(3))
    digits, widths = (len(str(top)), len(str(bottom))), _widths(difficulty)
    if max(digits) > widths[-1] or min(digits) < widths[0]:
        which = f"wider than the {widths[-1]}" if max(digits) > widths[-1] else f"narrower than the {widths[0]}"
        raise ValueError(f"{text!r} has an operand {which} digits this run was trained on: "
                         f"it answers {describe(difficulty)}")
    return _problem(top, op, bottom, difficulty)


def describe(difficulty: int) -> str:
    """What a run trained at this difficulty answers, with examples of widths it was trained on."""
    widths = _widths(difficulty)
    short, long = max(widths[0], min(3, widths[-1])), max(widths[0], min(4, widths[-1]))
    span = f"{widths[0]} to {widths[-1]} digits" if len(widths) > 1 else "1 digit"
    return f"add questions like {'123456'[:short]}+{'456789'[:short]} or {'52427183'[:long]}-{'16639475'[:long]} " \
           f"with operands of {span}"


def steps(problem: Problem) -> list[Step]:
    """The worked solution, read back from the question alone (see the module docstring)."""
    top, op, bottom, width = _parse(problem.question)
    if op == "+":
        return add_columns(top, bottom, width)
    if top >= bottom:
        return sub_columns(top, bottom, width)
    return [Step("swap")] + sub_columns(bottom, top, width)


def answer_text(problem: Problem) -> str:
    return problem.answer


def add_columns(top: int, bottom: int, width: int) -> list[Step]:
    """`width` column steps "x+y+carry=sum", least significant first (also used by task "mul")."""
    out, carry = [], 0
    for i in range(width):
        x, y = _digit(top, i), _digit(bottom, i)
        total = x + y + carry
        out.append(Step(f"{x}+{y}+{carry}", total))
        carry = total // 10
    return out


def sub_columns(top: int, bottom: int, width: int) -> list[Step]:
    """`width` column steps "x-y-borrow=r" for top >= bottom; r < 0 means digit r+10 and borrow 1."""
    assert top >= bottom, (top, bottom)
    out, borrow = [], 0
    for i in range(width):
        x, y = _digit(top, i), _digit(bottom, i)
        r = x - y - borrow
        out.append(Step(f"{x}-{y}-{borrow}", r))
        borrow = 1 if r < 0 else 0
    return out


def _problem(top: int, op: str, bottom: int, width: int) -> Problem:
    answer = top + bottom if op == "+" else top - bottom
    return Problem("add", f"{_pad(top, width)}{op}{_pad(bottom, width)}", str(answer))


def _widths(d: int) -> range:
    """The digit counts of an operand at difficulty d: d-2 to d (3 to 5 at d=5), at least 1."""
    return range(max(1, d - 2), d + 1)


def _operand(rng: random.Random, d: int) -> int:
    widths = _widths(d)
    digits = rng.randint(widths[0], widths[-1])
    low = 0 if digits == 1 else 10 ** (digits - 1)
    return rng.randint(low, 10 ** digits - 1)


def _pad(x: int, width: int) -> str:
    return str(x).rjust(width, "_")  # 42 at width 5 -> "___42"


def _digit(x: int, i: int) -> int:
    return x // 10 ** i % 10  # i = 0 is the units digit


def _parse(question: str) -> tuple[int, str, int, int]:
    m = _QUESTION.fullmatch(question)
    if m is None:
        raise ValueError(f"not an add/sub question: {question!r}")
    top, op, bottom = m.groups()
    return int(top.lstrip("_")), op, int(bottom.lstrip("_")), len(top)
