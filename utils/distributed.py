"""The process group of a torchrun job, decided in one place: who this process is, which rows of a global batch it
trains on, and the few collectives the trainer needs (each a no-op in a plain single process).

torchrun sets RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT; without them this is a world of one and
nothing here touches torch.distributed.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from utils.errors import UserError

TIMEOUT = datetime.timedelta(minutes=30)  # a rank waiting this long for the others (rank 0 sampling GIFs) fails


class PeerFailed(RuntimeError):
    """Another rank failed (its own message says why), so this one stops too, quietly."""


@dataclass(frozen=True)
class World:
    """This process's place in the job: rank among world_size, local_rank on its node (its GPU index)."""
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    def shard(self, n: int) -> tuple[int, int]:
        """Rows [start, end) of an n-row global batch that this rank trains on: contiguous, sizes differing by at most
        one, so every row is trained on by exactly one rank (a rank may get none of a short last batch)."""
        return self.rank * n // self.world_size, (self.rank + 1) * n // self.world_size


def launcher_world() -> World:
    """What the launcher's environment says, before any process group exists (a plain run: a world of one)."""
    try:
        return World(int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)),
                     int(os.environ.get("LOCAL_RANK", 0)))
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (start several processes with torchrun)") \
            from None


_joined = False  # this process joined a process group: from then on its errors may be its own


def init_world(device: torch.device) -> World:
    """Join the job's process group (NCCL for CUDA, gloo otherwise) when the launcher started several processes."""
    global _joined
    world = launcher_world()
    if world.distributed and not dist.is_initialized():
        if not dist.is_available():
            raise UserError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if device.type == "cuda" else None)
        _joined = True
    return world


def reports_errors() -> bool:
    """Whether this process prints a one-line error: rank 0 always; another rank once it has joined the group,
    since errors before that (config, arguments) are the same on every rank and rank 0 says them."""
    return _quiet_world().is_main or _joined


def rank_prefix() -> str:
    """"rank N: " in front of a message from a job of several processes."""
    world = _quiet_world()
    return f"rank {world.rank}: " if world.distributed else ""


def _quiet_world() -> World:
    """launcher_world for reporting an error: unreadable variables count as a single process."""
    try:
        return launcher_world()
    except UserError:
        return World()


def close_world() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def exit_process(code: int):
    """End the process with `code`. One that joined a process group skips the interpreter's teardown: gloo's worker
    threads may still hold the last collective's tensors, and freeing them once the interpreter is finalizing aborts
    the process (SIGABRT, "terminate called without an active exception"): CI saw a rank of a finished run end so."""
    if _joined:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


def is_main_process() -> bool:
    """Rank 0 of a torch.distributed job (or of a launcher's RANK variable), or a plain single process."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return launcher_world().is_main


def wrap_ddp(model: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel around the model when there are several ranks (it averages the gradients in
    backward); the model itself otherwise. Buffers are constants here, so they are not re-broadcast every forward."""
    if not world.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None,
                                   broadcast_buffers=False, gradient_as_bucket_view=True)


def all_reduce_sum(t: torch.Tensor, world: World) -> torch.Tensor:
    """The sum over ranks (in place); the tensor itself in a world of one."""
    if world.distributed:
        _collective(dist.all_reduce, t)
    return t


def all_gather(obj, world: World) -> list:
    """Every rank's `obj` (picklable), in rank order."""
    if not world.distributed:
        return [obj]
    out = [None] * world.world_size
    _collective(dist.all_gather_object, out, obj)
    return out


def agree(error: str | None, world: World) -> None:
    """A start-up check every rank passes or all fail: the rank that failed raises its message, the rest stop
    quietly, so a check failing on rank 0 alone (the experiment lock) cannot leave the others waiting."""
    errors = all_gather(error, world)
    if error is not None:
        raise UserError(error)
    failed = [r for r, e in enumerate(errors) if e is not None]
    if failed:
        raise PeerFailed(f"rank {failed[0]} failed")


@contextlib.contextmanager
def main_first(world: World):
    """Rank 0 runs the block first (it decodes clips and writes the caches); the others then run it and read them."""
    if world.distributed and not world.is_main:
        barrier(world)
    yield
    if world.distributed and world.is_main:
        barrier(world)


def barrier(world: World) -> None:
    if world.distributed:
        _collective(dist.barrier)


def _collective(fn, *args):
    """A collective whose peers vanished (a rank died) raises PeerFailed instead of a backend traceback."""
    try:
        return fn(*args)
    except (RuntimeError, dist.DistBackendError) as err:
        raise PeerFailed(f"lost contact with the other ranks ({str(err).splitlines()[0][:160]})") from None
