"""Evaluation as in the R1 paper (§3, Supp. D.1): k samples per held-out problem at temperature
0.6 and top-p 0.95, pass@1 = mean correctness over the k samples, cons@k = correctness of the
majority-vote answer, pass@k with the unbiased estimator, and greedy accuracy, per task.

Also what the R1-Zero story needs: the format rate and the thinking length in tokens (the text
between <think> and </think>, counted apart from the whole completion, so a model cannot look
like it "thinks longer" by padding after its answer); reflection, R1's "aha moment" (§2.2.4): how
often the thinking holds a reflective word, how often a reflection turns a wrong guess into a right
answer, and the accuracy of reflective and other completions; and what R1 adds: the readability of the
thinking (rewards.consistency_reward, the toy language-consistency metric).

    python r1.py eval runs/NAME --k 8 --n 100 --tasks add,mul
"""

from __future__ import annotations

import math
import re
from collections import defaultdict

import torch

import rewards
from data import Problem, countdown, full_completion, prompt
from runs import Progress
from sampler import complete


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples of which c are correct (Chen et al. 2021):
    1 - C(n-c, k) / C(n, k), the chance that k samples drawn without replacement hold a correct one."""
    if n - c < k:
        return 1.0
    return 1.0 - math.comb(n - c, k) / math.comb(n, k)


def majority_vote(answers: list[str | None]) -> int | None:
    """Index of a representative of the most common answer (equivalent answers vote together:
    "1/2" and "0.5" are one answer). Ties go to the answer seen first; None answers never win."""
    groups: list[list[int]] = []  # each group: indices of equivalent answers
    for i, a in enumerate(answers):
        if a is None:
            continue
        for g in groups:
            if rewards.answers_equal(answers[g[0]], a):
                g.append(i)
                break
        else:
            groups.append([i])
    if not groups:
        return None
    return max(groups, key=len)[0]  # max() keeps the first of equal lengths


def thinking_tokens(ids: list[int], think_id: int, end_think_id: int) -> int:
    """Tokens strictly between <think> and </think> (to the end if </think> never came)."""
    if think_id not in ids:
        return 0
    start = ids.index(think_id) + 1
    end = ids.index(end_think_id, start) if end_think_id in ids[start:] else len(ids)
    return end - start


def score(problem: Problem, completion: str) -> float:
    return rewards.accuracy_reward(completion, problem.answer, problem.numbers or None)


# Reflective words, counted in the thinking only (R1 §2.2.4 and its Nature version count words like these
# over training). The toy corpus writes only " wait" (data/corpus.py, REFLECT); the rest would show a
# model inventing another.
REFLECTION = re.compile(r"\b(wait|check|verify|mistake|wrong|retry|error|however|but|evaluate)\b", re.IGNORECASE)
_GUESS_THEN_WAIT = re.compile(r"([^\s>]+)\? wait\b")  # "6805? wait": the guess a reflection checks


def reflection_count(text: str) -> int:
    """Reflective words in the thinking of a completion (the text before </think>)."""
    return len(REFLECTION.findall(text.split("</think>")[0]))


def guesses(text: str) -> bool:
    """True when the thinking writes a guess ("6905?"): where a GRADED thinking stops and commits, and
    where a reflection starts. How often a guess is followed by " wait" is the choice RL gets to make."""
    return "?" in text.split("</think>")[0]


def reflection_fixes(problem: Problem, text: str) -> bool:
    """True when the completion reflects on a guess that is wrong ("6805? wait") and its answer is right:
    the reflection turned a wrong intermediate result into a right one."""
    guess = _GUESS_THEN_WAIT.search(text.split("</think>")[0])
    if guess is None or not score(problem, text):
        return False
    return not score(problem, f"<think></think><answer>{guess.group(1)}</answer>")


@torch.no_grad()
def evaluate(model, tok, problems: list[Problem], *, k: int = 8, temperature: float = 0.6, top_p: float = 0.95,
             greedy: bool = True, max_new_tokens: int = 96, seed: int = 0, batch_rows: int = 256,
             progress: bool = False) -> dict:
    """Per task and overall: pass@1, cons@k, pass@k (k samples), greedy accuracy, format rate,
    mean thinking and completion length (len; len_right and len_wrong: of right and of wrong answers),
    the reflection rate (share of samples whose thinking holds a reflective word), the accuracy of
    reflective and other samples, the share of reflections that fix a wrong guess (reflect_fixes), of
    the samples that guess, the share that then reflect (wait_after_guess), and for countdown the
    attempts a sample tries (attempts). Returns {"tasks": {task:
    {...}}, "overall": {...}, "examples": [(prompt, completion, correct), ...] (a few, for text dumps)}.
    progress=True prints a line after each batch of problems (samples done, time, ETA): the default
    protocol takes over a minute on a CPU, silence that long looks like a hang."""
    bar = Progress(len(problems) * k, "evaluating: samples", every=1, quiet=not progress)
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed)
    think_id, end_think_id = tok.encode("<think>")[0], tok.encode("</think>")[0]
    per_task = defaultdict(lambda: defaultdict(list))
    examples = []
    chunk = max(1, batch_rows // k)
    for i in range(0, len(problems), chunk):
        batch = problems[i:i + chunk]
        prompts = [prompt(p) for p in batch]
        out, texts = complete(model, tok, prompts, stop="</answer>", num_samples=k, max_new_tokens=max_new_tokens,
                              temperature=temperature, top_p=top_p, generator=gen)
        greedy_texts = complete(model, tok, prompts, stop="</answer>", max_new_tokens=max_new_tokens,
                                temperature=0.0)[1] if greedy else None
        for j, p in enumerate(batch):
            m = per_task[p.task]
            # thinking as long as the worked solution's: the "long mode" of the base model
            gold_think = thinking_tokens(tok.encode(full_completion(p)), think_id, end_think_id)
            correct, answers = [], []
            for s in range(k):
                row = j * k + s
                gen_ids, text = out.tokens[row][out.mask[row]].tolist(), texts[row]
                correct.append(score(p, text))
                answers.append(rewards.extract_answer(text))
                m["format"].append(rewards.format_reward(text))
                reflects = reflection_count(text) > 0
                m["reflect"].append(float(reflects))
                (m["acc_reflect"] if reflects else m["acc_no_reflect"]).append(correct[-1])
                if guesses(text):
                    m["wait_after_guess"].append(float(reflects))
                if reflects:
                    m["reflect_fixes"].append(float(reflection_fixes(p, text)))
                m["consistency"].append(rewards.consistency_reward(text))
                m["think_len"].append(thinking_tokens(gen_ids, think_id, end_think_id))
                full = m["think_len"][-1] >= gold_think
                m["full_think"].append(float(full))
                (m["acc_full_think"] if full else m["acc_part_think"]).append(correct[-1])
                if m["think_len"][-1] == 0:
                    m["acc_no_think"].append(correct[-1])
                if p.task == "countdown":  # how long it searched: attempts tried (data/countdown.py)
                    m["attempts"].append(countdown.attempts(text))
                m["len"].append(len(gen_ids))
                (m["len_right"] if correct[-1] else m["len_wrong"]).append(len(gen_ids))  # Dr. GRPO's length bias
                m["truncated"].append(float(out.truncated[row]))
                if s == 0 and len(examples) < 8:
                    examples.append((prompt(p), text, correct[-1]))
            m["pass@1"].append(sum(correct) / k)
            m[f"pass@{k}"].append(pass_at_k(k, int(sum(correct)), k))
            winner = majority_vote(answers)
            m[f"cons@{k}"].append(0.0 if winner is None else correct[winner])
            if greedy_texts is not None:
                m["greedy"].append(score(p, greedy_texts[j]))
        bar.update((i + len(batch)) * k, task=",".join(dict.fromkeys(p.task for p in batch)))
    if was_training:
        model.train()
    mean = lambda xs: sum(xs) / max(len(xs), 1)  # noqa: E731
    # a rate over no samples (say, accuracy without thinking when the model always thinks) is None
    tasks = {t: {key: (mean(v) if v else None) for key, v in m.items()} | {"n": len(m["pass@1"])}
             for t, m in per_task.items()}
    keys = {key for t in tasks.values() for key in t if key != "n"}
    overall = {key: (mean(vals) if (vals := [t[key] for t in tasks.values() if t.get(key) is not None]) else None)
               for key in sorted(keys)}
    return {"tasks": tasks, "overall": overall, "examples": examples, "k": k}
