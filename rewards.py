"""Rule-based rewards for GRPO: format, accuracy, consistency and the DAPO overlong penalty.

R1 ([R1v1] §2.2.2, [R1v2] eq. 4) trains on two rule-based rewards with equal weights: an
accuracy reward (1 if the final answer matches the reference, else 0) and a format reward (reasoning in
<think>...</think>, then the answer in <answer>...</answer>). `format_weight=0` gives the Dr. GRPO
choice of no separate format reward (Dr. GRPO §3); `overlong_cache > 0` adds DAPO's soft overlong
punishment (DAPO §3.4). `consistency_weight > 0` adds the toy analogue of R1's
language-consistency reward (R1 §2.3.2): the share of the thinking written in the readable step style
of the cold-start data (data/cold_start.py). Every function is a pure function of strings.

A completion is the text generated after the prompt, tags kept:
    <think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6</think> <answer>6905</answer>
Reference answers are integers ("6905", "-12"), reduced fractions ("5/3"), or, for countdown, the
target integer ("175") with `numbers=(3, 7, 25, 50)`, each of which the expression must use once.

Model text is hostile input. It is never handed to Python's or sympy's parsers as a string (sympy's
string parser runs arbitrary code: docs/traps.md): numbers go through one anchored regex, expressions
through a character whitelist, length and nesting caps, then `ast` with a node whitelist; only the
checked tree is turned into Fractions or sympy objects.

Hacking cases (reference 6905, or countdown 175 from 3, 7, 25, 50):
    case                                                    format  accuracy
    <answer>6905</answer><answer>6906</answer> (two blocks)    0       0
    <think><answer>6905</answer></think> (only in think)       0       0
    <answer> </answer> (empty)                                 0       0
    "6905 6906", "6905, 6906" (right number among others)      1       0
    </answer> followed by more text                            0       0
    truncated, no </answer>                                    0       0
    "1663+5242" (expression of the question, number task)      1       0
    countdown "(3*25-50)*7*7/7", "(25-50)*7" or "7*25" ...     1       0
      (a number used twice, one omitted, another number)
    whole completion over 20,000 characters                    0       0
Adversarial answers in a well-formed completion get format 1, accuracy 0 (the structure is fine, the
content is rejected): 9**9**9**9, 10**10**10, factorial(10**9), __import__('os').system(...),
().__class__.__base__.__subclasses__(), NUL bytes, unicode digits, 1e999999, "-", 1/0, 0/0,
10,000 digits, 90 nested parentheses. answers_equal returns False on each of them.
"""
import ast
import contextlib
import re
import signal
import threading
from fractions import Fraction
from typing import Sequence

import sympy

MAX_COMPLETION_CHARS = 20_000  # longer completions score 0 before any regex runs
MAX_NUMBER_CHARS = 64
MAX_EXPR_CHARS = 200
MAX_LITERAL = 10**12  # integer literals have at most 12 digits
MAX_NODES = 100  # ast nodes per expression
MAX_PAREN_DEPTH = 20
SYMPY_TIME_LIMIT_S = 1.0  # second line of defence; the caps above already bound the work

# Any of the four tags, in any letter case, so that "<Answer>" inside a block also spoils the format.
# `<` `/`-or-not, one of two fixed words, `>`: no repetition at all, so the scan is linear.
_TAG = re.compile(r"<(/?)(think|answer)>", re.IGNORECASE)
_TAG_SEQUENCE = ["<think>", "</think>", "<answer>", "</answer>"]

# A plain number, matched with fullmatch (so nothing before or after):
#   ([+-]?)          optional sign
#   ([0-9]+)         integer part; [0-9] and not \d, which also matches "٣" and fullwidth digits
#   (?:\.([0-9]+)    then either a decimal part ("2.25") ...
#   |/([0-9]+))?     ... or an unsigned denominator ("3/4"), or neither
# Each quantifier is applied to a single character class, so it cannot backtrack catastrophically.
_NUMBER = re.compile(r"([+-]?)([0-9]+)(?:\.([0-9]+)|/([0-9]+))?")

# Characters an expression may contain: digits, the four operators, parentheses, spaces. The class
# still admits "**" (power, how 9**9**9**9 explodes), so that pair is rejected separately.
_EXPR_CHARS = re.compile(r"[0-9+\-*/() ]+")
_EXPR_NODES = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant,
               ast.Add, ast.Sub, ast.Mult, ast.Div, ast.USub, ast.UAdd)


def _blocks(completion: str) -> tuple[str, str] | None:
    """(think, answer) contents if the completion is exactly <think>..</think> <answer>..</answer>."""
    if len(completion) > MAX_COMPLETION_CHARS:
        return None
    tags = list(_TAG.finditer(completion))
    if [m.group(0) for m in tags] != _TAG_SEQUENCE:  # exactly these four tags, in this order
        return None
    open_t, close_t, open_a, close_a = tags
    outside = (completion[:open_t.start()], completion[close_t.end():open_a.start()],
               completion[close_a.end():])
    if any(part.strip() for part in outside):  # only whitespace before, between and after the blocks
        return None
    answer = completion[open_a.end():close_a.start()].strip()
    if not answer:
        return None
    return completion[open_t.end():close_t.start()], answer


def format_reward(completion: str) -> float:
    """1.0 iff the completion is one think block, then one non-empty answer block, and nothing else."""
    return 1.0 if _blocks(completion) is not None else 0.0


# One step of readable thinking, alone on its line: "3+2+0=5", "5x-2x=3x", "x=15/3=5", a countdown
# attempt's last step with its check "46+18=64 33<64 no" or "27+6=33 33=33", the word "swap", or the
# summary "=6905". Segments of [0-9x()+*/-] joined by "=" (at least one "="; the first segment may be
# empty only in the summary), an optional check and " no"; no class contains "=" or " ", so the match is
# linear in the line's length.
_READABLE_STEP = re.compile(r"swap|=[0-9/-]+|[0-9x()+*/-]+(?:=[0-9x()+*/-]+)+(?: [0-9]+[<>=][0-9]+)?(?: no)?")


def consistency_reward(completion: str) -> float:
    """The share of the thinking's words that are readable steps, in [0, 1] (R1's language reward:
    Num(target-language words) / Num(words), R1 §2.3.2, with "language" = the readable step style).

    A line that is exactly one step counts as one readable word; every whitespace-separated word of any
    other line counts as unreadable. The cold-start style scores 1.0, R1-Zero's space-joined steps 0.0,
    a mix in between. No thinking, or a completion whose format is wrong, scores 0.0. The length cap
    and the linear regexes of format_reward apply, so any string is safe and fast.
    """
    blocks = _blocks(completion)
    if blocks is None:
        return 0.0
    readable = unreadable = 0
    for line in blocks[0].split("\n"):
        if _READABLE_STEP.fullmatch(line):
            readable += 1
        else:
            unreadable += len(line.split())
    if readable + unreadable == 0:
        return 0.0
    return readable / (readable + unreadable)


def extract_answer(completion: str) -> str | None:
    """Stripped content of the answer block of a well-formed completion, else None."""
    blocks = _blocks(completion)
    return None if blocks is None else blocks[1]


def parse_number(text: str) -> Fraction | None:
    """'12', '-3', '0.5', '-3/4' -> exact Fraction; anything else (expressions, '1e9', '٣') -> None."""
    if len(text) > MAX_NUMBER_CHARS:  # before any other work; surrounding whitespace counts too
        return None
    m = _NUMBER.fullmatch(text.strip())
    if m is None:
        return None
    sign, whole, decimals, denominator = m.groups()
    if decimals is not None:
        value = Fraction(int(whole + decimals), 10 ** len(decimals))
    elif denominator is not None:
        if int(denominator) == 0:
            return None
        value = Fraction(int(whole), int(denominator))
    else:
        value = Fraction(int(whole))
    return -value if sign == "-" else value


def _checked_tree(text: str) -> ast.Expression | None:
    """The ast of a whitelisted arithmetic expression, or None. Cheap string checks come first."""
    if len(text) > MAX_EXPR_CHARS:  # before any other work; surrounding whitespace counts too
        return None
    text = text.strip()
    if not _EXPR_CHARS.fullmatch(text) or "**" in text:
        return None
    # Count parenthesis nesting on the raw string: ast.parse itself can raise RecursionError or
    # MemoryError on very deep nesting, so that input must never reach it.
    depth = 0
    for ch in text:
        depth += (ch == "(") - (ch == ")")
        if depth > MAX_PAREN_DEPTH or depth < 0:
            return None
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError:  # "1+", "()", "1 2", "2* *3", "07" (a leading zero is a SyntaxError)
        return None
    nodes = list(ast.walk(tree))  # ast.walk is iterative, safe on any tree
    if len(nodes) > MAX_NODES:
        return None
    for node in nodes:
        if not isinstance(node, _EXPR_NODES):  # e.g. FloorDiv from "//"
            return None
        if isinstance(node, ast.Constant) and not (type(node.value) is int and node.value < MAX_LITERAL):
            return None
    return tree


def _evaluate(node: ast.AST, leaf, literals: list[int] | None = None):
    """Fold a checked tree with `leaf` (Fraction or sympy.Integer) at the leaves; None on x/0.

    Recursion depth is at most MAX_NODES (100), well under Python's limit of 1000.
    """
    if isinstance(node, ast.Expression):
        return _evaluate(node.body, leaf, literals)
    if isinstance(node, ast.Constant):
        if literals is not None:
            literals.append(node.value)
        return leaf(node.value)
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, leaf, literals)
        if operand is None:
            return None
        return -operand if isinstance(node.op, ast.USub) else operand
    left = _evaluate(node.left, leaf, literals)
    right = _evaluate(node.right, leaf, literals)
    if left is None or right is None:
        return None
    if isinstance(node.op, ast.Add):
        return left + right
    if isinstance(node.op, ast.Sub):
        return left - right
    if isinstance(node.op, ast.Mult):
        return left * right
    if right == 0:  # the only operator left is Div
        return None
    return left / right


def parse_expression(text: str) -> tuple[Fraction, list[int]] | None:
    """'(3*25-50)*7' -> (Fraction(175), [3, 25, 50, 7]); None unless a whitelisted expression.

    Time is bounded because every input that reaches ast or arithmetic has at most 200 characters,
    nesting depth 20, 100 nodes and 12-digit literals, so values have at most a few hundred digits.
    """
    tree = _checked_tree(text)
    if tree is None:
        return None
    literals: list[int] = []
    value = _evaluate(tree, Fraction, literals)
    return None if value is None else (value, literals)


class _Timeout(BaseException):
    """Raised by the alarm; a BaseException so that no `except Exception` inside sympy swallows it."""


@contextlib.contextmanager
def _time_limit(seconds: float):
    """Raise _Timeout after `seconds` of wall time. Only where signals work (the main thread) and no
    other timer is armed; elsewhere this does nothing and the input caps alone bound the time: sympy
    only ever sees one Rational difference built from at most 100 nodes of 12-digit literals."""
    if (not hasattr(signal, "setitimer") or threading.current_thread() is not threading.main_thread()
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def on_alarm(signum, frame):
        raise _Timeout

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)  # no timer was armed before us (checked above)
        signal.signal(signal.SIGALRM, previous)


def _as_sympy(text: str):
    """A sympy Rational built from a checked number or expression tree (never from the string)."""
    number = parse_number(text)
    if number is not None:
        return sympy.Rational(number.numerator, number.denominator)
    tree = _checked_tree(text)
    return None if tree is None else _evaluate(tree, sympy.Integer)


def answers_equal(a: str, b: str) -> bool:
    """General equivalence for majority voting: '1/2' == '0.5' == '2/4', '1+2' == '3'."""
    na, nb = parse_number(a), parse_number(b)
    if na is not None and nb is not None:
        return na == nb
    x, y = _as_sympy(a), _as_sympy(b)
    if x is None or y is None:
        return False
    try:
        with _time_limit(SYMPY_TIME_LIMIT_S):
            return bool(sympy.simplify(x - y) == 0)
    except _Timeout:
        return False


def accuracy_reward(completion: str, answer: str, numbers: Sequence[int] | None = None) -> float:
    """1.0 if the answer block matches the reference, else 0.0.

    Without `numbers` the answer must be a plain number equal to the reference: an expression such as
    the question itself ("1663+5242") scores 0. With `numbers` (countdown) it must be an expression
    using exactly that multiset of numbers, whose exact value equals the target.
    Raises ValueError if the *reference* does not parse: that is a bug in the task, not model output.
    """
    target = parse_number(answer)
    if target is None:
        raise ValueError(f"reference answer is not a number: {answer!r}")
    extracted = extract_answer(completion)
    if extracted is None:
        return 0.0
    if numbers is None:
        return 1.0 if parse_number(extracted) == target else 0.0
    parsed = parse_expression(extracted)
    if parsed is None:
        return 0.0
    value, literals = parsed
    if sorted(literals) != sorted(numbers):  # each number once, no other number
        return 0.0
    return 1.0 if value == target else 0.0


def overlong_penalty(completion_len: int, max_len: int, cache: int) -> float:
    """DAPO soft overlong punishment: 0 up to max_len - cache, then linear down to -1 at max_len."""
    if completion_len <= max_len - cache:
        return 0.0
    if completion_len <= max_len:
        return ((max_len - cache) - completion_len) / cache
    return -1.0


def reward(completion: str, answer: str, numbers: Sequence[int] | None = None, *,
           format_weight: float = 1.0, consistency_weight: float = 0.0, completion_len: int | None = None,
           max_len: int | None = None, overlong_cache: int = 0) -> tuple[float, dict[str, float]]:
    """Total reward and its parts: accuracy + format_weight * format + consistency_weight * consistency
    (+ DAPO overlong penalty).

    format_weight=1 is R1's equal weighting; 0 is Dr. GRPO (no separate format reward).
    consistency_weight=0 is R1-Zero (the part is still computed, for logging); R1 adds the language
    reward directly, weight 1. The overlong penalty applies only when overlong_cache > 0 and both
    completion_len and max_len (tokens) are given.
    """
    if overlong_cache < 0:
        raise ValueError(f"overlong_cache must be >= 0, got {overlong_cache}")
    parts = {"accuracy": accuracy_reward(completion, answer, numbers), "format": format_reward(completion),
             "consistency": consistency_reward(completion), "overlong": 0.0}
    if overlong_cache > 0 and completion_len is not None and max_len is not None:
        parts["overlong"] = overlong_penalty(completion_len, max_len, overlong_cache)
    parts["reward"] = (parts["accuracy"] + format_weight * parts["format"]
                       + consistency_weight * parts["consistency"] + parts["overlong"])
    return parts["reward"], parts


# The one list of hostile inputs: what a model (or a user) might write where an answer or a thinking
# text is expected. Every reward must return in well under 0.1 s on each, execute nothing, and score it 0
# as an answer (tests/test_rewards.py, tests/test_recipe.py; timed by tools/bench.py). "PWNED" is a file
# name the tests swap for a temporary path, to see that nothing ran.
HOSTILE_ANSWERS = (
    "9**9**9**9", "10**10**10", "2**2**2**2**2**2", "factorial(10**9)",
    "__import__('os').system('touch PWNED')", "().__class__.__base__.__subclasses__()",
    "(" * 10_000 + "1" + ")" * 10_000, "(" * 90 + "1" + ")" * 90, "-" * 150 + "1", "x" * 1_000_000,
    "7" * 1_000_000, "\x00", "69\x0005", "٦٩٠٥", "６９０５", "1e999999", "-", "1/0", "0/0", "9" * 10_000, "9" * 150,
    "1" * 19_000, "=" * 10_000 + "x", "1=" * 9_000 + " no", "\x00\n٣=٣",
)
