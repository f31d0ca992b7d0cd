"""Several processes on torch.distributed, as ``torchrun`` launches them.

``torchrun --nproc_per_node N train.py ...`` (or ``test.py``) starts N copies of the script with
``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and the rendezvous address in the environment.
:func:`setup` joins them into one process group: NCCL when the processes run on GPUs (process
``LOCAL_RANK`` takes GPU ``LOCAL_RANK`` of the node), gloo on the CPU. Without torchrun, or with
one process, nothing is initialised and every helper here is the single-process identity, so
the engine has one code path.

Besides the group of the computation, a gloo group carries what the evaluation gathers on the
CPU (maps, masks, per-image scores), so rank 0 receives them straight into its buffers.
Only rank 0 logs at INFO level, shows progress bars and writes files.
"""
from __future__ import annotations

import contextlib
import datetime
import logging
import os
from dataclasses import dataclass
from typing import Any, Iterator, List, Optional, Sequence

import torch
import torch.distributed as dist

from utils.errors import UserError

log = logging.getLogger("zsad.distributed")

# A rank that waits longer than this for the others fails (a crashed peer ends torchrun sooner).
TIMEOUT = datetime.timedelta(minutes=60)


@dataclass(frozen=True)
class Context:
    """This process's place among the processes of one run (rank 0 of 1 without torchrun)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: Optional[str] = None
    cpu_group: Any = None  # the gloo group for CPU tensors and objects

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def shard(self, count: int, unit: int = 1) -> range:
        """This rank's contiguous part of ``count`` items in whole blocks of ``unit`` (see :func:`shard`)."""
        return shard(count, self.rank, self.world_size, unit)


SINGLE = Context()  # one process, no torchrun (the scripts pass the context of setup() along)


def shard(count: int, rank: int, world_size: int, unit: int = 1) -> range:
    """Rank ``rank``'s part of ``count`` items cut into blocks of ``unit`` (the last may be
    short): blocks ``[B·rank/W, B·(rank+1)/W)`` of the ``B`` blocks, contiguous, in rank order,
    balanced by blocks.

    The evaluation's blocks are its batches: every rank then scores exactly the batches one
    process would, and a batch's results do not change with the process that computes them
    (a CPU matrix product's rounding can depend on how many rows it is given).
    """
    blocks = -(-count // unit)
    first, stop = blocks * rank // world_size, blocks * (rank + 1) // world_size
    return range(min(first * unit, count), min(stop * unit, count))


def launched_processes() -> int:
    """The number of processes torchrun started for this run (1 without torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def launched() -> bool:
    """True inside a torchrun launch of more than one process."""
    return launched_processes() > 1


def setup(device_flag: str) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes and return (context, this process's device).

    ``device_flag`` is ``--device``: ``auto`` and ``cuda`` give each process the GPU of its
    local rank (choose the GPUs with ``CUDA_VISIBLE_DEVICES``), ``cpu`` runs every process on
    the CPU with gloo. Without torchrun the flag resolves as in a single-process run.
    """
    from engine.cli import resolve_device

    if not launched():
        return SINGLE, resolve_device(device_flag)
    rank, world, local = (int(os.environ[k]) for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"))
    if device_flag not in ("auto", "cpu", "cuda") and not device_flag.startswith("cuda"):
        resolve_device(device_flag)  # its own error for a malformed name
    use_cuda = device_flag != "cpu" and torch.cuda.is_available()
    if device_flag.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"--device {device_flag}: no CUDA GPU is available here; use --device cpu")
    if use_cuda:
        if local >= torch.cuda.device_count():
            raise UserError(f"torchrun started {local + 1} or more processes on this node but only "
                            f"{torch.cuda.device_count()} GPU(s) are visible: lower --nproc_per_node")
        if device_flag.startswith("cuda:"):
            log.warning("--device %s: under torchrun each process uses the GPU of its local rank "
                        "(cuda:%d here); choose GPUs with CUDA_VISIBLE_DEVICES", device_flag, local)
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    backend = "nccl" if use_cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT, device_id=device if use_cuda else None)
    cpu_group = dist.new_group(backend="gloo", timeout=TIMEOUT) if backend != "gloo" else dist.group.WORLD
    return Context(rank, world, local, backend, cpu_group), device


def shutdown() -> None:
    """Leave the process group (at the end of a run)."""
    if dist.is_initialized():
        dist.destroy_process_group()


@contextlib.contextmanager
def session(device_flag: str) -> Iterator[tuple[Context, torch.device]]:
    """:func:`setup` for the body of a script, :func:`shutdown` after it (also on errors)."""
    ctx, device = setup(device_flag)
    try:
        yield ctx, device
    finally:
        if ctx.enabled:
            shutdown()


def quiet_other_ranks(ctx: Context) -> None:
    """Ranks other than 0 log errors only (rank 0 speaks for the run)."""
    if not ctx.is_main:
        logging.getLogger("zsad").setLevel(logging.ERROR)


# ---------------------------------------------------------------------- collectives
def barrier(ctx: Context) -> None:
    if ctx.enabled:
        dist.barrier(group=ctx.cpu_group)


def broadcast_object(obj: Any, ctx: Context, src: int = 0) -> Any:
    """Rank ``src``'s ``obj`` on every rank (picklable objects)."""
    if not ctx.enabled:
        return obj
    holder = [obj if ctx.rank == src else None]
    dist.broadcast_object_list(holder, src=src, group=ctx.cpu_group)
    return holder[0]


def all_gather_object(obj: Any, ctx: Context) -> List[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not ctx.enabled:
        return [obj]
    out: List[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj, group=ctx.cpu_group)
    return out


def gather_object(obj: Any, ctx: Context) -> Optional[List[Any]]:
    """Every rank's ``obj`` in rank order on rank 0; None elsewhere."""
    if not ctx.enabled:
        return [obj]
    out: Optional[List[Any]] = [None] * ctx.world_size if ctx.is_main else None
    dist.gather_object(obj, out, dst=0, group=ctx.cpu_group)
    return out


def send_to_main(tensors: Sequence[torch.Tensor], ctx: Context) -> None:
    """Send CPU tensors to rank 0, which takes them with :func:`receive_from`."""
    for tensor in tensors:
        if tensor.numel():
            dist.send(_wire(tensor.contiguous()), dst=0, group=ctx.cpu_group)


def receive_from(rank: int, buffers: Sequence[torch.Tensor], ctx: Context) -> None:
    """On rank 0: fill ``buffers`` (contiguous CPU tensors of the sent shapes) from ``rank``."""
    for buffer in buffers:
        if buffer.numel():
            dist.recv(_wire(buffer), src=rank, group=ctx.cpu_group)


def _wire(tensor: torch.Tensor) -> torch.Tensor:
    """gloo has no bool: booleans travel as the bytes they are."""
    return tensor.view(torch.uint8) if tensor.dtype == torch.bool else tensor


def all_reduce_(tensor: torch.Tensor, ctx: Context, op=None) -> torch.Tensor:
    """In-place sum (or ``op``) over the ranks, on the computation's group (NCCL on GPUs)."""
    if ctx.enabled:
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


def differentiable_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over the ranks whose backward sums the gradients back: with
    DistributedDataParallel's gradient mean a loss computed from such totals has the gradient
    of the same loss on the whole global batch."""
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor)
