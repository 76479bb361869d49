"""How often blind search solves countdown: the share of random chains that hit the target.

A chain is an attempt as the worked solutions write them (data/countdown.py): the numbers in a random
order, each combined by a random valid operation with the value so far. For each of 250 training problems
with 3 numbers and 250 with 4, 200 random chains are tried; printed are the mean share that hit the target
and the chance that 3 (or 5) independent attempts hold a hit. A model must beat these to be aiming.

    python -m tools.countdown_odds
"""

import random
import statistics

from data import countdown, make_problems


def hit_rate(problem, rng: random.Random, tries: int = 200) -> float:
    """Share of random complete chains (those with a valid operation at every step) that reach the target."""
    ends = [chain[-1][0] for _ in range(tries) if (chain := countdown._random_chain(rng, list(problem.numbers)))]
    return sum(end == int(problem.answer) for end in ends) / max(len(ends), 1)


def main() -> None:
    rng = random.Random(0)
    problems = make_problems("countdown", 600, seed=5)
    for n in (3, 4):
        rates = [hit_rate(p, rng) for p in [p for p in problems if len(p.numbers) == n][:250]]
        within = {k: statistics.mean(1 - (1 - r) ** k for r in rates) for k in (3, 5)}
        print(f"{n} numbers: a random chain hits {100 * statistics.mean(rates):.1f}% of the time; "
              f"3 attempts find a hit {100 * within[3]:.1f}%, 5 attempts {100 * within[5]:.1f}%")


if __name__ == "__main__":
    main()
