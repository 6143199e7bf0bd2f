"""Data parallel inside one trial: ``train.data_parallel`` processes share every optimizer step.

Sonata trains with batch 24 as 8 GPUs × 3 scenes: each process draws its slice of the global
batch, computes the loss (mean over its own points) and torch DDP averages the gradients. That is
the gradient of the global batch exactly when the slices hold equal point counts; otherwise it is
what Pointcept's DDP computes, which is the point of reproducing it. The trial process is rank 0
(it records to MLflow and reports to Ray); ranks 1..W-1 are spawned children that train the same
model on their slices and record nothing. One GPU per rank (NCCL) or, without GPUs, gloo on CPU.
"""

from __future__ import annotations

import dataclasses
import datetime
import gc
import os
import socket
import sys
from collections.abc import Callable, Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from peftbench.errors import PeftbenchError


@dataclasses.dataclass(frozen=True)
class World:
    """This process's place in a data-parallel trial; ``wrappers``: the DDP models ``wrap`` made,
    whose reducers ``leave`` releases before the process group."""

    rank: int
    size: int
    device: torch.device
    wrappers: list = dataclasses.field(default_factory=list, compare=False, repr=False)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0


def per_rank_batch(global_batch: int, world_size: int) -> int:
    """Scenes each rank takes from a global batch; the global batch must split evenly."""
    if world_size < 1 or global_batch % world_size:
        raise PeftbenchError(f"train.batch_size {global_batch} does not split over train.data_parallel "
                             f"{world_size} processes; make batch_size a multiple of data_parallel (24 = 8 x 3)")
    return global_batch // world_size


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_device(rank: int) -> torch.device:
    """One GPU per rank (Ray makes the trial's GPUs visible as cuda:0..W-1), else the CPU."""
    return torch.device(f"cuda:{rank}") if torch.cuda.is_available() else torch.device("cpu")


def join(rank: int, size: int, port: int, timeout_s: float = 1800.0) -> World:
    """Join the trial's process group on 127.0.0.1:``port`` (the ranks of a trial share one host)."""
    device = rank_device(rank)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"tcp://127.0.0.1:{port}",
                            rank=rank, world_size=size, timeout=datetime.timedelta(seconds=timeout_s))
    return World(rank, size, device)


def leave(world: World | None = None) -> None:
    """Leave the process group, the DDP reducers ``wrap`` made first.

    A reducer freed after its gloo group holds the group's last reference: the group's destructor
    then joins its worker threads with the GIL held, while a worker waits for the GIL to free a
    finished work item (a hung rank, py-spy: ``~Reducer -> ~ProcessGroupGloo -> thread::join``).
    Released first, the group's last reference is Python's, whose destructor lets the GIL go.
    """
    if world is not None:
        for ddp in world.wrappers:
            for name in ("logger", "reducer"):  # the logger keeps the reducer too
                ddp.__dict__.pop(name, None)
        world.wrappers.clear()
    gc.collect()  # a wrapper only a reference cycle keeps would otherwise outlive the group
    if dist.is_initialized():
        dist.destroy_process_group()


def wrap(model: nn.Module, world: World) -> nn.Module:
    """The model as DDP sees it: gradients of every trainable parameter averaged across ranks.

    ``find_unused_parameters``: a method may leave trainable parameters out of a forward (a head
    branch not taken); DDP would otherwise wait for their gradients forever.
    """
    ids = [world.device.index] if world.device.type == "cuda" else None
    ddp = nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=True)
    world.wrappers.append(ddp)
    return ddp


class RankBatchSampler(torch.utils.data.Sampler):
    """Rank ``rank``'s slice of every global batch, the global batches drawn as one process would.

    All ranks draw the same order from equally seeded generators, so they agree without talking;
    rank r takes scenes ``[r*b, (r+1)*b)`` of each global batch of ``W*b`` (an incomplete last
    global batch is dropped, as in training).
    """

    def __init__(self, sampler: torch.utils.data.Sampler, global_batch: int, world: World) -> None:
        self.batches = torch.utils.data.BatchSampler(sampler, global_batch, drop_last=True)
        self.local, self.rank = per_rank_batch(global_batch, world.size), world.rank

    def __iter__(self) -> Iterator[list[int]]:
        for chunk in self.batches:
            yield chunk[self.rank * self.local:(self.rank + 1) * self.local]

    def __len__(self) -> int:
        return len(self.batches)


def shard(loader: torch.utils.data.DataLoader, world: World) -> torch.utils.data.DataLoader:
    """This rank's slice of every batch of ``loader`` (a shuffling, drop-last loader of global batches).

    Same sampler, generator and collate as ``loader``: the loader draws its base seed, then the
    sampler its order, so each rank sees the global batches one process would draw.
    """
    sampler = RankBatchSampler(loader.batch_sampler.sampler, loader.batch_size, world)
    return torch.utils.data.DataLoader(loader.dataset, batch_sampler=sampler, num_workers=loader.num_workers,
                                       collate_fn=loader.collate_fn, generator=loader.generator)


def spawn_followers(target: Callable[..., None], size: int, port: int, *args: Any) -> Any:
    """Start ranks 1..size-1 as processes running ``target(rank, size, port, *args)``; the caller is rank 0.

    Returns the process context; ``wait_followers`` joins it and raises if a follower failed.
    """
    import torch.multiprocessing as mp

    # spawn (not fork): CUDA and Ray's threads do not survive a fork.
    return mp.start_processes(_follower, args=(target, size, port, args), nprocs=size - 1, join=False,
                              start_method="spawn")


def _follower(index: int, target: Callable[..., None], size: int, port: int, args: tuple) -> None:
    os.environ.setdefault("OMP_NUM_THREADS", str(torch.get_num_threads()))
    target(index + 1, size, port, *args)
    # Done: exit now, status 0. The interpreter's teardown of gloo's threads can abort (seen:
    # "terminate called without an active exception") and a follower keeps nothing to tear down.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def wait_followers(context: Any) -> None:
    """Join the followers; a follower's error is raised here with its traceback."""
    while not context.join():
        pass


def stop_followers(context: Any) -> None:
    """Terminate followers still running (rank 0 failed: they would block until the group times out)."""
    for process in context.processes:
        if process.is_alive():
            process.terminate()
    for process in context.processes:
        process.join(timeout=10)
