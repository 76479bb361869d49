"""Shared pieces of the toy task families: the `Problem` record, the `Step` record every worked solution is
made of, and the R1-Zero prompt template (R1 Table 1) restated compactly.

A problem becomes text in two halves, the prompt (what the model is given) and the completion (what it
should write after "Assistant:"):

    prompt      User asks, Assistant thinks in <think> </think> then answers in <answer> </answer>.
                User: _1663+_5242
                Assistant:
    completion  <think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>

The template keeps only the structure of R1-Zero's (who speaks, where thinking and answer go) and none of
its prose, because every prompt token costs CPU time in pre-training and in every RL rollout: it is
25 tokens with our tokenizer (22 before the question, 3 after). Like the paper's it says nothing about *how* to think, so that behaviour
seen during RL is learnt, not instructed.
"""

import random
from dataclasses import dataclass
from fractions import Fraction

TEMPLATE = ("User asks, Assistant thinks in <think> </think> then answers in <answer> </answer>.\n"
            "User: {question}\nAssistant:")


@dataclass(frozen=True)
class Problem:
    task: str                       # "add" | "mul" | "countdown" | "linear"
    question: str                   # text after "User: ", e.g. "_1663+_5242"
    answer: str                     # reference answer: "6905", "-12", "5/3"; countdown: the target, "175"
    numbers: tuple[int, ...] = ()   # countdown only: numbers the answer expression must each use once
    solution: str = ""              # countdown only: one valid expression, e.g. "50*3+25"


def prompt(problem: Problem) -> str:
    """The R1-Zero style prompt for a problem; the model continues right after "Assistant:"."""
    return TEMPLATE.format(question=problem.question)


@dataclass(frozen=True)
class Step:
    """One step of a worked solution, written `lhs=value` + unit + note, or just `lhs` when value is None.

    Examples: Step("3+2+0", 5) -> "3+2+0=5"; Step("5x-2x", 3, unit="x") -> "5x-2x=3x";
    Step("46+18", 64, note=" 33<64 no") -> "46+18=64 33<64 no" (a countdown dead end, checked against the
    target 33); Step("swap") -> "swap".
    Steps never contain a space except in the note, so a thinking text is the steps joined by " ".
    """
    lhs: str
    value: int | Fraction | None = None
    unit: str = ""   # written right after the value: the "x" of a coefficient
    note: str = ""   # written after the whole step: a countdown attempt's check, " 33<64 no" for a miss

    def __str__(self) -> str:
        if self.value is None:
            return self.lhs
        return f"{self.lhs}={self.value}{self.unit}{self.note}"

    def wrong(self, rng: random.Random) -> str:
        """The same step with its result off by one: the toy slip that a `wait` then corrects.

        Off by one is the most plausible slip in a digit sum; the sign is kept when the true result is
        non-negative (a column sum never reads "-1"). The note is left off: the slip is noticed at once.
        """
        if self.value is None:
            raise ValueError(f"step {self.lhs!r} has no result to get wrong")
        delta = rng.choice((-1, 1))
        if self.value + delta < 0 <= self.value:
            delta = 1
        return f"{self.lhs}={self.value + delta}{self.unit}"
