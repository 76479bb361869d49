"""Why countdown completions go wrong: each wrong sample sorted by the first thing that broke it.

The countdown story (docs/results.md §8) stops short of its goal, and the reason is in the completions.
This tool samples a run on held-out countdown problems, as the evaluations do (T=0.6, top-p 0.95), and
gives every wrong completion one cause, checked in this order:

    no answer          no <answer>...</answer> (cut off by the token budget, or malformed)
    answered at once   empty thinking: a guess with no search (the corpus's SHORT examples)
    slip in a step     a worked step whose arithmetic is wrong ("19-20=1", "13*10=13")
    wrong check        a check that copies the target wrongly or compares wrongly ("33>64")
    missed a hit       an attempt reached the target and was marked " no" anyway
    stopped at a guess the thinking ends on "expression?" (the corpus's GRADED stop)
    answered a miss    the thinking ends on an attempt whose result is not the target, without " no":
                       it answers with an attempt it did not (or could not) check
    hit, wrong numbers the thinking ends on the target, but its chain does not use each number once
    answer off         the thinking ends on a right chain, and the answer does not write it
    other

Also counted over all samples: attempts per completion, and how many completions try an attempt they
already marked " no" (a search with no memory of what failed).

    python -m tools.countdown_failures runs/zero-countdown            # the story's RL model
    python -m tools.countdown_failures runs/zero-countdown/base
"""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import countdown, eval_problems, prompt  # noqa: E402
from data.tasks import COMPLETION_BUDGET  # noqa: E402
from evaluate import score  # noqa: E402
from r1 import _model_run  # noqa: E402
from runs import R1Error, load_run  # noqa: E402
from sampler import complete  # noqa: E402

CAUSES = ("no answer", "answered at once", "slip in a step", "wrong check", "missed a hit",
          "stopped at a guess", "answered a miss", "hit, wrong numbers", "answer off", "other")
_OPS = {"+": lambda a, b: a + b, "-": lambda a, b: a - b, "*": lambda a, b: a * b,
        "/": lambda a, b: a // b if b and a % b == 0 else None}


def thinking(text: str) -> str:
    """The text between <think> and </think> (all of it up to </think> when a tag is missing)."""
    return text.split("</think>", 1)[0].split("<think>", 1)[-1].strip()


def attempts_of(think: str) -> list[tuple[list[tuple[int, str, int, int]], tuple[int, str, int] | None]]:
    """The thinking's attempts, each (its worked steps (a, op, b, result), its check (target, sign,
    result) or None); an attempt ends at " no". Guesses ("20-11+18?") and " wait" are skipped."""
    out, steps, check = [], [], None
    for word in think.split():
        if word == "no":
            out.append((steps, check))
            steps, check = [], None
        elif m := countdown.STEP.fullmatch(word):
            steps.append((int(m[1]), m[2], int(m[3]), int(m[4])))
        elif m := countdown.CHECK.fullmatch(word):
            check = (int(m[1]), m[2], int(m[3]))
    if steps or check:
        out.append((steps, check))
    return out


def uses_each_number_once(chain: list[tuple[int, str, int, int]], numbers) -> bool:
    """Whether a chain, as the worked solutions write it (each step combines the value so far, or at the
    start two given numbers, with one more given number), uses every given number exactly once."""
    if not chain:
        return False
    a, _, b, _ = chain[0]
    used = Counter((a, b))
    for prev, (x, _, y, _) in zip(chain, chain[1:]):
        if prev[3] not in (x, y):
            return False                        # the step does not continue from the value so far
        used[y if x == prev[3] else x] += 1
    return used == Counter(numbers)


def _check_is_wrong(steps, check, target: int) -> bool:
    """A check that copies the target wrongly, or compares with something other than the attempt's
    result, or compares wrongly ("33>64")."""
    if check is None:
        return False
    copied, sign, value = check
    truth = "=" if target == value else "<" if target < value else ">"
    return copied != target or (bool(steps) and value != steps[-1][3]) or sign != truth


def cause(problem, text: str) -> str | None:
    """The first cause (CAUSES) of a wrong completion of `problem`; None when it is right."""
    if score(problem, text):
        return None
    if "</think>" not in text or "<answer>" not in text or "</answer>" not in text:
        return "no answer"
    think = thinking(text)
    if not think:
        return "answered at once"
    attempts, target, last = attempts_of(think), int(problem.answer), think.split()[-1]
    if any(_OPS[op](a, b) != c for steps, _ in attempts for a, op, b, c in steps):
        return "slip in a step"
    if any(_check_is_wrong(steps, check, target) for steps, check in attempts):
        return "wrong check"
    dead = attempts if last == "no" else attempts[:-1]
    if any(steps and steps[-1][3] == target for steps, _ in dead):
        return "missed a hit"
    if last.endswith("?"):
        return "stopped at a guess"
    if last == "no" or not (countdown.STEP.fullmatch(last) or countdown.CHECK.fullmatch(last)) or not attempts[-1][0]:
        return "other"
    chain = attempts[-1][0]
    if chain[-1][3] != target:
        return "answered a miss"
    if not uses_each_number_once(chain, problem.numbers):
        return "hit, wrong numbers"
    return "answer off"


def repeats_a_dead_end(text: str) -> bool:
    """Whether the thinking tries again an attempt it already marked " no" (the same steps in order):
    every attempt before the last ended at " no"."""
    chains = [tuple(steps) for steps, _ in attempts_of(thinking(text))]
    return any(c in chains[:i] for i, c in enumerate(chains))


@torch.no_grad()
def failures(model, tok, problems, *, k: int = 8, seed: int = 0) -> dict:
    """Counts of each cause over n x k samples at the evaluations' T=0.6, top-p 0.95, with the totals."""
    gen = torch.Generator().manual_seed(seed)
    causes, n, repeats, attempts = Counter(), 0, 0, 0
    for i in range(0, len(problems), 32):
        batch = problems[i:i + 32]
        _, texts = complete(model, tok, [prompt(p) for p in batch], stop="</answer>", num_samples=k,
                            max_new_tokens=COMPLETION_BUDGET["countdown"], temperature=0.6, top_p=0.95, generator=gen)
        for row, text in enumerate(texts):
            problem = batch[row // k]
            causes[cause(problem, text)] += 1
            repeats += repeats_a_dead_end(text)
            attempts += countdown.attempts(text)
            n += 1
    return {"n": n, "causes": causes, "repeats": repeats / n, "attempts": attempts / n}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run trained on countdown (a story's directory means its rl/)")
    ap.add_argument("--n", type=int, default=100, help="held-out countdown problems (default 100)")
    ap.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    args = ap.parse_args(argv)
    try:
        if not (1 <= args.n <= 1000 and 1 <= args.k <= 64):
            raise R1Error("--n must be in 1..1000 and --k in 1..64")
        run = _model_run(args.run)
        model, tok, _ = load_run(run)
    except R1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    r = failures(model, tok, eval_problems(("countdown",), args.n), k=args.k)
    n, wrong = r["n"], r["n"] - r["causes"][None]
    print(f"{run}, {args.n} held-out countdown problems x {args.k} samples at T=0.6 (top-p 0.95): "
          f"right {100 * r['causes'][None] / n:.1f}%, {r['attempts']:.2f} attempts per completion, "
          f"{100 * r['repeats']:.1f}% try again an attempt already marked ' no'")
    print(f"  {'why wrong':20s} {'of all samples':>15s} {'of the wrong ones':>18s}")
    for name in CAUSES:
        c = r["causes"][name]
        print(f"  {name:20s} {100 * c / n:14.1f}% {100 * c / max(wrong, 1):17.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
