"""Distributed training (``multi_gpu``, ``num_gpus``, ``sync_bn``, ``find_unused_parameters``) on torch.distributed.

Two ways in:

* ``multi_gpu=DDP num_gpus=N`` on one machine: the runner validates the recipe, writes the resolved recipe into
  the experiment folder, and relaunches itself as N workers through ``torch.distributed.run`` (static
  rendezvous on a free local port) with ``--config-dir <experiment folder> --config-name recipe``, so every rank
  runs exactly the recipe the parent resolved and writes to the one folder it chose;
* started under ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``... in the environment) the runner joins
  the process group instead: the multi-node path.

CUDA uses NCCL with one process per device; ``device: cpu`` uses gloo with N CPU processes. Only rank 0 writes
checkpoints, logs, TensorBoard and progress bars.
"""

from __future__ import annotations

import os
import socket
import sys
from dataclasses import dataclass
from typing import Any

import torch

from super_recipes.errors import RecipeError


@dataclass(frozen=True)
class World:
    """This process's place in the process group (rank 0 of 1 when not distributed)."""

    rank: int = 0
    local_rank: int = 0
    size: int = 1

    @property
    def is_distributed(self) -> bool:
        return self.size > 1

    @property
    def is_rank_zero(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    """True inside a worker started by torchrun / torch.distributed.run."""
    return all(key in os.environ for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"))


def current_world() -> World:
    """The process group this process belongs to (initialised by :func:`join_process_group`)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), int(os.environ.get("LOCAL_RANK", 0)), dist.get_world_size())
    return World()


def join_process_group(device: torch.device) -> torch.device:
    """Join the group described by torchrun's environment; returns this rank's device."""
    import torch.distributed as dist

    local_rank = int(os.environ["LOCAL_RANK"])
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return device


def leave_process_group(success: bool) -> None:
    """Wait for every rank (after a successful run), then tear the group down before the interpreter exits.

    Exiting with a live gloo/NCCL group lets its threads be destroyed mid-flight (``terminate called without an
    active exception``), which the launcher reports as a crashed worker.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        if success:
            dist.barrier()
        dist.destroy_process_group()


def requested_processes(cfg: Any) -> int:
    """How many processes ``multi_gpu`` / ``num_gpus`` / ``device`` ask for on this machine (1: no DDP)."""
    multi_gpu, num_gpus = str(cfg.get("multi_gpu", "Off")), int(cfg.get("num_gpus", 1))
    device = str(cfg.get("device") or "auto")
    on_cpu = device == "cpu" or (device == "auto" and not torch.cuda.is_available())
    available = (os.cpu_count() or 1) if on_cpu else torch.cuda.device_count()
    if num_gpus == -1:
        num_gpus = available
    if num_gpus < 1:
        raise RecipeError(f"num_gpus must be -1 (all devices) or >= 1, got {num_gpus}.")
    if multi_gpu == "Off":
        if num_gpus > 1:
            raise RecipeError(f"num_gpus={num_gpus} with multi_gpu=Off: set multi_gpu=DDP to train on several "
                              "devices.")
        return 1
    if multi_gpu == "AUTO" and available <= 1:
        return 1
    if not on_cpu and num_gpus > available:
        raise RecipeError(f"num_gpus={num_gpus} but this machine has {available} CUDA device(s).")
    return num_gpus


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now (for the static rendezvous)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def launch_workers(num_processes: int, recipe_dir: str, recipe_name: str) -> int:
    """Run the recipe in ``recipe_dir`` as ``num_processes`` workers; returns the exit status for the parent.

    A worker that fails makes torch's launcher stop all the others; the failing rank's own error was already
    printed by that worker, and we add which rank it was.
    """
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.run import get_args_parser, run

    # torchrun would set 1 thread per worker and print a warning; share this machine's cores instead.
    os.environ.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // num_processes)))
    args = get_args_parser().parse_args([
        "--nnodes=1", f"--nproc-per-node={num_processes}", "--rdzv-backend=static", "--node-rank=0",
        "--master-addr=127.0.0.1", f"--master-port={free_port()}", "--max-restarts=0", "--monitor-interval=0.2",
        "-m", "super_recipes.train_from_recipe", "--config-dir", recipe_dir, f"--config-name={recipe_name}",
    ])
    try:
        run(args)
    except ChildFailedError as err:
        failed = ", ".join(f"rank {rank} (exit code {failure.exitcode})"
                           for rank, failure in sorted(err.failures.items()))
        print(f"Error: distributed training failed: {failed}; all workers were stopped. "
              "The failing rank's error is printed above.", file=sys.stderr)
        return 1
    return 0


def all_reduce_mean(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Average ``tensor`` over the ranks (no-op in a single process)."""
    if not world.is_distributed:
        return tensor
    import torch.distributed as dist

    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor / world.size


def all_reduce_sum(tensor: torch.Tensor, world: World) -> torch.Tensor:
    """Sum ``tensor`` over the ranks (no-op in a single process)."""
    if not world.is_distributed:
        return tensor
    import torch.distributed as dist

    tensor = tensor.clone()
    dist.all_reduce(tensor)
    return tensor


def gather_to_all(obj: Any, world: World) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank (``[obj]`` in a single process)."""
    if not world.is_distributed:
        return [obj]
    import torch.distributed as dist

    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, obj)
    return gathered


def any_rank(flag: bool, world: World, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank (so every rank takes the same decision)."""
    if not world.is_distributed:
        return flag
    value = all_reduce_sum(torch.tensor([float(flag)], device=device), world)
    return bool(value.item() > 0)


def broadcast_buffers(module: torch.nn.Module, world: World) -> None:
    """Give every rank rank 0's buffers (BatchNorm statistics) before validation.

    DDP broadcasts buffers at the start of each training forward, so after an epoch's last step every rank holds
    the statistics of its own last batch; validating with them would score each shard with a different model.
    """
    if not world.is_distributed:
        return
    import torch.distributed as dist

    for buffer in module.buffers():
        dist.broadcast(buffer.data, src=0)


def wrap_model(net: torch.nn.Module, world: World, device: torch.device, sync_bn: bool,
               find_unused_parameters: bool) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``net`` (SyncBatchNorm first when ``sync_bn``); ``net`` itself when alone.

    The plain module stays the one whose state dict is saved, so checkpoints never carry a ``module.`` prefix.
    """
    if not world.is_distributed:
        return net
    from torch.nn.parallel import DistributedDataParallel

    if sync_bn:
        # convert_sync_batchnorm returns a new root only when the root itself is a BatchNorm.
        converted = torch.nn.SyncBatchNorm.convert_sync_batchnorm(net)
        if converted is not net:
            raise RecipeError("sync_bn: the model's root module is a BatchNorm layer; wrap it in a module.")
    device_ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused_parameters)
