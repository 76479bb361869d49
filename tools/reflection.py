"""Why reflection grows under RL: how a model's completions go, and how often each way ends right.

R1 §2.2.4 reports the "aha moment": with no reward for it, the model learns to stop, say "wait" and
re-check. GRPO grows whatever the model already does sometimes and what pays more often than the rest of
its group. This tool shows both halves for a run: the share of each way a completion can go (sampled as
in the GRPO rollouts, T=1.0, or as in the evaluations, T=0.6 top-p 0.95) and the accuracy of each.

    python -m tools.reflection runs/zero/base            # the base, as the first rollouts sample it
    python -m tools.reflection runs/zero --temperature 0.6

The ways a completion goes (the thinking of `add` completions, data/corpus.py):

    answer at once          <think></think>...                          (SHORT)
    guess, then wait        <think>6805? wait 3+2+0=5 ...</think>...    (REFLECT at the first step)
    steps, then commit      <think>3+2+0=5 6+4+0=10 6905?</think>...    (GRADED: stops at a guess)
    steps, then wait        <think>3+2+0=5 6805? wait 6+2+1=9 ...</think>...
    steps to the end        <think>3+2+0=5 ... 0+0+0=0</think>...       (LONG)
    steps, then stop        <think>3+2+0=5 6+4+0=10</think>...          (no guess: the corpus never does this)
"""

from __future__ import annotations

import argparse
import sys
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data import eval_problems, n_steps, prompt  # noqa: E402
from evaluate import guesses, reflection_count, score  # noqa: E402
from r1 import _model_run  # noqa: E402
from runs import R1Error, load_run  # noqa: E402
from sampler import complete  # noqa: E402


def way(problem, text: str) -> str:
    """Which way a completion of `problem` went (the module docstring's names)."""
    think = text.split("</think>")[0].removeprefix("<think>")
    if not think:
        return "answer at once"
    first_is_guess = think.split(" ")[0].endswith("?")
    if reflection_count(text):
        return "guess, then wait" if first_is_guess else "steps, then wait"
    if guesses(text):
        return "steps, then commit"
    return "steps to the end" if len(think.split(" ")) >= n_steps(problem) else "steps, then stop"


@torch.no_grad()
def ways(model, tok, problems, *, k: int = 8, temperature: float = 1.0, seed: int = 0,
         max_new_tokens: int = 80) -> dict[str, tuple[float, float]]:
    """{way: (share of samples, accuracy of those samples)}, k samples per problem."""
    top_p = 1.0 if temperature == 1.0 else 0.95  # the rollouts' sampling, or the evaluation protocol's
    gen = torch.Generator().manual_seed(seed)
    right = defaultdict(list)
    for i in range(0, len(problems), 32):
        batch = problems[i:i + 32]
        _, texts = complete(model, tok, [prompt(p) for p in batch], stop="</answer>", num_samples=k,
                            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, generator=gen)
        for row, text in enumerate(texts):
            right[way(batch[row // k], text)].append(score(batch[row // k], text))
    n = sum(len(v) for v in right.values())
    return {w: (len(v) / n, sum(v) / len(v)) for w, v in sorted(right.items(), key=lambda kv: -len(kv[1]))}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("run", help="a run directory (a story's directory means its rl/)")
    ap.add_argument("--temperature", type=float, default=1.0, help="1.0: as the GRPO rollouts sample (default); "
                                                                   "0.6: as the evaluations (top-p 0.95)")
    ap.add_argument("--n", type=int, default=100, help="held-out add problems (default 100)")
    ap.add_argument("--k", type=int, default=8, help="samples per problem (default 8)")
    args = ap.parse_args(argv)
    try:
        if not (args.temperature > 0 and 1 <= args.n <= 1000 and 1 <= args.k <= 64):
            raise R1Error("--temperature must be > 0, --n in 1..1000 and --k in 1..64")
        run = _model_run(args.run)
        model, tok, _ = load_run(run)
    except R1Error as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    result = ways(model, tok, eval_problems(("add",), args.n), k=args.k, temperature=args.temperature)
    print(f"{run}, {args.n} held-out add problems x {args.k} samples at T={args.temperature:g}:")
    for name, (share, acc) in result.items():
        print(f"  {name:20s} {100 * share:5.1f}% of samples, right {100 * acc:5.1f}% of the time")
    return 0


if __name__ == "__main__":
    sys.exit(main())
