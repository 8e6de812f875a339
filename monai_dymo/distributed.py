"""``torch.distributed`` helpers for runs launched with ``torchrun`` (one process per GPU, or several CPU processes).

- :func:`backend_for`: the process-group backend of a device (``nccl`` on GPUs, ``gloo`` on CPU).
- :func:`local_device`: this process's device (``cuda:<LOCAL_RANK>`` when GPUs are available, else CPU).
- :func:`init_distributed`: initialise the default process group from ``torchrun``'s environment if needed.
- :func:`wrap_ddp`: ``DistributedDataParallel`` around a network, on GPU or CPU.
- :func:`unwrap`: the network inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper.
- :func:`all_reduce_`: in-place sum of tensors over all ranks (no-op in a single process).

This module imports neither networks nor data code, so that any layer may use it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist

from monai.utils import optional_import

__all__ = [
    "backend_for",
    "local_device",
    "init_distributed",
    "is_distributed",
    "wrap_ddp",
    "unwrap",
    "all_reduce_",
    "gather_rows",
]


def is_distributed() -> bool:
    """True when a default process group with more than one rank is initialised."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def backend_for(device: torch.device | str) -> str:
    """``"nccl"`` for a CUDA device, ``"gloo"`` otherwise (CPU)."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


def local_device() -> torch.device:
    """``cuda:<LOCAL_RANK>`` when CUDA is available (``LOCAL_RANK`` set by ``torchrun``, default 0), else CPU."""
    if torch.cuda.is_available():
        return torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    return torch.device("cpu")


def init_distributed(device: torch.device | str | None = None) -> torch.device:
    """Initialise the default process group (``env://``: ``torchrun`` sets ``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``
    ...) with the backend of ``device`` unless it already is, select the CUDA device, set up ignite's distributed
    context (``ignite.distributed.sync``, collective) and return ``device``. Call it on every rank, before building
    handlers (e.g. first in a bundle's ``initialize``).

    Args:
        device: this process's device (default :func:`local_device`).
    """
    device = local_device() if device is None else torch.device(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if dist.is_available() and not dist.is_initialized():
        if "WORLD_SIZE" not in os.environ:
            raise RuntimeError(
                "init_distributed: no process group and no WORLD_SIZE in the environment; launch with torchrun "
                "(e.g. `torchrun --standalone --nproc_per_node=2 -m monai.bundle run ...`)."
            )
        dist.init_process_group(backend=backend_for(device))
    idist, has_ignite = optional_import("ignite.distributed")
    if has_ignite and dist.is_initialized():
        # ignite builds its view of the group with collectives at its first use: do it now, on every rank alike,
        # rather than inside a handler that only rank 0 builds (which would deadlock)
        idist.sync()
    return device


def wrap_ddp(
    network: torch.nn.Module, device: torch.device | str, sync_batch_norm: bool = False, **kwargs
) -> torch.nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(network.to(device))``: ``device_ids=[device]`` on a GPU, none on CPU.

    Args:
        network: the network (its parameters must be equal on all ranks, or rank 0's are broadcast).
        device: this process's device.
        sync_batch_norm: convert batch norm layers to ``SyncBatchNorm`` (GPU only: batch statistics over the global
            batch; on CPU each rank normalises with its own batch statistics).
        kwargs: further ``DistributedDataParallel`` arguments.
    """
    device = torch.device(device)
    if sync_batch_norm and device.type == "cuda":
        network = torch.nn.SyncBatchNorm.convert_sync_batchnorm(network)
    network = network.to(device)
    device_ids = [device] if device.type == "cuda" else None
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=device_ids, **kwargs)


def unwrap(network: torch.nn.Module) -> torch.nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (``network`` itself otherwise); for
    attribute access only: training must call the wrapper so that gradients are synchronised."""
    if isinstance(network, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        return network.module
    return network


def all_reduce_(*tensors: torch.Tensor | None) -> None:
    """Sum each tensor in place over all ranks (``None`` entries skipped); nothing happens in a single process."""
    if not is_distributed():
        return
    for t in tensors:
        if t is not None:
            dist.all_reduce(t, op=dist.ReduceOp.SUM)


def gather_rows(rows: list[dict], index_key: str = "index") -> list[dict]:
    """Every rank's rows (dicts carrying ``index_key``), gathered on every rank, sorted by that index, one row per index
    (a padding sampler's repeated samples are dropped); in a single process: ``rows`` sorted the same way."""
    if is_distributed():
        import ignite.distributed as idist

        gathered = idist.all_gather(list(rows))
        rows = [r for part in gathered for r in (part if isinstance(part, list) else [part])]
    unique = {}
    for r in rows:
        unique.setdefault(int(r[index_key]), r)
    return [unique[k] for k in sorted(unique)]
