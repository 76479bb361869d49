"""Plots and the report of an R1-Zero run, like the paper's Figures 2 and 3 (R1 §2.2.4):
held-out accuracy and training reward vs step, and completion / thinking length vs step.

    python r1.py plot runs/zero      redraws runs/zero/plots/*.png from its metrics.jsonl files
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from runs import Metrics, R1Error  # noqa: E402


def grpo_metrics(run: Path) -> tuple[list[dict], list[dict]]:
    """(per-step rows, eval rows) of the grpo stage of a run (or of its rl/ sub-run)."""
    for path in (run / "rl" / "metrics.jsonl", run / "metrics.jsonl"):
        if path.is_file():
            rows = [r for r in Metrics(path).read() if r.get("stage") == "grpo"]
            return [r for r in rows if "eval" not in r], [r for r in rows if "eval" in r]
    raise R1Error(f"{run} has no metrics.jsonl with GRPO steps: run `python r1.py grpo` or `python r1.py` first")


def plot_run(run: str | Path, base_eval: dict | None = None) -> list[Path]:
    """Write plots/accuracy.png and plots/length.png; base_eval (pass@1 per task at step 0) is
    taken from the run's report data when not given."""
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
        ey = ([base_eval[t]] if base_eval and t in base_eval else []) + [r["eval"][t]["pass@1"] for r in evals]
        ax.plot(ex, ey, marker="o", lw=2, label=f"held-out pass@1, {t} (T=0.6)")
    ax.set_ylim(0, 1.02)
    _save(fig, ax, out / "accuracy.png", "accuracy", "R1-Zero on a tiny model: accuracy during RL")

    fig, ax = plt.subplots(figsize=(6.4, 4))
    ax.plot(x, [r["completion_len"] for r in steps], lw=2, label="completion length")
    ax.plot(x, [r["think_len"] for r in steps], lw=2, label="thinking length (inside <think>)")
    _save(fig, ax, out / "length.png", "tokens per completion (training rollouts)",
          "Thinking gets longer without being asked to")
    return [out / "accuracy.png", out / "length.png"]


def _save(fig, ax, path: Path, ylabel: str, title: str):
    ax.set_xlabel("GRPO step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
