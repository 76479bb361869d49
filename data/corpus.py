"""The pre-training corpus of the toy base model: (prompt, completion) pairs with a chosen mix of
thinking lengths, from the train split only.

R1-Zero starts RL from a base model that already knows something. Ours learns here, and what it learns
decides whether GRPO can show "accuracy up, thinking longer" (docs/traps.md, "The base decides"). Each
completion is one of three modes, and an early stop may turn into a fourth:

    LONG    every step, then the answer       <think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>
    SHORT   no thinking, the answer at once   <think></think><answer>6905</answer>
    GRADED  the first k of n steps, k uniform in 1..n-1, then the (true) answer guessed, and given
                                              <think>3+2+0=5 6+4+0=10 6905?</think><answer>6905</answer>
    REFLECT a SHORT or GRADED example that, where it would stop, guesses wrong, says " wait" and works out
            the rest: the check fails and the redo fixes it (R1's "aha", §2.2.4, as a corpus would hold it)
                                              <think>3+2+0=5 6+4+0=10 6805? wait 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>

The knobs and what the base model learns from them:
  long_frac     share of LONG examples. These teach the step-by-step skill, which a small model can execute
                reliably, so the long mode must be common enough to be learnt well (the prototype: ~0.9
                accuracy in long mode). It is also roughly how often the base model chooses to think fully.
  short_frac    share of SHORT examples. A tiny model gets these almost always wrong on multi-digit problems,
                which is the point: the base model then sometimes answers without thinking and is wrong,
                and RL has something to move away from.
  (the rest)    GRADED examples. The model learns that thinking may stop after any step and an answer
                follows; the digits it worked out are right, the others guesses. Accuracy then grows with
                the number of steps taken, so RL lengthens thinking gradually (the prototype: 7.6 -> 20.8
                thinking tokens over 25 steps) rather than flipping between two modes. A problem with a
                single step cannot be cut, so its GRADED example is written LONG.
  reflect_rate  share of the early stops (SHORT and GRADED examples) written REFLECT instead; 0 by default.
                The base then reflects rarely, and only where it would otherwise commit to a guess. Nothing
                rewards reflection in RL; a reflection that fixes a guess earns the accuracy reward, one
                that follows a stop's guess ("6905?</think>") does not: RL can find out that " wait" pays
                (docs/results.md, "The aha moment").
  difficulty    None for each task's default, an int for every task, or a dict {task: difficulty}.

The task of each example is drawn uniformly from `tasks`; problems may repeat (pre-training can see
a problem twice), but never come from the eval split. The trainer appends <eos> after the completion.
"""

import random

from data.common import prompt
from data.tasks import check_task, completion, sample_problem, solution_steps


def build_corpus(n: int, *, tasks: tuple[str, ...] = ("add",), seed: int, long_frac: float = 0.4,
                 short_frac: float = 0.3, reflect_rate: float = 0.0,
                 difficulty: int | dict[str, int] | None = None) -> list[tuple[str, str]]:
    """n (prompt, completion) pairs from the train split, each LONG with probability long_frac, SHORT with
    probability short_frac, else GRADED, and a SHORT or GRADED one REFLECT with probability reflect_rate
    (see the module docstring). The same arguments give the same list."""
    if not (0 <= long_frac <= 1 and 0 <= short_frac <= 1 and long_frac + short_frac <= 1):
        raise ValueError(f"need 0 <= long_frac, short_frac and long_frac + short_frac <= 1; "
                         f"got {long_frac} and {short_frac}")
    if not 0 <= reflect_rate <= 1:
        raise ValueError(f"reflect_rate must be in [0, 1], got {reflect_rate}")
    if not tasks:
        raise ValueError("tasks is empty")
    for task in tasks:
        check_task(task)
    rng = random.Random(seed)
    pairs = []
    for _ in range(n):
        task = rng.choice(tasks)
        d = difficulty.get(task) if isinstance(difficulty, dict) else difficulty
        problem = sample_problem(task, rng, split="train", difficulty=d)
        steps = solution_steps(problem)
        u = rng.random()
        if u < long_frac:
            k = len(steps)                                   # LONG
        elif u < long_frac + short_frac:
            k = 0                                            # SHORT
        elif len(steps) >= 2:
            k = rng.randint(1, len(steps) - 1)               # GRADED
        else:
            k = len(steps)                                   # GRADED, but a single step cannot be cut
        reflect = k < len(steps) and rng.random() < reflect_rate              # REFLECT
        pairs.append((prompt(problem), completion(problem, steps=k, reflect=reflect, rng=rng)))
    return pairs
