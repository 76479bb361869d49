"""Cold-start data for R1 (R1 §2.3.1, [R1v2] Supp. B.3.2): a small set of readable
long-reasoning examples, in one fixed style, with a short summary after the reasoning.

R1-Zero's thinking works but reads badly (the paper: poor readability, language mixing). Ours writes
every step on one line, joined by spaces, as the pre-training corpus does:

    <think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>

The readable style puts one step per line and closes the reasoning with a summary line that restates
the problem with its result, the toy counterpart of R1's "reasoning, then summary" layout:

    <think>
    3+2+0=5
    6+4+0=10
    6+2+1=9
    1+5+0=6
    0+0+0=0
    =6905
    </think><answer>6905</answer>

Summaries per task: add/mul write the result read off the column steps ("=6905"), countdown the
answer expression and its value ("25+(8+8)=41"), linear the solution ("x=-7/3"). A first version
restated the whole question ("1663+5242=6905"): after 100 SFT steps the tiny model garbled the copy of
the operands and then its answer (greedy accuracy 0% on held-out problems), so the summary keeps to
what the steps give. The summary closes the think block because the format reward (R1-Zero's,
unchanged) allows nothing between </think> and <answer>. Every character and word here is already in
the closed vocabulary of data/tokenizer.py, so the base checkpoints can be fine-tuned on it as they
are; the readable style differs from the corpus only in layout, which is what the consistency reward
(rewards.consistency_reward) measures.

Like R1's cold start (thousands of examples against 800k in the later SFT), the set is small: a thousand
distinct problems of the train split by default, every one thought through fully (no SHORT or GRADED
examples, no mistakes). 300 examples x 100 SFT steps left Dev1 at 69% on held-out problems, against 79%
for 1,000 x 200: the summary line is a read-off the model learns only here (README, "The full R1 recipe").

    python r1.py cold-start --out runs/cold_start.jsonl --n 1000
    python r1.py sft --data runs/cold_start.jsonl --init runs/zero/base --run runs/dev1
"""

from data.common import Problem, prompt
from data.tasks import answer_text, make_problems, solution_steps


def summary(problem: Problem) -> str:
    """The last line of the readable thinking: the result, read off the steps ("=6905")."""
    if problem.task == "countdown":
        return f"{answer_text(problem)}={problem.answer}"
    if problem.task == "linear":
        return f"x={problem.answer}"
    return f"={problem.answer}"


def readable_completion(problem: Problem, with_summary: bool = True) -> str:
    """The worked solution in the readable style: one step per line, the summary, then the answer.
    with_summary=False drops the summary line (an ablation: the summary is a second read-off of the
    result, which costs the tiny model accuracy; see the README's recipe section)."""
    lines = [str(step) for step in solution_steps(problem)] + ([summary(problem)] if with_summary else [])
    return "<think>\n" + "\n".join(lines) + "\n</think><answer>" + answer_text(problem) + "</answer>"


def cold_start_set(n: int, *, tasks: tuple[str, ...] = ("add",), seed: int = 0,
                   difficulty: int | None = None, with_summary: bool = True) -> list[dict]:
    """n readable examples from the train split (n // len(tasks) distinct problems per task, the
    remainder to the first tasks), as rows {"prompt", "completion", "task", "question"} for SFT."""
    if n <= 0:
        raise ValueError(f"the cold-start set needs n > 0 examples, got {n}")
    if not tasks:
        raise ValueError("tasks is empty")
    rows = []
    for i, task in enumerate(tasks):
        count = n // len(tasks) + (i < n % len(tasks))
        for p in make_problems(task, count, split="train", seed=seed, difficulty=difficulty):
            rows.append({"prompt": prompt(p), "completion": readable_completion(p, with_summary), "task": p.task,
                         "question": p.question})
    return rows
