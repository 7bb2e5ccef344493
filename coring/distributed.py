"""One code path for one process, several GPUs and several nodes (torchrun + DistributedDataParallel).

``init_distributed`` reads torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). With no torchrun
environment, or ``WORLD_SIZE=1``, it creates no process group at all and every helper here is a no-op. On CUDA
each process takes ``cuda:LOCAL_RANK`` and the nccl backend; on CPU the gloo backend (what the tests use).
Only rank 0 logs and writes files (``DistInfo.is_main``).
"""
from __future__ import annotations

import ctypes
import ctypes.util
import datetime
import os
import signal
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from coring.device import resolve_device

_PR_SET_PDEATHSIG = 1

__all__ = ["DistInfo", "die_with_parent", "init_distributed", "wrap_ddp", "unwrap", "all_reduce_sum",
           "all_reduce_min", "broadcast_buffers", "barrier", "cleanup", "is_distributed"]


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: its rank, the world size, its local rank and device."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    is_main: bool

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def is_distributed() -> bool:
    """True when a process group with more than one process is running."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None or value == "":
        return default
    try:
        return int(value)
    except ValueError:
        raise SystemExit(f"error: environment variable {name}={value!r} is not an integer") from None


def die_with_parent(sig: int = signal.SIGTERM) -> bool:
    """Ask the kernel to send ``sig`` to this process when its parent dies (Linux ``PR_SET_PDEATHSIG``).

    torchrun's workers are children of the launcher: if the launcher is killed outright (SIGKILL, OOM killer)
    it cannot stop them, and they would go on writing into the job directory. Returns False where the call is
    not available (not Linux). A parent already gone (re-parented to init) ends this process at once.
    """
    parent = os.getppid()
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        if libc.prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0) != 0:
            return False
    except (OSError, AttributeError):
        return False
    if os.getppid() != parent:  # the parent died before the request took effect
        os.kill(os.getpid(), sig)
    return True


def init_distributed(device_arg: str | torch.device | None = "auto", *, timeout_s: float = 1800.0) -> DistInfo:
    """Set up this process from torchrun's environment and pick its device.

    ``device_arg`` is ``--device`` ('auto', 'cpu', 'cuda', 'cuda:N'). Under torchrun on CUDA the local rank
    chooses the GPU. Calling it again in a process whose group already exists reuses that group.
    """

    rank = _env_int("RANK", 0)
    world_size = _env_int("WORLD_SIZE", 1)
    if "TORCHELASTIC_RUN_ID" in os.environ or "LOCAL_RANK" in os.environ:
        die_with_parent()
    local_rank = _env_int("LOCAL_RANK", 0)
    if world_size < 1 or not 0 <= rank < world_size:
        raise SystemExit(f"error: bad torchrun environment RANK={rank} WORLD_SIZE={world_size}")
    device = resolve_device(str(device_arg) if isinstance(device_arg, torch.device) else device_arg)
    if world_size == 1:
        return DistInfo(0, 1, 0, device, True)
    if device.type == "cuda":
        if local_rank >= torch.cuda.device_count():
            raise SystemExit(f"error: LOCAL_RANK={local_rank} but only {torch.cuda.device_count()} CUDA devices "
                             "are visible; lower --nproc_per_node")
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        kwargs = {"device_id": device} if device.type == "cuda" else {}
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(seconds=timeout_s), **kwargs)
    return DistInfo(dist.get_rank(), dist.get_world_size(), local_rank, device, dist.get_rank() == 0)


def wrap_ddp(model: nn.Module, info: DistInfo, *, find_unused_parameters: bool = False) -> nn.Module:
    """DistributedDataParallel around ``model`` (already on ``info.device``) when distributed, else ``model``."""
    if not info.distributed:
        return model
    device_ids = [info.device.index] if info.device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=device_ids,
                                               find_unused_parameters=find_unused_parameters)


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / DataParallel, else ``model`` itself."""
    while isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return model


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all ranks in place (no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_min(tensor: torch.Tensor) -> torch.Tensor:
    """Element-wise minimum of ``tensor`` over all ranks in place (no-op in a single process); returns it."""
    if is_distributed():
        dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return tensor


def broadcast_buffers(model: nn.Module, src: int = 0) -> None:
    """Copy rank ``src``'s buffers (BatchNorm running statistics) to every rank.

    Each rank's last training forward updates its own BN statistics; evaluating after this makes every shard
    use the statistics that rank 0 saves in the checkpoint.
    """
    if not is_distributed():
        return
    for buf in unwrap(model).buffers():
        dist.broadcast(buf.data, src=src)


def barrier() -> None:
    """Wait for every rank (no-op in a single process)."""
    if not is_distributed():
        return
    if dist.get_backend() == "nccl" and torch.cuda.is_available():
        dist.barrier(device_ids=[torch.cuda.current_device()])
    else:
        dist.barrier()


def cleanup() -> None:
    """Destroy the process group if one exists."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
