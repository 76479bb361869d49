"""Run directories, atomic checkpoints, metrics and progress: what every stage of r1.py shares.

A run directory holds everything needed to see and resume what happened:

    runs/NAME/
        .r1-run           the marker: this folder was made by r1.py (--overwrite deletes nothing else)
        config.json       the resolved configs (model, stage) and the stage name
        tokenizer.json    the tokenizer the model was trained with
        ckpt/step_000400.pt  checkpoints: model, optimizer, RNG states, step, config
        ckpt/step_000400.pt.sha256   its SHA-256, checked before every load (a flipped bit is an error)
        ckpt/latest       the name of the newest complete checkpoint (updated last)
        ckpt/step_000400/    or, from a scale/ run, a torch.distributed.checkpoint (DCP) folder
                             with meta.pt (step, config, RNG states); load_checkpoint reads both
        metrics.jsonl     one JSON object per logged step or evaluation
        samples.txt       text dumps of prompts, completions and rewards

Checkpoints are written to a temporary file, flushed to disk and renamed over the target, then
their checksum, and the `latest` pointer is replaced the same way only afterwards: a crash at any
moment leaves the previous checkpoint loadable. They hold tensors, numbers, strings, lists and dicts
only, and are read with torch.load(weights_only=True): loading a checkpoint never runs code from it.

Safety of the user's files: a command writes only into a run directory it created (it holds the
`.r1-run` marker) or an empty one; `--overwrite` empties only a marked folder, and never one that holds
the working directory, a git work tree, this source code or a source of the run being made. While a
process writes a run it holds an exclusive lock on the folder (flock, released by the OS even on
kill -9), so a second writer is refused. On resume the logs are cut back to the checkpoint's step.

`World` is what a training loop asks of the other processes training with it (all-reduce the
MoE expert loads, average logged metrics, take this rank's share of a global batch, save a
checkpoint): in one process every answer is trivial. scale/dist.py answers the same questions with
torch.distributed and FSDP2; this file never imports it (only load_checkpoint, when it meets a DCP
folder written by scale/, uses DCP's file reader).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import re
import shutil
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import MISSING, asdict, fields
from pathlib import Path

import numpy as np
import torch

from data import Tokenizer
from model import ModelConfig, Transformer, activation_numbers, build_model, count_params


class R1Error(Exception):
    """A user-facing error: r1.py prints its message on one line and exits with code 2."""


def error_line(e: Exception) -> str:
    """The one line a user sees for an R1Error or an OSError (permissions, a file where a folder
    should be, a full disk): no traceback."""
    if isinstance(e, OSError):
        return f"error: {e.strerror or e}" + (f": {e.filename}" if e.filename else "")
    return f"error: {e}"


MAX_INT = 2**31 - 1  # a bound on every integer option: seeds and sizes stay inside int64 arithmetic
# Bounds of every evaluation (eval, sample, ask, the story, the stages' in-loop evaluations). The held-out
# split is 10% of each problem space, and a small one runs out (countdown with 2 numbers has 38 problems),
# which eval_set reports after 50 draws per problem asked for: ~6 s at 500
MAX_EVAL_N = 500  # held-out problems per task
MAX_EVAL_K = 256  # samples per problem: one problem's k samples fill at most one batch of evaluate (256 rows)
MAX_EXAMPLES = 1_000_000  # generated SFT examples or prompts per task (cold start, rejection sampling)


def check_numbers(cfg) -> None:
    """R1Error naming the option unless every number of a config dataclass is usable: floats finite
    (argparse accepts "nan" and "inf"), integers within [-MAX_INT, MAX_INT], a seed >= 0. Each config's
    own __post_init__ then checks the ranges that are its own."""
    import dataclasses
    for f in dataclasses.fields(cfg):
        v, flag = getattr(cfg, f.name), "--" + f.name.replace("_", "-")
        if isinstance(v, float) and not math.isfinite(v):
            raise R1Error(f"{flag} must be a finite number, got {v}")
        if isinstance(v, int) and not isinstance(v, bool) and not -MAX_INT <= v <= MAX_INT:
            raise R1Error(f"{flag} {v} is out of range (at most {MAX_INT:,})")
        if f.name == "seed" and v < 0:
            raise R1Error(f"--seed must be >= 0, got {v}")


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
    fast bf16 matmuls (416 vs 187) still trained slower under autocast below d = 256 (measured in November 2026): the
    `tiny` and `student` presets r1.py trains by default. Only `--preset small` (d = 256) might gain there
    (~1.3x for a dense model of that width); it stays fp32 too, one CPU dtype everywhere. MPS: fp32, not
    measured.
    """
    return torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)


def available_memory(device: torch.device) -> int | None:
    """Bytes free for tensors on `device` (CUDA: free device memory; CPU: the OS's MemAvailable),
    or None where it cannot be known (then nothing is refused)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(model_cfg, device: torch.device, *, train_rows: int, seq: int, what: str,
                 cache_rows: int = 0, models: int = 1) -> None:
    """R1Error, before anything is allocated, when a stage clearly cannot fit: fp32 weights (x4 with
    gradients and AdamW's two moments when training), the activations autograd keeps for `train_rows`
    sequences of `seq` tokens (scale/plan.py's per-token count, fp32), and a KV cache for `cache_rows`.
    An estimate to stop the absurd (a 671B preset, a batch of millions) with one line, not a planner."""
    c = count_params(model_cfg)
    P = c["total"] + c["mtp"]
    moe = model_cfg.n_routed_experts > 0
    per_token = model_cfg.n_layers * activation_numbers(model_cfg, moe) + 3 * model_cfg.vocab_size
    need = (4 * P * (4 if train_rows else 1) * models + 4 * train_rows * seq * per_token
            + cache_rows * seq * 2 * c["kv_cache_bytes_bf16"])  # the cache is fp32 here: twice the bf16 bytes
    free = available_memory(device)
    if free is not None and need > free:
        raise R1Error(f"{what} needs about {need / 2**30:,.1f} GiB ({P / 1e6:,.1f}M parameters) but "
                      f"{device.type} has {free / 2**30:,.1f} GiB free: choose a smaller preset or batch")


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
        return build_model(cfg, device=device, seed=seed)

    def load_run(self, run: Path, device):
        """(model, tokenizer, checkpoint state) of a run's newest checkpoint."""
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


MARKER = ".r1-run"  # in every run directory r1.py creates; the only folders --overwrite may empty
SOURCE_DIR = Path(__file__).resolve().parent  # this code: never inside a folder that gets emptied
_LOCKS: dict[Path, int] = {}  # run directory -> the open descriptor holding its flock, in this process


def prepare_run_dir(path: str | Path, *, resume: bool, overwrite: bool, sources=(), flag: str = "--run") -> Path:
    """The run directory a stage writes: a new (or empty) folder, a marked one continued with
    --resume, or a marked one emptied with --overwrite. `sources` are the paths this run reads
    (--init, --data, an import folder...): --overwrite never empties a folder holding one of them.
    Everything is checked before anything is written; the folder is then locked for this process.
    `flag` names the option in messages (--run, or --hf for an export folder)."""
    if not str(path).strip():
        raise R1Error(f"{flag} is empty: name a folder, e.g. {flag} runs/mine")
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise R1Error(f"{flag} {path} is a file, not a directory: choose another {flag}")
    if resume and not (path.is_dir() and any(path.iterdir())):
        raise R1Error(f"--resume: run directory {path} does not exist or is empty (nothing to resume)")
    if path.is_dir() and any(path.iterdir()):
        if resume:
            if not (path / MARKER).exists() and not (path / "config.json").exists():
                raise R1Error(f"--resume: {path} is not a run directory made by r1.py (no {MARKER} or config.json)")
            lock_run(path)
            return path
        if not overwrite:
            again = "--resume to continue it, " if flag == "--run" else ""
            raise R1Error(f"{flag} {path} already exists: pass {again}--overwrite to start again, "
                          f"or choose another {flag}")
        check_deletable(path, sources)
        lock_run(path)
        # check_deletable passed: r1's marker is there and the folder is none of the places never emptied.
        # Emptied, not removed: the lock stays on the folder itself
        for child in path.iterdir():
            shutil.rmtree(child) if child.is_dir() and not child.is_symlink() else child.unlink()
    else:
        try:
            path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise R1Error(f"cannot create {flag} {path}: {e.strerror}") from None
        lock_run(path)
    mark_run_dir(path)
    return path


def check_output_file(path: str | Path, flag: str, *, overwrite: bool, kind: str) -> Path:
    """A file a command is about to write (--out, --json), checked before the work that fills it: a
    new file, or (with `overwrite`) one that r1 itself could have written (`kind` "jsonl": rows of
    prompt/completion; "json": one JSON object). A file of the user's is never replaced."""
    if not str(path).strip():
        raise R1Error(f"{flag} is empty: name a file")
    path = Path(path)
    if path.is_dir():
        raise R1Error(f"{flag} {path} is a folder: give a file name")
    if path.parent.exists() and not path.parent.is_dir():
        raise R1Error(f"{flag} {path}: {path.parent} is not a folder")
    if path.exists():
        if not overwrite:
            raise R1Error(f"{flag} {path} already exists: pass --overwrite to replace it, or choose another {flag}")
        if not _written_by_r1(path, kind):
            raise R1Error(f"{flag} {path} exists and is not a {kind.upper()} file r1 writes: it is not replaced; "
                          f"choose another {flag}")
    return path


def _written_by_r1(path: Path, kind: str) -> bool:
    try:
        text = path.read_text(encoding="utf-8")
        rows = [json.loads(line) for line in text.splitlines() if line.strip()] if kind == "jsonl" else [json.loads(text)]
    except (UnicodeDecodeError, json.JSONDecodeError):
        return False
    if kind == "json":
        return isinstance(rows[0], dict)
    return all(isinstance(r, dict) and "prompt" in r and "completion" in r for r in rows)


def mark_run_dir(path: Path) -> Path:
    """Create `path` if needed and mark it as made by r1.py (the stages inside a story or a recipe
    are run directories of their own: each can be evaluated, resumed or overwritten alone)."""
    path.mkdir(parents=True, exist_ok=True)
    if not (path / MARKER).exists():  # written in place: even a torn marker marks the folder
        (path / MARKER).write_text("made by r1.py: --overwrite may empty this folder\n")
    return path


def check_deletable(path: Path, sources=()) -> None:
    """R1Error unless emptying `path` can only lose what r1.py itself wrote there."""
    real = path.resolve()
    here = Path.cwd().resolve()
    if real == Path(real.anchor) or real == Path.home().resolve():
        raise R1Error(f"--overwrite {path}: refusing to empty a root or home folder")
    if here.is_relative_to(real):
        raise R1Error(f"--overwrite {path}: it holds the working directory {here}; refusing to empty it")
    if SOURCE_DIR.is_relative_to(real):
        raise R1Error(f"--overwrite {path}: it holds r1's own source code ({SOURCE_DIR}); refusing to empty it")
    if (path / ".git").exists():
        raise R1Error(f"--overwrite {path}: it is a git work tree; refusing to empty it")
    for src in sources:
        if src is not None and str(src).strip() and Path(src).resolve().is_relative_to(real):
            raise R1Error(f"--overwrite {path}: it holds {src}, which this command reads; choose another folder")
    if not (path / MARKER).exists():
        raise R1Error(f"--overwrite {path}: the folder was not made by r1.py (no {MARKER} marker), so it is "
                      f"not deleted; remove it yourself or choose another folder")


def lock_run(path: Path) -> None:
    """An exclusive lock on the run directory for the rest of this process (or until release_runs):
    a second process that tries to write the same run gets one clear line instead of a corrupt run.
    The OS drops the lock when the process ends, however it ends."""
    key = path.resolve()
    if key in _LOCKS:
        return
    try:
        import fcntl
    except ImportError:  # Windows: no flock; runs are not locked there
        return
    fd = os.open(key, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise R1Error(f"{path} is being written by another r1.py process: wait for it to end "
                      f"(or stop it), then --resume") from None
    _LOCKS[key] = fd


def release_runs() -> None:
    """Drop this process's run locks (the end of a command; r1.main calls it)."""
    while _LOCKS:
        os.close(_LOCKS.popitem()[1])


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
        obj = json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise R1Error(f"{path} is missing: is this a run directory made by r1.py?") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise R1Error(f"{path} is not valid JSON ({getattr(e, 'msg', 'not UTF-8')}): the file is corrupt") from None
    if not isinstance(obj, dict):
        raise R1Error(f"{path} is not a JSON object: the file is corrupt")
    return obj


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def rng_state() -> dict:
    """Every random generator's state as plain tensors, numbers and lists (weights_only-loadable)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(),
            "numpy": [name, keys.tolist(), pos, has_gauss, gauss],
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}


def set_rng_state(state: dict):
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    name, keys, pos, has_gauss, gauss = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


_CKPT_NAME = re.compile(r"step_(\d{6,})(\.pt)?")  # a complete checkpoint: a .pt file or a DCP folder


def save_checkpoint(run: Path, step: int, state: dict, keep: int = 2) -> Path:
    """Write ckpt/step_NNNNNN.pt atomically, then its checksum, then point ckpt/latest at it; keep
    the newest `keep`."""
    ckdir = run / "ckpt"
    ckdir.mkdir(exist_ok=True)
    name = f"step_{step:06d}.pt"
    tmp = ckdir / (name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save({**state, "tokenizer_sha256": tokenizer_sha256(run)}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, ckdir / name)
    write_checksum(ckdir / name)
    point_latest(ckdir, name, keep)
    return ckdir / name


def tokenizer_sha256(run: Path) -> str | None:
    """The digest of the run's tokenizer.json, stored in each checkpoint and compared on load."""
    path = Path(run) / "tokenizer.json"
    return file_sha256(path) if path.is_file() else None


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def file_digests(path: Path) -> dict[str, str]:
    """SHA-256 of a checkpoint: of the file, or of every file in a DCP folder (by relative name)."""
    if not path.is_dir():
        return {path.name: file_sha256(path)}
    return {f.relative_to(path).as_posix(): file_sha256(f) for f in sorted(path.rglob("*")) if f.is_file()}


def write_checksum(path: Path) -> None:
    """ckpt/step_NNNNNN(.pt).sha256: the digests of a checkpoint just written, written atomically."""
    write_text_atomic(path.with_name(path.name + ".sha256"), json.dumps(file_digests(path), indent=1))


def verify_checksum(path: Path) -> None:
    """R1Error (one line) unless the checkpoint's bytes are those its .sha256 file records."""
    record = path.with_name(path.name + ".sha256")
    if not record.is_file():
        raise R1Error(f"checkpoint {path} has no checksum ({record.name}): it was not completely written "
                      f"(or by an older r1.py); retrain, or point ckpt/latest at an older checkpoint")
    try:
        want = json.loads(record.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise R1Error(f"{record} is corrupt: the checkpoint cannot be verified") from None
    if file_digests(path) != want:
        raise R1Error(f"checkpoint {path} does not match its checksum: the file was changed or damaged "
                      f"after it was written; point ckpt/latest at an older checkpoint, or retrain")


def point_latest(ckdir: Path, name: str, keep: int = 2) -> None:
    """Point ckpt/latest at `name` (a .pt file or a DCP folder), then delete all but the newest
    `keep` checkpoints. Only after the pointer is replaced does the new checkpoint count."""
    write_text_atomic(ckdir / "latest", name)
    # only what this code wrote: names of the form step_NNNNNN(.pt) in the ckpt/ folder of a run
    # directory opened through prepare_run_dir, and their .sha256 files
    done = sorted((p for p in ckdir.iterdir() if _CKPT_NAME.fullmatch(p.name)),
                  key=lambda p: int(_CKPT_NAME.fullmatch(p.name)[1]))
    for old in done[:-keep]:
        shutil.rmtree(old) if old.is_dir() else old.unlink()
        old.with_name(old.name + ".sha256").unlink(missing_ok=True)


def has_checkpoint(run: str | Path) -> bool:
    return (Path(run) / "ckpt" / "latest").is_file()


def checkpoint_step(run: str | Path) -> int:
    """The step of the run's newest checkpoint, read from its name (save_checkpoint names it by its
    step) without loading it; 0 when the run has none."""
    return int(_CKPT_NAME.fullmatch(latest_checkpoint(run).name)[1]) if has_checkpoint(run) else 0


def latest_checkpoint(run: str | Path) -> Path:
    """The path ckpt/latest names (a .pt file or a DCP folder); R1Error (one line) if there is none."""
    run = Path(run)
    if not run.is_dir():
        raise R1Error(f"run directory {run} does not exist")
    latest = run / "ckpt" / "latest"
    if not latest.is_file():
        raise R1Error(f"{run} has no checkpoint (no ckpt/latest): train it first or pick another run")
    try:
        name = latest.read_text().strip()
    except UnicodeDecodeError:
        name = ""
    if not _CKPT_NAME.fullmatch(name):
        raise R1Error(f"{latest} is damaged (it should name a checkpoint like step_000400.pt)")
    path = run / "ckpt" / name
    if not path.exists():
        raise R1Error(f"{latest} points at {path.name}, which is missing: the run directory is damaged")
    return path


def load_checkpoint(run: str | Path, map_location="cpu") -> dict:
    """The newest complete checkpoint of a run, from a .pt file or (written by scale/) a DCP folder,
    its checksum verified and read without unpickling code (weights_only); R1Error (one line) if
    missing, changed or corrupt. The optimizer state comes back as optimizer.state_dict() makes it
    (keyed by parameter index), whichever format it was stored in."""
    path = latest_checkpoint(run)
    verify_checksum(path)
    try:
        state = read_dcp(path) if path.is_dir() else torch.load(path, map_location=map_location, weights_only=True)
    except R1Error:
        raise
    except Exception as e:  # torch raises many types for a damaged or code-carrying file; all mean the same here
        raise R1Error(f"checkpoint {path} is corrupt or not a plain-tensor checkpoint ({type(e).__name__}): "
                      f"it is not loaded; point ckpt/latest at an older one, or retrain") from None
    if not isinstance(state, dict) or "model" not in state or "config" not in state:
        raise R1Error(f"checkpoint {path} is not an r1.py checkpoint (no model/config)")
    return state


def read_dcp(path: Path) -> dict:
    """A DCP checkpoint folder of scale/ read whole into one process (no process group needed):
    meta.pt (step, stage, configs, one RNG state per rank) plus the model and optimizer tensors."""
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save  # DCP's file reader only

    if not (path / "meta.pt").is_file():
        raise R1Error(f"checkpoint folder {path} has no meta.pt: it was not written by scale/launch.py")
    meta = torch.load(path / "meta.pt", weights_only=True)
    with tempfile.TemporaryDirectory() as tmp:
        dcp_to_torch_save(path, Path(tmp) / "state.pt")
        tensors = torch.load(Path(tmp) / "state.pt", weights_only=True)
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
# Opening a run: new, resumed, or started from another run's model (--init); loading one
# --------------------------------------------------------------------------------------------


def default_run(init, stage: str, run=None) -> str:
    """The --run of a stage that starts from --init: as given, or INIT-stage beside INIT; never INIT."""
    if run is None:
        run = str(Path(init).parent / (Path(init).name + "-" + stage))
    if str(run).strip() and Path(run).resolve() == Path(init).resolve():
        raise R1Error(f"--run must differ from --init: {stage} writes a new run and never overwrites its start point")
    return run


def open_run(path, stage: str, model_cfg: ModelConfig, stage_cfg, device, new, *, resume: bool = False,
             overwrite: bool = False, sources=(), extra: dict | None = None, world: World | None = None):
    """The one way a stage opens its run directory: (run, model, tokenizer, checkpoint state or None).

    A new run (or one killed before its first checkpoint, continued with --resume) starts from
    `new()` -> (model, tokenizer): a model built from scratch, or the --init run's; config.json and
    tokenizer.json are written first. --resume continues from ckpt/latest with the same options
    (check_resume_config). --overwrite empties the folder first, only if r1 made it and it holds
    none of `sources` (prepare_run_dir). `extra` goes into config.json (the preset, the --init run).
    """
    world = world or World()
    run = world.on_main(prepare_run_dir, path, resume=resume, overwrite=overwrite, sources=sources)
    if resume and (run / "config.json").exists():
        world.on_main(check_resume_config, run, model_cfg, stage_cfg, stage)
    if resume and has_checkpoint(run):
        return (run, *world.load_run(run, device))
    model, tok = new()
    world.on_main(save_run_files, run, model.cfg, tok, stage, asdict(stage_cfg), extra)
    return run, model, tok, None


def load_run(run: str | Path, device="cpu") -> tuple[Transformer, Tokenizer, dict]:
    """Model (weights of the newest checkpoint), tokenizer and checkpoint state of a run directory;
    R1Error when anything is missing, corrupt or inconsistent."""
    state = load_checkpoint(run)
    cfg, tok = run_config_and_tokenizer(run, state)
    model = build_model(cfg, device=device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise R1Error(f"the checkpoint's weights do not fit its config ({str(e).splitlines()[0]})") from None
    return model, tok, state


def run_config_and_tokenizer(run: str | Path, state: dict) -> tuple[ModelConfig, Tokenizer]:
    """The model config a checkpoint state names and the run's tokenizer, checked against each other
    and against the run's files: a tokenizer.json or config.json edited after the checkpoint was
    written is an R1Error, never a model that silently reads other tokens."""
    run = Path(run)
    tok_path = run / "tokenizer.json"
    if not tok_path.is_file():
        raise R1Error(f"{run} has no tokenizer.json: the run directory is incomplete")
    if state.get("tokenizer_sha256") != file_sha256(tok_path):
        raise R1Error(f"{tok_path} is not the tokenizer the checkpoint was trained with (it was changed "
                      f"after the checkpoint was written): restore it, or retrain")
    try:
        tok = Tokenizer.load(tok_path)
    except Exception as e:  # the tokenizers library raises its own exception types for bad JSON
        raise R1Error(f"{tok_path} is corrupt ({type(e).__name__}): copy it from a good run") from None
    try:
        cfg = ModelConfig.from_dict(state["config"])
    except (ValueError, TypeError) as e:
        raise R1Error(f"the checkpoint's model config is invalid: {e}") from None
    if cfg.vocab_size != tok.vocab_size:
        raise R1Error(f"config/tokenizer mismatch in {run}: the model has vocab_size {cfg.vocab_size} but "
                      f"tokenizer.json has {tok.vocab_size} tokens; use the tokenizer the run was trained with")
    stored = read_json(run / "config.json").get("model")
    if stored != json.loads(json.dumps(cfg.to_dict())):
        raise R1Error(f"{run / 'config.json'} describes another model than the checkpoint holds (it was edited "
                      f"after the checkpoint was written): restore it, or retrain")
    return cfg, tok


def save_run_files(run: Path, model_cfg: ModelConfig, tok: Tokenizer, stage: str, stage_cfg: dict, extra=None):
    """config.json (resolved configs) and tokenizer.json at the top of a run directory."""
    tok.save(run / "tokenizer.json")
    write_json_atomic(run / "config.json", {"stage": stage, "model": model_cfg.to_dict(), stage: stage_cfg,
                                            **(extra or {})})


def check_resume_config(run: Path, model_cfg: ModelConfig, stage_cfg, stage: str, dry: bool = False):
    """On --resume, the stored configs must equal the ones asked for (`stage_cfg`, a config dataclass):
    otherwise the run would silently continue as something else. A field the stored config lacks (a
    run made before the field existed) counts as its default, the behaviour from before it. One
    difference is allowed, and said: more --steps than the run was started with extends it (config.json
    then records the new number; not with `dry`, which only checks)."""
    stored = read_json(run / "config.json")
    want = json.loads(json.dumps(asdict(stage_cfg)))
    have = stored.get(stage)
    if isinstance(have, dict):
        defaults = {f.name: f.default for f in fields(stage_cfg) if f.default is not MISSING}
        have = json.loads(json.dumps({k: v for k, v in defaults.items() if k not in have})) | have
    if stored.get("model") != model_cfg.to_dict() or not isinstance(have, dict) or \
            {k: v for k, v in have.items() if k != "steps"} != {k: v for k, v in want.items() if k != "steps"}:
        raise R1Error(f"--resume: the options differ from those {run} was started with (see its config.json); "
                      f"resume with the same options or start a new --run")
    if want.get("steps") != have.get("steps") and not (dry and want["steps"] > have["steps"]):
        if want["steps"] < have["steps"]:
            raise R1Error(f"--resume: {run} was started with --steps {have['steps']}; resume with that many, "
                          f"or more to extend it")
        print(f"extending {run} from {have['steps']} to {want['steps']} {stage} steps")
        write_json_atomic(run / "config.json", stored | {stage: want, "extended_from": have["steps"]})


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
        """The rows; a torn last line (a process killed mid-write) is left out, any other bad line is
        an R1Error naming it."""
        if not self.path.exists():
            return []
        try:
            lines = self.path.read_text().splitlines()
        except UnicodeDecodeError:
            raise R1Error(f"{self.path} is not UTF-8 text: the file is damaged") from None
        rows = []
        for n, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                if n == len(lines):
                    break
                raise R1Error(f"{self.path}:{n}: not valid JSON: the file is damaged") from None
            if not isinstance(row, dict):
                raise R1Error(f"{self.path}:{n}: not a JSON object: the file is damaged")
            rows.append(row)
        return rows

    def cut_after(self, step: int) -> None:
        """Keep only the rows of steps <= `step` (a resume from that step's checkpoint re-runs the
        rest, which logs again: one row per step, whatever was killed when)."""
        if self.path.exists():
            rows = [r for r in self.read() if r.get("step", 0) <= step]
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in rows))


def cut_samples_after(path: Path, step: int) -> None:
    """samples.txt without the dumps of steps after `step` (they are written again on resume)."""
    if not path.exists():
        return
    kept = []
    for line in path.read_text(errors="replace").splitlines(keepends=True):
        m = re.fullmatch(r"=== step (\d+)\n?", line)
        if m and int(m[1]) > step:
            break
        kept.append(line)
    write_text_atomic(path, "".join(kept))


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
