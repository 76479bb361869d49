"""Where the errors of an `add` model are: in the column steps, in the summary line, or in the answer.

    python -m tools.readout runs/recipe/r1 [--n 100 --k 4]

k samples (T=0.6, top-p 0.95, as evaluate.py) on the first n held-out `add` problems; each sample is
sorted by three checks: the thinking starts with exactly the worked steps of data/tasks.py ("steps"),
the next word is the readable summary "=<answer>" ("summary"; R1-Zero's one-line thinking has none),
and the answer block is right ("answer"). Prints the counts of each combination and

    steps right       share of samples whose steps are all right
    answer | steps    share of those whose answer is right too: how well the result is read off the steps

A diagnostic for the README's recipe section (the readable style's cost is in the read-off, not in the
steps); it knows the `add` family only.
"""

from __future__ import annotations

import argparse
from collections import Counter

import torch

import rewards
from data import prompt, solution_steps
from runs import pick_device
from sampler import generate
from runs import load_run
from data import eval_problems


@torch.no_grad()
def readout(run: str, n: int = 100, k: int = 4, seed: int = 0, device: str = "cpu") -> Counter:
    dev = pick_device(device)
    model, tok, _ = load_run(run, dev)
    model.eval()
    problems = eval_problems(("add",), n)
    stop = [tok.encode("</answer>")]
    gen = torch.Generator(device=dev).manual_seed(seed)
    counts = Counter()
    for i in range(0, len(problems), 64):
        batch = problems[i:i + 64]
        ids = [tok.encode(prompt(p), bos=True) for p in batch]
        out = generate(model, ids, num_samples=k, max_new_tokens=96, temperature=0.6, top_p=0.95,
                       eos_id=tok.eos_id, pad_id=tok.pad_id, stop_sequences=stop, generator=gen)
        for row in range(out.tokens.shape[0]):
            p = batch[row // k]
            text = tok.decode(out.tokens[row][out.mask[row]].tolist())
            words = text.split("</think>")[0].replace("<think>", "").split()
            words = [w for w in words if not w.endswith("?") and w != "wait"]  # a guess and its reflection
            gold = [str(s) for s in solution_steps(p)]
            steps_ok = words[:len(gold)] == gold
            summary_ok = len(words) > len(gold) and words[len(gold)] == "=" + p.answer
            answer_ok = rewards.accuracy_reward(text, p.answer, None) > 0
            counts["samples"] += 1
            counts["steps right"] += steps_ok
            counts["answer right"] += answer_ok
            counts["steps and answer right"] += steps_ok and answer_ok
            counts[f"steps {'+' if steps_ok else '-'} summary {'+' if summary_ok else '-'} "
                   f"answer {'+' if answer_ok else '-'}"] += 1
    return counts


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run")
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)
    c = readout(args.run, args.n, args.k, args.seed, args.device)
    for key in sorted(k for k in c if k.startswith("steps ") and "summary" in k):
        print(f"  {key}: {c[key]}")
    s = c["samples"]
    print(f"{args.run}: accuracy {100 * c['answer right'] / s:.1f}%, steps right {100 * c['steps right'] / s:.1f}%, "
          f"answer right | steps right {100 * c['steps and answer right'] / max(c['steps right'], 1):.1f}% "
          f"({s} samples)")


if __name__ == "__main__":
    main()
