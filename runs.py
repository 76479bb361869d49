"""Run directories, atomic checkpoints, metrics and progress: what every stage of r1.py shares.

A run directory holds everything needed to see and resume what happened:

    runs/NAME/
        config.json       the resolved configs (model, stage) and the stage name
        tokenizer.json    the tokenizer the model was trained with
        ckpt/step_000400.pt  checkpoints: model, optimizer, RNG states, step, config
        ckpt/latest       the name of the newest complete checkpoint (updated last)
        ckpt/step_000400/    or, from a scale/ run, a torch.distributed.checkpoint (DCP) folder
                             with meta.pt (step, config, RNG states); load_checkpoint reads both
        metrics.jsonl     one JSON object per logged step or evaluation
        samples.txt       text dumps of prompts, completions and rewards

Checkpoints are written to a temporary file, flushed to disk and renamed over the target, and
the `latest` pointer is replaced the same way only afterwards: a crash at any moment leaves the
previous checkpoint loadable.

`World` is what a training loop asks of the other processes training with it (all-reduce the
MoE expert loads, average logged metrics, take this rank's share of a global batch, save a
checkpoint): in one process every answer is trivial. scale/dist.py answers the same questions with
torch.distributed and FSDP2; this file never imports it (only load_checkpoint, when it meets a DCP
folder written by scale/, uses DCP's file reader).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch


class R1Error(Exception):
    """A user-facing error: r1.py prints its message on one line and exits with code 2."""


# --------------------------------------------------------------------------------------------
# Device
# --------------------------------------------------------------------------------------------


def pick_device(name: str = "auto") -> torch.device:
    """cuda, then mps, then cpu; or the device named by --device."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps"):
        raise R1Error(f"--device {name!r}: choose auto, cpu, cuda or mps")
    if name == "cuda" and not torch.cuda.is_available():
        raise R1Error("--device cuda: no CUDA device is available here; use --device cpu")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise R1Error("--device mps: MPS is not available here; use --device cpu")
    return torch.device(name)


def autocast(device: torch.device):
    """What training and sampling run under: bf16 autocast on CUDA, fp32 everywhere else.

    Not an assumption about CPUs but what was measured on the three this repo has run on (`python r1.py
    bench` prints the machine and its peaks): a Zen 3 has no native bf16 (matmul 0.33 GFLOP/s, fp32 179);
    an Intel Xeon with avx512_bf16 but no AMX runs bf16 matmuls at half fp32's speed (83 vs 160 GFLOP/s
    on one thread) and trained `tiny` 0.2-0.7x as fast under autocast (measured under load); a Zen 4 with
    fast bf16 matmuls (416 vs 187) still trained slower under autocast below d = 256 (NOTES.md): the
    `tiny` and `student` presets r1.py trains by default. Only `--preset small` (d = 256) might gain there
    (~1.3x for a dense model of that width); it stays fp32 too, one CPU dtype everywhere. MPS: fp32, not
    measured.
    """
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


# --------------------------------------------------------------------------------------------
# The world a training loop runs in: one process here, many in scale/dist.py
# --------------------------------------------------------------------------------------------


class World:
    """One process. train_lm and train_grpo call these methods; scale/dist.py's DistWorld gives
    them their multi-process meaning, so the loops exist once.

    Every rank sees the same global batch and takes its contiguous slice (`shard`); the loops
    weight each rank's loss by (its tokens x world_size / global tokens), so the average of the
    ranks' gradients, which FSDP computes, is the gradient of the global batch's token mean.
    """

    rank = 0
    world_size = 1

    @property
    def is_main(self) -> bool:
        """The rank that writes metrics, progress, samples and run files."""
        return self.rank == 0

    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        """The sum of x over ranks (a new tensor; x is unchanged)."""
        return x.clone()

    def all_reduce_mean(self, x: torch.Tensor) -> torch.Tensor:
        return self.all_reduce_sum(x) / self.world_size

    def shard(self, items: list) -> list:
        """This rank's contiguous slice of a global list whose length the world size divides."""
        if len(items) % self.world_size:
            raise R1Error(f"a global batch of {len(items)} does not split over {self.world_size} ranks: "
                          f"choose a batch size divisible by the number of processes")
        n = len(items) // self.world_size
        return items[self.rank * n:(self.rank + 1) * n]

    def barrier(self):
        pass

    def on_main(self, fn, *args, **kwargs):
        """fn(*args, **kwargs) run by rank 0 alone (it writes the run directory); every rank gets its
        result, or the R1Error it raised, so a bad option stops all ranks and none waits forever."""
        return fn(*args, **kwargs)

    def pick_device(self, name: str) -> torch.device:
        return pick_device(name)

    @contextmanager
    def full_model(self, model):
        """A model whose forwards run on this rank alone (sampling, evaluation): here the model itself."""
        yield model

    def build_model(self, cfg, device, seed: int | None):
        """A freshly initialised model (on meta, then to_empty, then init_weights)."""
        from model import build_model
        return build_model(cfg, device=device, seed=seed)

    def load_run(self, run: Path, device):
        """(model, tokenizer, checkpoint state) of a run's newest checkpoint."""
        from train import load_run  # train.py imports this file
        return load_run(run, device)

    def save_checkpoint(self, run: Path, step: int, model, opt, meta: dict) -> None:
        """model + optimizer state and the loop's `meta` (step, stage, configs, RNG states)."""
        save_checkpoint(run, step, {"model": model.state_dict(), "optimizer": opt.state_dict(), **meta})

    def load_optimizer(self, model, opt, state: dict) -> None:
        """The optimizer state of a checkpoint returned by load_checkpoint."""
        opt.load_state_dict(state["optimizer"])


# --------------------------------------------------------------------------------------------
# Run directory
# --------------------------------------------------------------------------------------------


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool) -> Path:
    """Create a new run directory, or accept an existing one only with --resume / --overwrite."""
    path = Path(path)
    if path.exists() and any(path.iterdir()):
        if resume:
            return path
        if not overwrite:
            raise R1Error(f"run directory {path} already exists: pass --resume to continue it, "
                          f"--overwrite to start again, or choose another --run")
        for p in sorted(path.rglob("*"), reverse=True):  # start again, but only inside this run dir
            p.unlink() if p.is_file() or p.is_symlink() else p.rmdir()
    elif resume:
        raise R1Error(f"--resume: run directory {path} does not exist (nothing to resume)")
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_text_atomic(path: Path, text: str) -> None:
    """Write to a temporary file, flush it to disk, then rename it over `path`."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_json_atomic(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2))


def read_json(path: Path) -> dict:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise R1Error(f"{path} is missing: is this a run directory made by r1.py?") from None
    except json.JSONDecodeError as e:
        raise R1Error(f"{path} is not valid JSON ({e.msg} at line {e.lineno}): the file is corrupt") from None


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def rng_state() -> dict:
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(run: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ckpt/step_NNNNNN.pt atomically, then point ckpt/latest at it; keep the newest `keep`."""
    ckdir = run / "ckpt"
    ckdir.mkdir(exist_ok=True)
    name = f"step_{step:06d}.pt"
    tmp = ckdir / (name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckdir / name)
    point_latest(ckdir, name, keep)
    return ckdir / name


def point_latest(ckdir: Path, name: str, keep: int = 2) -> None:
    """Point ckpt/latest at `name` (a .pt file or a DCP folder), then delete all but the newest
    `keep` checkpoints. Only after the pointer is replaced does the new checkpoint count."""
    latest_tmp = ckdir / "latest.tmp"
    latest_tmp.write_text(name)
    os.replace(latest_tmp, ckdir / "latest")
    done = [p for p in ckdir.glob("step_*") if p.suffix != ".tmp"]
    for old in sorted(done, key=lambda p: int(p.name[5:11]))[:-keep]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()


def latest_checkpoint(run: str | Path) -> Path:
    """The path ckpt/latest names (a .pt file or a DCP folder); R1Error (one line) if there is none."""
    run = Path(run)
    if not run.is_dir():
        raise R1Error(f"run directory {run} does not exist")
    latest = run / "ckpt" / "latest"
    if not latest.exists():
        raise R1Error(f"{run} has no checkpoint (no ckpt/latest): train it first or pick another run")
    path = run / "ckpt" / latest.read_text().strip()
    if not path.exists():
        raise R1Error(f"{latest} points at {path.name}, which is missing: the run directory is damaged")
    return path


def load_checkpoint(run: str | Path, map_location="cpu") -> dict:
    """The newest complete checkpoint of a run, from a .pt file or (written by scale/) a DCP folder;
    R1Error (one line) if missing or corrupt. The optimizer state comes back as optimizer.state_dict()
    makes it (keyed by parameter index), whichever format it was stored in."""
    path = latest_checkpoint(run)
    try:
        state = read_dcp(path) if path.is_dir() else torch.load(path, map_location=map_location, weights_only=False)
    except R1Error:
        raise
    except Exception as e:  # torch raises many types for a damaged file; all mean the same to the user
        raise R1Error(f"checkpoint {path} is corrupt or unreadable ({type(e).__name__}): "
                      f"delete it and point ckpt/latest at an older one, or retrain") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise R1Error(f"checkpoint {path} is not an r1.py checkpoint (no model/config)")
    return state


def read_dcp(path: Path) -> dict:
    """A DCP checkpoint folder of scale/ read whole into one process (no process group needed):
    meta.pt (step, stage, configs, one RNG state per rank) plus the model and optimizer tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # DCP's file reader only

    if not (path / "meta.pt").is_file():
        raise R1Error(f"checkpoint folder {path} has no meta.pt: it was not written by scale/train.py")
    meta = torch.load(path / "meta.pt", weights_only=False)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        tensors = torch.load(Path(tmp) / "state.pt", weights_only=False)
    state = {**meta, "model": tensors["model"], "optimizer": optimizer_state_by_index(tensors["optimizer"]),
             "rng": meta["rng"][0]}  # one process continues with rank 0's random state
    if "ref" in tensors:
        state["ref"] = tensors["ref"]
    return state


def optimizer_state_by_index(osd: dict) -> dict:
    """An optimizer state keyed by parameter name (DCP's get_optimizer_state_dict) -> keyed by the
    parameter's index in param_groups order, as optimizer.state_dict() is."""
    names = [n for g in osd["param_groups"] for n in g["params"]]
    index = {n: i for i, n in enumerate(names)}
    return {"state": {index[n]: s for n, s in osd["state"].items()},
            "param_groups": [{**g, "params": [index[n] for n in g["params"]]} for g in osd["param_groups"]]}


# --------------------------------------------------------------------------------------------
# Metrics and progress
# --------------------------------------------------------------------------------------------


class Metrics:
    """Appends one JSON object per line to metrics.jsonl."""

    def __init__(self, path: Path):
        self.path = path

    def log(self, **row):
        row = {k: (float(v) if isinstance(v, (np.floating, torch.Tensor)) else v) for k, v in row.items()}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")

    def read(self) -> list[dict]:
        if not self.path.exists():
            return []
        return [json.loads(line) for line in self.path.read_text().splitlines() if line.strip()]


class Progress:
    """A live progress line (rewritten in place on a terminal, one line every `every` steps when
    the output is a file or a pipe): step/total, the given fields, and the ETA."""

    def __init__(self, total: int, label: str, start_step: int = 0, every: int = 50, quiet: bool = False):
        self.total, self.label, self.start_step, self.every, self.quiet = total, label, start_step, every, quiet
        self.t0 = time.perf_counter()
        self.tty = sys.stdout.isatty()

    def update(self, step: int, **fields):
        if self.quiet:
            return
        done = step - self.start_step
        elapsed = time.perf_counter() - self.t0
        eta = elapsed / max(done, 1) * (self.total - step)
        parts = " ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in fields.items())
        line = f"{self.label} {step}/{self.total} {parts} | {elapsed:.0f}s elapsed, eta {eta:.0f}s"
        if self.tty:
            print("\r" + line + "\033[K", end="" if step < self.total else "\n", flush=True)
        elif step % self.every == 0 or step == self.total:
            print(line, flush=True)

    def message(self, text: str):
        if not self.quiet:
            print(("\n" if self.tty else "") + text, flush=True)
