"""Toy reasoning tasks, their worked solutions, the pre-training corpus and the tokenizer.

    common.py     Problem, Step, the R1-Zero style TEMPLATE and prompt()
    arith.py      task "add": addition and subtraction, column by column (the headline task)
    mul.py        task "mul": d-digit times 1-2 digit long multiplication
    countdown.py  task "countdown": reach a target from given numbers with + - * /
    linear.py     task "linear": solve a*x+b=c (or a*x+b=c*x+e) for x
    tasks.py      one interface over the four: problems, the held-out split, completion(), typed questions
    corpus.py     build_corpus(): the LONG / SHORT / GRADED mix the base model is pre-trained on
    tokenizer.py  Tokenizer (closed vocabulary, HF tokenizer.json) and default_tokenizer()
"""

from data.common import TEMPLATE, Problem, Step, prompt
from data.corpus import build_corpus
from data.tasks import (DEFAULT_DIFFICULTY, DIFFICULTIES, EVAL_FRACTION, EVAL_SEED, TASKS, answer_text, check_task,
                        completion, completion_budget, describe, eval_problems, full_completion, eval_set, harder_level, harder_problems, make_problem, make_problems, n_steps, plain_question,
                        question_task, read_question, sample_problem, solution_steps, split_of)
from data.tokenizer import Tokenizer, default_tokenizer

__all__ = [
    "TEMPLATE", "Problem", "Step", "prompt",
    "TASKS", "DEFAULT_DIFFICULTY", "DIFFICULTIES", "EVAL_FRACTION", "EVAL_SEED", "check_task",
    "make_problem", "make_problems", "sample_problem", "split_of", "eval_set", "eval_problems", "harder_level",
    "harder_problems",
    "solution_steps", "n_steps", "answer_text", "completion", "full_completion", "completion_budget",
    "question_task", "plain_question", "read_question", "describe",
    "build_corpus", "Tokenizer", "default_tokenizer",
]
