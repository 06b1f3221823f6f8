"""Several processes training one model (PyTorch DDP under ``torchrun``): this process's place among them, joining and leaving the process group, and an objective with gradients averaged over them.

One process is rank 0 of 1 (:data:`SINGLE`) and needs none of this.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass
from typing import Iterator, NoReturn

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from camlab.methods import Objective, Step
from camlab.utils import resolve_device


# ------------------------------------------------------------------------ processes (DDP)
@dataclass(frozen=True)
class World:
    """This process's place among those ``torchrun`` started (one process: rank 0 of 1)."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        """Only the main process writes checkpoints, logs, figures and reports."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()


SINGLE = World()


def current_world() -> World:
    if dist.is_available() and dist.is_initialized():
        return World(dist.get_rank(), dist.get_world_size())
    return SINGLE


DIST_TIMEOUT = datetime.timedelta(hours=24)


@contextlib.contextmanager
def distributed(device: str) -> Iterator[World]:
    """Under ``torchrun`` (``WORLD_SIZE`` > 1), join the process group for the run: NCCL with
    one GPU per process (``LOCAL_RANK``), gloo on CPUs. Otherwise a single process."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        yield SINGLE
        return
    use_cuda = resolve_device(device).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # generous: with --cv a process may wait a whole fold for the others before the gather
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=DIST_TIMEOUT)
    try:
        yield current_world()
        leave_together()
    finally:
        dist.destroy_process_group()


def leave_together() -> None:
    """Every process waits here for the others before the process group goes, so that none
    leaves while another still needs it (rank 0 writes the outputs after the others finish)."""
    if dist.get_backend() == "nccl":
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def exit_process(code: int) -> NoReturn:
    """End a torchrun worker process: flush, then ``os._exit(code)`` without finalising the
    interpreter.

    Measured (gdb on the aborting rank, README "torchrun"): gloo keeps its worker threads
    running after ``destroy_process_group`` (torch 2.14 joins them only when the process group
    object is freed). A thread still releasing a finished collective's tensors when the
    interpreter finalises needs the GIL, the finalising interpreter ends the thread with
    pthread_exit, and the unwind through a noexcept destructor aborts the process ("terminate
    called without an active exception": 4 runs in 10 of the two-process test on a busy CPU;
    a barrier alone still left 1 in 30). Every output is written atomically and closed before
    this point, so skipping finalisation loses nothing.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


class ObjectiveModule(nn.Module):
    """The model and an objective as one module, so that DistributedDataParallel sees a whole
    training step as one forward call (objectives read the model's parts, not only forward)."""

    def __init__(self, model: nn.Module, objective: Objective) -> None:
        super().__init__()
        self.model, self.objective = model, objective

    def forward(self, images: torch.Tensor, labels: torch.Tensor, generator: torch.Generator,
                epoch: int) -> Step:
        return self.objective(self.model, images, labels, generator, epoch)


def data_parallel(objective: Objective, model: nn.Module, world: World) -> Objective:
    """``objective`` with gradients averaged over the processes of ``world`` (DDP)."""
    if world.size == 1:
        return objective
    device = next(model.parameters()).device
    ddp = DistributedDataParallel(ObjectiveModule(model, objective),
                                  device_ids=[device.index] if device.type == "cuda" else None)
    return lambda _model, images, labels, generator, epoch: ddp(images, labels, generator, epoch)


def gather_folds(folds: list[dict], world: World) -> list[dict]:
    """Every process's fold results, in fold order."""
    if world.size == 1:
        return folds
    everyone: list = [None] * world.size
    dist.all_gather_object(everyone, folds)
    return sorted((f for part in everyone for f in part), key=lambda f: f["fold"])
