"""Everything shown to a person: the tables of evaluations (one list of columns for every table),
the plots of an R1-Zero run like the paper's Figures 2 and 3 (R1 §2.2.4: held-out accuracy and training
reward vs step, completion / thinking length vs step) and its reflective-word figure (how often the
thinking says " wait", vs step), and the story's report.md.

    python r1.py plot runs/zero      redraws runs/zero/plots/*.png from its metrics.jsonl files
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from runs import Metrics, R1Error, write_text_atomic  # noqa: E402


def grpo_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(per-step rows, eval rows) of the grpo stage of a run (or of its rl/ sub-run)."""
    for path in (run / "rl" / "metrics.jsonl", run / "metrics.jsonl"):
        if path.is_file():
            rows = [r for r in Metrics(path).read() if r.get("stage") == "grpo"]
            return [r for r in rows if "eval" not in r], [r for r in rows if "eval" in r]
    raise R1Error(f"{run} has no metrics.jsonl with GRPO steps: run `python r1.py grpo` or `python r1.py` first")


def plot_run(run: str | Path, base_eval: dict | None = None) -> list[Path]:
    """Write plots/accuracy.png, plots/length.png and plots/reflection.png; base_eval (per task at step 0,
    evaluate()'s metrics) adds the base model's point to the held-out curves."""
    run = Path(run)
    steps, evals = grpo_metrics(run)
    out = run / "plots"
    out.mkdir(exist_ok=True)
    x = [r["step"] for r in steps]

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [r["accuracy"] for r in steps], color="0.7", lw=1, label="training accuracy (T=1.0 rollouts)")
    tasks = sorted({t for r in evals for t in r["eval"]})
    for t in tasks:
        ex = ([0] if base_eval and t in base_eval else []) + [r["step"] for r in evals]
        ey = ([base_eval[t]["pass@1"]] if base_eval and t in base_eval else []) + [r["eval"][t]["pass@1"] for r in evals]
        ax.plot(ex, ey, marker="o", lw=2, label=f"held-out pass@1, {t} (T=0.6)")
    ax.set_ylim(0, 1.02)
    _save(fig, ax, out / "accuracy.png", "accuracy", "R1-Zero on a tiny model: accuracy during RL")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [r["completion_len"] for r in steps], lw=2, label="completion length")
    ax.plot(x, [r["think_len"] for r in steps], lw=2, label="thinking length (inside <think>)")
    tried = [(r["step"], r["attempts"]) for r in steps if r.get("attempts") is not None]
    if tried:  # countdown: how many attempts the search tries (data/countdown.py), on its own axis
        twin = ax.twinx()
        twin.plot(*zip(*tried), color="tab:green", lw=2, label="countdown attempts per completion (right axis)")
        twin.set_ylabel("attempts per completion")
        twin.set_ylim(0, None)
        twin.legend(loc="upper left", fontsize=8)
    _save(fig, ax, out / "length.png", "tokens per completion (training rollouts)",
          "Thinking gets longer without being asked to")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [r["reflection"] for r in steps], color="0.7", lw=1, label="reflective words per rollout (T=1.0)")
    after_guess = [(r["step"], r["wait_after_guess"]) for r in steps if r.get("wait_after_guess") is not None]
    if after_guess:
        ax.plot(*zip(*after_guess), color="tab:orange", lw=1, label='rollouts that guess, then say " wait" (T=1.0)')
    for t in tasks:
        at0 = base_eval and t in base_eval and base_eval[t].get("reflect") is not None
        ex = ([0] if at0 else []) + [r["step"] for r in evals if r["eval"][t].get("reflect") is not None]
        ey = ([base_eval[t]["reflect"]] if at0 else []) + [r["eval"][t]["reflect"] for r in evals
                                                          if r["eval"][t].get("reflect") is not None]
        ax.plot(ex, ey, marker="o", lw=2, label=f"held-out samples that reflect, {t} (T=0.6)")
    ax.set_ylim(0, 1.02 if after_guess else None)
    _save(fig, ax, out / "reflection.png", "share of completions / words per completion",
          'How often the thinking says " wait" (nothing rewards it)')
    return [out / "accuracy.png", out / "length.png", out / "reflection.png"]


def _save(fig, ax, path: Path, ylabel: str, title: str):
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------------------------
# Tables: rows are names ("base add"), columns the keys of evaluate()'s per-task results
# --------------------------------------------------------------------------------------------


def table_keys(k: int, protocol: bool = False) -> list[str]:
    """The columns of every table r1 prints: R1's protocol (pass@1, cons@k over k samples at T=0.6; with
    `protocol`, `eval`'s full table, also the unbiased pass@k and greedy accuracy), the format and
    readability rates, how long and how fully the model thinks, how often it reflects, and for countdown
    the attempts its search tries (a column only when a countdown row is in the table), and for the arms of
    distillation the wall time of their training, `train_s` (a column only when a row has it)."""
    return ["pass@1", f"cons@{k}", *([f"pass@{k}", "greedy"] if protocol else []), "format", "consistency",
            "think_len", "full_think", "reflect", "attempts", "train_s"]


def rows_by_task(results: dict[str, dict]) -> dict[str, dict]:
    """{name: evaluate()'s result} -> {"name task": that task's metrics}, one row per model and task."""
    return {f"{name} {t}": r for name, res in results.items() for t, r in res["tasks"].items()}


def _cell(key: str, v) -> str:
    if v is None:
        return "-"
    if key == "train_s":
        return f"{v:.0f} s"
    return f"{v:.1f}" if "len" in key or key == "attempts" else f"{100 * v:.1f}%"


OPTIONAL = ("attempts", "train_s")  # columns shown only when some row has them (countdown; distillation's arms)


def _shown(keys: list[str], rows: dict[str, dict]) -> list[str]:
    """The keys without the OPTIONAL ones that no row has."""
    return [k for k in keys if k not in OPTIONAL or any(r.get(k) is not None for r in rows.values())]


def format_table(rows: dict[str, dict], keys: list[str]) -> str:
    """A plain-text table: one row per name, one column per key (percentages for rates)."""
    keys = _shown(keys, rows)
    name_w = max([18] + [len(name) + 1 for name in rows])
    width = {k: max(11, len(k) + 1) for k in keys}
    lines = [" " * name_w + "".join(f"{k:>{width[k]}}" for k in keys)]
    for name, r in rows.items():
        lines.append(f"{name:<{name_w}}" + "".join(f"{_cell(k, r.get(k)):>{width[k]}}" for k in keys))
    return "\n".join(lines)


def format_reflection(rows: dict[str, dict]) -> str:
    """One line per row on reflection (R1's "aha", §2.2.4): how often the thinking reflects, the accuracy
    of reflective and other samples, and the share of reflections that turn a wrong guess into a right
    answer (evaluate.reflection_fixes)."""
    lines = ['reflection (the thinking says " wait"):']
    for name, r in rows.items():
        if r.get("reflect") is None:
            continue
        line = f"  {name}: {_cell('reflect', r['reflect'])} of samples"
        if r.get("acc_reflect") is not None:
            line += (f", right {_cell('acc', r['acc_reflect'])} of them (others {_cell('acc', r.get('acc_no_reflect'))}),"
                     f" {_cell('fix', r.get('reflect_fixes'))} turn a wrong guess into a right answer")
        if r.get("wait_after_guess") is not None:
            line += f"; after a guess, {_cell('wait', r['wait_after_guess'])} say wait"
        lines.append(line)
    return "\n".join(lines)


def markdown_table(rows: dict[str, dict], keys: list[str]) -> str:
    """The same table in Markdown, the task in a column of its own ("name task" row names)."""
    keys = _shown(keys, rows)
    head = "| model | task | " + " | ".join(keys) + " |\n|" + "---|" * (len(keys) + 2) + "\n"
    lines = []
    for name, r in rows.items():
        model, task = name.rsplit(" ", 1)
        lines.append(f"| {model} | {task} | " + " | ".join(_cell(k, r.get(k)) for k in keys) + " |")
    return head + "\n".join(lines)


def write_story_report(run: Path, table: str, after: dict, wall: float, plots: list[Path]) -> Path:
    """report.md of an R1-Zero story: the table, the plots and a few completions after GRPO."""
    ex = "\n".join(f"    {p.splitlines()[-2]}\n    Assistant:{c}   [{'right' if ok else 'wrong'}]"
                    for p, c, ok in after["examples"][:4])
    text = (f"# R1-Zero run: {run}\n\nWall time {wall:.0f} s. Held-out problems, k samples each at "
            f"T=0.6, top-p 0.95 (`python r1.py eval` gives the same protocol).\n\n```\n{table}\n```\n\n"
            + "".join(f"![{p.stem}](plots/{p.name})\n" for p in plots)
            + f"\nCompletions after GRPO:\n\n{ex}\n")
    write_text_atomic(run / "report.md", text)
    return run / "report.md"


def write_recipe_report(run: Path, stages: dict, distill: dict, k: int, wall: float, stage_s: dict,
                        dev3_data: str) -> Path:
    """report.md of the full recipe: the stages (like R1 Table 3) and distillation (like R1 Table 6)."""
    keys = table_keys(k)
    text = (f"# R1 recipe run: {run}\n\nWall time {wall:.0f} s. Held-out problems, {k} samples each at "
            f"T=0.6, top-p 0.95.\n\n## Stages (like R1 Table 3)\n\n{markdown_table(stages, keys)}\n\n"
            f"## Distillation (like R1 Table 6)\n\n{markdown_table(distill, keys)}\n\n"
            f"Dev3 data: {dev3_data}.\n\nStage wall times (s): "
            + ", ".join(f"{k} {v:.0f}" for k, v in stage_s.items()) + "\n")
    write_text_atomic(run / "report.md", text)
    return run / "report.md"
