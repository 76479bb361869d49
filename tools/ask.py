"""Ask a trained run a question and watch it think (r1.py ask): R1-Zero's template (R1 §2.2.1, Table 1)
around a question typed by a person, sampled and printed token by token, the answer then checked.

    $ python r1.py ask runs/zero "What is 123+456?"
    runs/zero is an R1-Zero story run: using its RL model, runs/zero/rl
    User: __123+__456
    Assistant:<think>3+6+0=9 2+5+0=7 1+4+0=5 0+0+0=0 0+0+0=0</think><answer>579</answer>
    right: 579 (the reference answer is 579)

A model knows only the questions it was trained on, written exactly as its task's generator writes
them. So the typed question is first rewritten in that form (data.read_question): "123+456" becomes
"__123+__456" for a run trained on "add" at width 5, the width being the run's training difficulty
(data/arith.py). What the generator could not have written (a task the run was not trained on, an
operand wider than the trained width, a word or character its tokenizer lacks, a malformed question)
is refused with one line that says what the run does answer, rather than sampled into nonsense.

The reference answer is computed, not looked up: the same arithmetic the generators do, and for
countdown a solution found by search (data.countdown.solve). The completion is marked with the
accuracy reward GRPO trained on (rewards.accuracy_reward, via evaluate.score).

What a run was trained on is in its config.json (runs.save_run_files): {"stage": ..., STAGE: its
config, "init": the run it started from}. The tasks and difficulty of a pre-training run are those of
its corpus, of a GRPO run those of its RL prompts; an SFT stage's say nothing (its data does), so for
it the chain of "init" runs is walked up to the nearest stage that chose its tasks.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

import rewards
from data import DEFAULT_DIFFICULTY, Problem, answer_text, describe, plain_question, question_task, read_question
from evaluate import score
from runs import R1Error, read_json
from sampler import generate


def trained_on(run: str | Path) -> dict[str, int] | None:
    """{task: difficulty} of the nearest pre-training or GRPO stage in the run's chain of "init" runs
    (the run itself first); None when no stage says (an imported model, a chain whose start was moved)."""
    run, seen = Path(run), set()
    while run.resolve() not in seen:
        seen.add(run.resolve())
        cfg = read_json(run / "config.json")
        stage = cfg.get("stage")
        block = cfg.get(stage) if stage in ("pretrain", "grpo") else None
        if isinstance(block, dict) and block.get("tasks"):
            d = block.get("difficulty")  # None: each task's default
            tasks = [t for t in block["tasks"] if t in DEFAULT_DIFFICULTY]
            return {t: DEFAULT_DIFFICULTY[t] if d is None else d for t in tasks} or None
        if not (isinstance(cfg.get("init"), str) and (Path(cfg["init"]) / "config.json").is_file()):
            return None
        run = Path(cfg["init"])
    return None  # a loop of "init"s: a damaged chain says nothing


def answers(trained: dict[str, int]) -> str:
    """What a run trained on these {task: difficulty} answers, for its messages."""
    return "; ".join(describe(t, d) for t, d in trained.items())


def problem_for(question: str, trained: dict[str, int], tok, task: str | None = None) -> Problem:
    """The typed question as a problem of one of the `trained` tasks at its difficulty (of `task` when
    given, else of the task its operator names); R1Error, saying what the run answers, for anything
    it was not trained on."""
    text = plain_question(question)
    piece = tok.unknown(text)
    if piece is not None:
        raise R1Error(f"this run's tokenizer cannot write {piece!r} (in {question!r}): it answers {answers(trained)}")
    task = task or question_task(text) or (next(iter(trained)) if len(trained) == 1 else None)
    if task is None:
        raise R1Error(f"{question!r} is not a question this run can read: it answers {answers(trained)}")
    if task not in trained:
        raise R1Error(f"{question!r} is a {task} question, and this run was not trained on {task}: "
                      f"it answers {answers(trained)}")
    try:
        return read_question(task, text, trained[task])
    except ValueError as e:
        raise R1Error(str(e)) from None


def think(model, tok, prompt_ids: list[int], *, temperature: float, top_p: float, max_new_tokens: int,
          generator: torch.Generator, on_text: Callable[[str], None]) -> tuple[str, bool]:
    """One completion of the prompt, each token's text handed to `on_text` as it is sampled (the
    sampler's per-token callback; the tokenizer is closed-vocabulary, so every token decodes on its own).
    Returns (completion, truncated)."""
    def each(token, took):
        if took[0]:
            on_text(tok.decode([int(token[0])]))

    out = generate(model, [prompt_ids], max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                   eos_id=tok.eos_id, pad_id=tok.pad_id, stop_sequences=[tok.encode("</answer>")],
                   generator=generator, on_token=each)
    return tok.decode(out.tokens[0][out.mask[0]].tolist()), bool(out.truncated[0])


def verdict(problem: Problem, completion: str, truncated: bool) -> str:
    """One line: right or wrong (rewards.accuracy_reward), the answer given and the reference one."""
    reference = answer_text(problem)  # countdown: an expression, any other that reaches the target is right too
    given = rewards.extract_answer(completion)
    if given is None:
        why = ("it stopped at --max-new-tokens" if truncated
               else "the completion is not <think>...</think><answer>...</answer>")
        return f"no answer: {why} (the reference answer is {reference})"
    if score(problem, completion):
        return f"right: {given} (the reference answer is {reference})"
    return f"wrong: {given} (the reference answer is {reference})"
