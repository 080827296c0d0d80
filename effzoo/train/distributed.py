"""torch.distributed for the trainer: torchrun initialisation, DDP / FSDP2 wrapping, rank-aware logging."""
from __future__ import annotations

import gc
import logging
import os
import sys
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

LOG = logging.getLogger("effzoo.train")


@dataclass
class DistInfo:
    """Where this process sits: global rank, local rank on its node, and world size."""

    rank: int = 0
    local_rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def env_info() -> DistInfo:
    """Rank information from the torchrun environment (single process when it is absent)."""
    return DistInfo(int(os.environ.get("RANK", 0)), int(os.environ.get("LOCAL_RANK", 0)),
                    int(os.environ.get("WORLD_SIZE", 1)))


def init_distributed(info: DistInfo, backend: str, device: torch.device) -> None:
    """Join the process group torchrun set up (no-op for one process or when already joined)."""
    if not info.enabled or dist.is_initialized():
        return
    kwargs: dict[str, Any] = {}
    if device.type == "cuda":
        kwargs["device_id"] = device
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size, **kwargs)


def shutdown() -> None:
    """Leave the process group cleanly. DDP/FSDP objects sit in reference cycles, so they are collected
    now, while the group is alive, rather than at interpreter exit after it is gone; the barrier lets every
    rank finish its last collective before any rank tears down its gloo/NCCL threads. Either omission was
    seen as a SIGABRT ("terminate called without an active exception") at exit of 2-process gloo runs."""
    if dist.is_initialized():
        gc.collect()
        dist.barrier()
        dist.destroy_process_group()


def setup_logging(info: DistInfo, quiet: bool = False) -> None:
    """Rank 0 logs at INFO to stdout; other ranks only warnings, prefixed with their rank."""
    LOG.handlers.clear()
    handler = logging.StreamHandler(sys.stdout if info.is_main else sys.stderr)
    prefix = "" if info.is_main else f"[rank {info.rank}] "
    handler.setFormatter(logging.Formatter(prefix + "%(message)s"))
    LOG.addHandler(handler)
    LOG.setLevel(logging.WARNING if (quiet or not info.is_main) else logging.INFO)
    LOG.propagate = False


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """Data-parallel replica with gradient all-reduce overlapped with backward."""
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type in ("cuda", "npu") else None
    return DistributedDataParallel(model, device_ids=ids, gradient_as_bucket_view=True)


def wrap_fsdp(model: nn.Module, mp_dtype: torch.dtype | None) -> nn.Module:
    """FSDP2: shard every block, then the root (embedding, final norm, head). Parameters stay fp32;
    with ``mp_dtype`` the gathered parameters are cast for compute and gradients reduced in fp32."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    policy = MixedPrecisionPolicy(param_dtype=mp_dtype, reduce_dtype=torch.float32) if mp_dtype else MixedPrecisionPolicy()
    for block in model.blocks:
        fully_shard(block, mp_policy=policy)
    fully_shard(model, mp_policy=policy)
    return model


def all_reduce_mean(tensor: torch.Tensor, info: DistInfo) -> torch.Tensor:
    """Average ``tensor`` over ranks in place (no-op for one process)."""
    if info.enabled:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        tensor /= info.world_size
    return tensor


def gather_objects(obj: Any, info: DistInfo) -> list[Any]:
    """Every rank's ``obj`` in rank order (a one-element list for one process)."""
    if not info.enabled:
        return [obj]
    out: list[Any] = [None] * info.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(info: DistInfo) -> None:
    if info.enabled:
        dist.barrier()
