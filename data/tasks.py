"""The four task families behind one interface: problems, the held-out split, and worked completions.

    problem = make_problem("add", rng, difficulty=5)   # say, question "_1663+_5242"
    prompt(problem)                 "User asks, ... </answer>.\\nUser: _1663+_5242\\nAssistant:"
    completion(problem)             LONG:   "<think>3+2+0=5 6+4+0=10 6+2+1=9 1+5+0=6 0+0+0=0</think><answer>6905</answer>"
    completion(problem, steps=0)    SHORT:  "<think></think><answer>6905</answer>"
    completion(problem, steps=2)    GRADED: "<think>3+2+0=5 6+4+0=10 6905?</think><answer>6905</answer>"
    completion(problem, steps=2, reflect=True)
                                    REFLECT: "<think>3+2+0=5 6+4+0=10 6805? wait 6+2+1=9 1+5+0=6 0+0+0=0</think>..."

Each family lives in its own module (arith, mul, countdown, linear) with a worked example in its
docstring; each provides generate(rng, difficulty), steps(problem) and answer_text(problem), plus
DEFAULT_DIFFICULTY and DIFFICULTIES; and, for questions typed by a person (r1.py ask),
read(text, difficulty) and describe(difficulty). This module picks the family by name and adds what is common.

Why partial thinking still ends in the true answer: the base model pre-trained on such completions
learns that thinking may stop anywhere and an answer follows. Where it stopped early it has to guess the
digits it did not work out, and usually gets them wrong; where it thought to the end it copies them. So
how far it thinks becomes a choice with a payoff, and RL (GRPO) can find that thinking longer pays.

Held-out split: a problem is "eval" when a hash of its canonical text falls in the first EVAL_FRACTION
of the hash range, else "train", whatever generated it. The canonical text drops the "_" padding of
"add" questions, so 1663+5242 is held out at every width. The train and eval generators reject
problems of the other split, so they can never meet.
"""

import hashlib
import random
import re

from data import arith, countdown, linear, mul
from data.common import Problem, Step

FAMILIES = {"add": arith, "mul": mul, "countdown": countdown, "linear": linear}
TASKS: tuple[str, ...] = tuple(FAMILIES)                  # ("add", "mul", "countdown", "linear")
DEFAULT_DIFFICULTY = {task: family.DEFAULT_DIFFICULTY for task, family in FAMILIES.items()}
DIFFICULTIES = {task: family.DIFFICULTIES for task, family in FAMILIES.items()}
EVAL_FRACTION = 0.1    # share of each problem space held out for evaluation
EVAL_SEED = 20250122   # seed of the fixed held-out sets (eval_set); the R1 paper's arXiv date
# Tokens a completion may take (the sampling budget) at the default difficulty: room for the longest
# worked solution of the held-out set (add 54, mul 105, countdown 147 with its dead ends and checks, linear 35;
# tests/test_data.py checks that each budget covers it) and more.
COMPLETION_BUDGET = {"add": 80, "mul": 128, "countdown": 160, "linear": 64}


def check_task(task: str) -> None:
    """Raise ValueError naming the choices unless `task` is one of TASKS."""
    if task not in FAMILIES:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TASKS)}")


def _family(task: str):
    check_task(task)
    return FAMILIES[task]


def _difficulty(task: str, difficulty: int | None) -> int:
    if difficulty is None:
        return DEFAULT_DIFFICULTY[task]
    if difficulty not in DIFFICULTIES[task]:
        allowed = DIFFICULTIES[task]
        raise ValueError(f"difficulty {difficulty} out of range for {task!r}: {allowed.start}..{allowed.stop - 1}")
    return difficulty


def completion_budget(tasks) -> int:
    """The sampling budget (tokens after "Assistant:") of a run trained on `tasks`: the largest of theirs."""
    for t in tasks:
        check_task(t)
    return max(COMPLETION_BUDGET[t] for t in tasks)


# ----------------------------------------------------------------------------- problems and the split

def make_problem(task: str, rng: random.Random, difficulty: int | None = None) -> Problem:
    """One random problem of either split (None = the task's default difficulty)."""
    family = _family(task)
    return family.generate(rng, _difficulty(task, difficulty))


def split_of(problem: Problem) -> str:
    """"eval" for the held-out EVAL_FRACTION of the problem space (by hash), else "train"."""
    canonical = f"{problem.task}:{problem.question.replace('_', '')}"
    digest = hashlib.sha256(canonical.encode()).digest()
    return "eval" if int.from_bytes(digest[:8], "big") < EVAL_FRACTION * 2 ** 64 else "train"


def sample_problem(task: str, rng: random.Random, *, split: str = "train", difficulty: int | None = None) -> Problem:
    """One random problem of the given split (rejection sampling; ~1.1 draws for train, ~10 for eval)."""
    if split not in ("train", "eval"):
        raise ValueError(f"split must be 'train' or 'eval', not {split!r}")
    for _ in range(10_000):
        problem = make_problem(task, rng, difficulty)
        if split_of(problem) == split:
            return problem
    raise RuntimeError(f"no {split} problem for {task!r} in 10,000 draws")  # 1 in e^1000 by chance


def make_problems(task: str, n: int, *, split: str = "train", seed: int,
                  difficulty: int | None = None) -> list[Problem]:
    """n distinct problems (by question) of one split, the same for the same arguments."""
    check_task(task)
    rng = random.Random(f"{seed}:{task}:{split}")  # a str seed is hashed the same way in every run
    problems, seen, draws = [], set(), 0
    while len(problems) < n:
        draws += 1
        if draws > 50 * n + 1000:
            raise ValueError(f"found only {len(problems)} distinct {split} problems for {task!r} at difficulty "
                             f"{_difficulty(task, difficulty)} in {draws - 1} draws; "
                             f"ask for fewer or raise the difficulty")
        problem = sample_problem(task, rng, split=split, difficulty=difficulty)
        if problem.question not in seen:
            seen.add(problem.question)
            problems.append(problem)
    return problems


def eval_set(task: str, n: int = 200, *, difficulty: int | None = None) -> list[Problem]:
    """The fixed held-out set: n distinct eval-split problems from EVAL_SEED (a smaller n is a prefix)."""
    return make_problems(task, n, split="eval", seed=EVAL_SEED, difficulty=difficulty)


# ----------------------------------------------------------------------------- questions typed by a person

def question_task(text: str) -> str | None:
    """The family a typed question is written in, told by its operator: "->" countdown, "x" linear,
    "*" mul, "+" or "-" between digits add; None when it looks like none of them."""
    text = plain_question(text)
    if "->" in text:
        return "countdown"
    if "x" in text:
        return "linear"
    if "*" in text:
        return "mul"
    if re.search(r"[0-9_]\s*[+-]", text):
        return "add"
    return None


def plain_question(text: str) -> str:
    """The question without the phrasing around it: "What is 123+456?" -> "123+456"."""
    text = re.sub(r"^what\s+is\s+", "", text.strip(), flags=re.IGNORECASE)
    return text.rstrip("?= \t")


def read_question(task: str, text: str, difficulty: int | None = None) -> Problem:
    """A typed question as the problem a model trained on `task` at `difficulty` knows: the question
    written exactly as the task's generator writes it ("123+456" -> "__123+__456" for add at width 5)
    and the true answer. ValueError, saying what the task asks, for anything the generator could not
    have written: a malformed question, an operand too wide, numbers out of the trained range."""
    return _family(task).read(plain_question(text), _difficulty(task, difficulty))


def describe(task: str, difficulty: int | None = None) -> str:
    """What a model trained on `task` at `difficulty` answers, e.g. "add questions like 123+456 or
    5242-1663 with operands of at most 5 digits"."""
    return _family(task).describe(_difficulty(task, difficulty))


def eval_problems(tasks, n: int, difficulty: int | None = None) -> list:
    """The fixed held-out problems of each task at the training difficulty (n per task)."""
    return [p for t in tasks for p in eval_set(t, n, difficulty=difficulty)]


def harder_level(task: str, difficulty: int | None = None) -> int | None:
    """The difficulty one level above the one a run trained `task` at (add: 4-6 digit operands after
    3-5), or None when there is none: out-of-distribution problems, to ask whether a gain transfers."""
    d = _difficulty(task, difficulty) + 1
    return d if d in DIFFICULTIES[task] else None


def harder_problems(tasks, n: int, difficulty: int | None = None) -> list:
    """n held-out problems of each task one level above the training difficulty (tasks without a harder
    level give none)."""
    return [p for t in tasks if (d := harder_level(t, difficulty)) is not None for p in eval_set(t, n, difficulty=d)]


# ----------------------------------------------------------------------------- worked solutions

def solution_steps(problem: Problem) -> list[Step]:
    """All steps of the worked solution (str(step) is its text)."""
    return _family(problem.task).steps(problem)


def n_steps(problem: Problem) -> int:
    """n: the number of thinking steps of the LONG completion."""
    return len(solution_steps(problem))


def full_completion(problem: Problem) -> str:
    """The shortest completion that works the problem out fully: the LONG one, and for countdown its
    solution attempt alone (how many dead ends come before it is luck). A sample whose thinking is at
    least this long "thinks fully" (evaluate.py)."""
    if problem.task != "countdown":
        return completion(problem)
    return f"<think>{' '.join(map(str, countdown.solution_steps(problem)))}</think><answer>{problem.solution}</answer>"


def answer_text(problem: Problem) -> str:
    """What the reference completion writes in <answer>: the answer, or for countdown the expression."""
    return _family(problem.task).answer_text(problem)


def completion(problem: Problem, *, steps: int | None = None, reflect: bool = False,
               rng: random.Random | None = None) -> str:
    """The worked solution written after "Assistant:": "<think>" + thinking + "</think><answer>" + answer + "</answer>".

    steps=None: all n steps (LONG); steps=0: empty thinking (SHORT); 0<k<n: the first k steps, then the
    answer guessed with a question mark, "6905?" (GRADED). The answer is always the true one.

    reflect=True (k < n): the thinking stops after k steps as a GRADED one would, but its guess is wrong,
    one digit off among those the k steps did not work out ("6805?"); then " wait" and the remaining steps,
    and the true answer: "3+2+0=5 6+4+0=10 6805? wait 6+2+1=9 1+5+0=6 0+0+0=0". A check that fails and a
    redo that fixes it; the guessed digit is chosen with `rng`, else by a hash of the question.
    The steps are joined by single spaces.
    """
    all_steps = solution_steps(problem)
    n = len(all_steps)
    k = n if steps is None else steps
    if not 0 <= k <= n:
        raise ValueError(f"steps={steps} out of range 0..{n} for {problem.question!r}")
    if reflect and k == n:
        raise ValueError(f"reflect=True needs thinking that stops early (steps < {n}) for {problem.question!r}")
    answer = answer_text(problem)
    shown = [str(step) for step in all_steps[:k]]
    if reflect:
        rng = rng or random.Random(f"reflect:{problem.task}:{problem.question}")
        shown += [f"{wrong_guess(answer, k, rng)}?", "wait"] + [str(step) for step in all_steps[k:]]
    elif 0 < k < n:
        shown.append(f"{answer}?")
    return f"<think>{' '.join(shown)}</think><answer>{answer}</answer>"


def wrong_guess(answer: str, worked: int, rng: random.Random) -> str:
    """`answer` with one digit changed, chosen among the digits left of the last `worked` ones (those k
    column steps did not work out; any digit if there are none). A leading digit never becomes 0."""
    places = [i for i, ch in enumerate(answer) if ch.isdigit()]
    if not places:
        raise ValueError(f"answer {answer!r} has no digit to get wrong")
    i = rng.choice(places[:len(places) - worked] or places)
    leading = i == places[0] and len(places) > 1 and (i == 0 or not answer[i - 1].isdigit())
    digit = rng.choice([d for d in "0123456789" if d != answer[i] and not (leading and d == "0")])
    return answer[:i] + digit + answer[i + 1:]
