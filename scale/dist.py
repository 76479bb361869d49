"""The distributed world: process group, device mesh, FSDP2 sharding and DCP checkpoints.

train.py and train_grpo.py run unchanged on every rank; what they need from the other ranks goes
through `DistWorld`, the multi-process answer to runs.World (all-reduces, the rank's slice of a
batch, checkpoints). model.py never sees any of it. The recipe is torchtitan's:

    init_process_group (NCCL on CUDA, gloo on CPU) -> init_device_mesh (one data-parallel dim)
    -> model built and initialised -> fully_shard(each block), fully_shard(root)
    -> optimizer on the sharded parameters -> DCP checkpoints (get_/set_*_state_dict)

Every parameter, its gradient and its AdamW moments exist only as this rank's 1/world_size shard;
a forward all-gathers one block at a time and a backward reduce-scatters (averages) its gradients.
On CUDA the all-gathered copies are bf16 and the gradient reduction is fp32 (MixedPrecisionPolicy);
the sharded master weights and AdamW states stay fp32. The MoE routing biases are buffers, not
parameters: FSDP leaves them whole on every rank, and the loops keep them equal by updating them
from expert loads summed over all ranks.

Checkpoints are DCP folders (ckpt/step_NNNNNN/, one file per rank plus .metadata, and meta.pt for
the step, configs and every rank's RNG state), resharded on load: a run saved on N ranks resumes on
M, and a single-process r1.py checkpoint (.pt) resumes here too; runs.load_checkpoint reads these
folders back into one process (r1.py eval / sample / grpo --init).
"""

from __future__ import annotations

import os
import shutil
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (StateDictOptions, get_model_state_dict, get_optimizer_state_dict,
                                                     set_model_state_dict, set_optimizer_state_dict)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

from model import Transformer, build_model
from runs import R1Error, World, latest_checkpoint, point_latest, tokenizer_sha256, verify_checksum, write_checksum
from runs import load_run, run_config_and_tokenizer


def env_int(name: str, default: int) -> int:
    return int(os.environ.get(name, default))


def choose_backend(device_name: str, backend: str, local_world_size: int) -> tuple[torch.device, str]:
    """(device type, backend) for --device / --backend, checked before any process group exists:
    every rank reaches the same verdict, so a bad choice stops all of them with one message."""
    if device_name not in ("auto", "cpu", "cuda"):
        raise R1Error(f"--device {device_name!r}: scale/launch.py runs on cuda or cpu")
    if backend not in ("auto", "nccl", "gloo"):
        raise R1Error(f"--backend {backend!r}: choose auto, nccl or gloo")
    cuda = device_name == "cuda" or (device_name == "auto" and backend != "gloo" and torch.cuda.is_available())
    if backend == "nccl" and not cuda:
        raise R1Error("--backend nccl needs CUDA GPUs, and " + ("none is available here" if not torch.cuda.is_available()
                      else "--device cpu was asked for") + ": use --backend gloo (or auto) on CPU")
    if cuda:
        if not torch.cuda.is_available():
            raise R1Error("--device cuda: no CUDA device is available here; use --device cpu (gloo)")
        if local_world_size > torch.cuda.device_count():
            raise R1Error(f"{local_world_size} processes on this node but {torch.cuda.device_count()} GPUs: "
                          f"use --nproc_per_node={torch.cuda.device_count()} or fewer")
        if not dist.is_nccl_available():
            raise R1Error("this torch build has no NCCL: install a CUDA build of torch")
    return torch.device("cuda" if cuda else "cpu"), "nccl" if cuda else (backend if backend != "auto" else "gloo")


def init_world(device_name: str = "auto", backend: str = "auto", *, store=None, rank: int | None = None,
               world_size: int | None = None) -> "DistWorld":
    """Join the process group. Under torchrun everything comes from the environment (RANK,
    WORLD_SIZE, LOCAL_RANK, MASTER_ADDR...); tests pass a store, rank and world_size instead."""
    rank = env_int("RANK", 0) if rank is None else rank
    world_size = env_int("WORLD_SIZE", 1) if world_size is None else world_size
    local_rank = env_int("LOCAL_RANK", rank if store is not None else 0)
    device, backend = choose_backend(device_name, backend, env_int("LOCAL_WORLD_SIZE", world_size))
    if store is None and "MASTER_ADDR" not in os.environ:
        raise R1Error("no process group to join: launch with torchrun (torchrun --standalone --nproc-per-node=N "
                      "-m -- scale.launch ...), or use python r1.py for one process")
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if store is None and "TORCHELASTIC_RESTART_COUNT" in os.environ:
        store = attempt_store(rank, world_size)
    kwargs = {} if store is None else {"store": store, "rank": rank, "world_size": world_size}
    dist.init_process_group(backend, **kwargs)
    mesh = init_device_mesh(device.type, (dist.get_world_size(),), mesh_dim_names=("dp",))
    return DistWorld(device, mesh)


def attempt_store(rank: int, world_size: int):
    """torchrun's key-value store, seen through a prefix of this restart attempt. torchrun keeps one
    store across restarts, so without the prefix a restarted rank can read the address a dead rank
    published before (measured: gloo then connects to a closed port and the restart fails)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True"  # the agent hosts the store
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), world_size,
                          is_master=not agent and rank == 0)
    return dist.PrefixStore(f"r1/attempt_{os.environ['TORCHELASTIC_RESTART_COUNT']}", store)


def parallelize(model: Transformer, mesh, device: torch.device) -> Transformer:
    """FSDP2: each decoder block (and each MTP module's block) is one all-gather unit, then the root
    takes what is left (embedding, head, final norms, MTP projections). The MTP modules themselves
    are not units: Transformer.forward calls their parts directly, never MTP.forward."""
    mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32) if device.type == "cuda" else None
    kwargs = {"mesh": mesh} | ({"mp_policy": mp} if mp is not None else {})
    for block in model.layers:
        fully_shard(block, **kwargs)
    for mtp in model.mtp:
        fully_shard(mtp.block, **kwargs)
    fully_shard(model, **kwargs)
    return model


class DistWorld(World):
    """runs.World on a torch.distributed process group with an FSDP2-sharded model."""

    def __init__(self, device: torch.device, mesh):
        self.device, self.mesh = device, mesh
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self._local: dict[int, Transformer] = {}  # whole-model copies for full_model(), one per model

    # ---- collectives ----
    def all_reduce_sum(self, x: torch.Tensor) -> torch.Tensor:
        y = x.detach().to(self.device, copy=True)  # gloo reduces CPU tensors, NCCL CUDA ones
        dist.all_reduce(y)
        return y.to(x.device)

    def barrier(self):
        dist.barrier()

    def on_main(self, fn, *args, **kwargs):
        box = [None]
        if self.is_main:
            try:
                box[0] = ("ok", fn(*args, **kwargs))
            except R1Error as e:
                box[0] = ("error", str(e))
        dist.broadcast_object_list(box, src=0)
        kind, value = box[0]
        if kind == "error":
            raise R1Error(value)
        return value

    def pick_device(self, name: str) -> torch.device:
        return self.device  # chosen and checked by init_world

    def close(self):
        """Every rank reaches the end before the group goes away (else a rank may die at exit)."""
        dist.barrier()
        dist.destroy_process_group()

    # ---- the model ----
    def build_model(self, cfg, device, seed: int | None) -> Transformer:
        """Each rank builds the whole model from the same seed (meta, to_empty, init_weights), then
        keeps its shards: the weights are those of the one-process run. (init_weights on sharded
        DTensors would draw different numbers than on whole tensors; a model too large for one
        device would be initialised sharded, or loaded from a checkpoint as load_run does.)"""
        return parallelize(build_model(cfg, device=device, seed=seed), self.mesh, device)

    def load_run(self, run: Path, device):
        """(model, tokenizer, state) of a run's newest checkpoint, sharded. A DCP folder is read
        shard by shard into a model built on the meta device; a one-process .pt is read whole, then
        sharded. state["optimizer"] is what load_optimizer needs (a folder, or a full state dict)."""
        path = latest_checkpoint(run)
        if not path.is_dir():
            model, tok, state = load_run(run, "cpu")
            return parallelize(model.to(device), self.mesh, device), tok, state
        verify_checksum(path)
        meta = torch.load(path / "meta.pt", weights_only=True)
        cfg, tok = run_config_and_tokenizer(run, meta)
        with torch.device("meta"):
            model = Transformer(cfg)
        parallelize(model, self.mesh, device)
        model.to_empty(device=device)
        model.init_weights()  # the rope tables (buffers); the loaded weights replace the rest
        sd = get_model_state_dict(model)
        try:
            dcp.load({"model": sd}, checkpoint_id=path)
        except Exception as e:  # DCP wraps shape/key mismatches in its own CheckpointException
            raise R1Error(f"checkpoint {path} does not fit its config ({type(e).__name__}): is it from another run?") from None
        set_model_state_dict(model, sd)
        rng = meta["rng"][self.rank] if len(meta["rng"]) == self.world_size else meta["rng"][0]
        return model, tok, {**meta, "rng": rng, "optimizer": path}

    @contextmanager
    def full_model(self, model: Transformer):
        """A whole copy of the sharded model on every rank (one all-gather of the weights), for the
        forwards a rank runs alone: GRPO rollouts of its own prompts, rank 0's evaluations."""
        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))
        if id(model) not in self._local:
            self._local[id(model)] = build_model(model.cfg, device=self.device, seed=0)
        local = self._local[id(model)]
        local.load_state_dict(full)
        local.train(model.training)
        yield local

    # ---- checkpoints ----
    def save_checkpoint(self, run: Path, step: int, model, opt, meta: dict) -> None:
        """ckpt/step_NNNNNN/ as a DCP folder: each rank writes its shards (written to a .tmp folder,
        renamed, then ckpt/latest replaced, so a crash leaves the previous checkpoint current)."""
        if meta.get("ref") is not None:
            raise R1Error("scale/: a GRPO reference model (--beta > 0) is not supported; use --beta 0")
        ckdir = Path(run) / "ckpt"
        name = f"step_{step:06d}"
        tmp = ckdir / (name + ".tmp")
        if self.is_main:  # deletes below: only step_NNNNNN(.tmp) in the ckpt/ of a run opened by prepare_run_dir
            ckdir.mkdir(exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)  # a half-written folder of a rank killed before
        dist.barrier()
        dcp.save({"model": get_model_state_dict(model), "optimizer": get_optimizer_state_dict(model, opt)},
                 checkpoint_id=tmp)
        rngs = [None] * self.world_size
        dist.all_gather_object(rngs, meta["rng"])
        if self.is_main:
            with open(tmp / "meta.pt", "wb") as f:
                torch.save({**meta, "rng": rngs, "world_size": self.world_size,
                            "tokenizer_sha256": tokenizer_sha256(run)}, f)
                f.flush()
                os.fsync(f.fileno())
            shutil.rmtree(ckdir / name, ignore_errors=True)  # after a restart, the same step again
            os.replace(tmp, ckdir / name)
            write_checksum(ckdir / name)
            point_latest(ckdir, name)
        dist.barrier()

    def load_optimizer(self, model, opt, state: dict) -> None:
        """AdamW state from a DCP folder (loaded into this rank's shards), or from a one-process
        checkpoint's optimizer.state_dict() (keyed by parameter index: matched to names through the
        optimizer's own parameter order, then sharded)."""
        if isinstance(state["optimizer"], Path):
            osd = get_optimizer_state_dict(model, opt)  # the template: this rank's shards
            dcp.load({"optimizer": osd}, checkpoint_id=state["optimizer"])
            set_optimizer_state_dict(model, opt, osd)
            return
        names = {p: n for n, p in model.named_parameters()}
        order = [names[p] for g in opt.param_groups for p in g["params"]]
        sd = state["optimizer"]
        full = {"state": {order[i]: s for i, s in sd["state"].items()},
                "param_groups": [{**g, "params": [order[i] for i in g["params"]]} for g in sd["param_groups"]]}
        set_optimizer_state_dict(model, opt, full, options=StateDictOptions(full_state_dict=True))
