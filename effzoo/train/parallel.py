"""``parallelize``: the one place that decides how a built model runs on the devices -- activation
checkpointing, per-block ``torch.compile``, then FSDP2 sharding or DDP replication (torchtitan's
``parallelize_fn`` in spirit)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .distributed import DistInfo, wrap_ddp, wrap_fsdp

LOG = logging.getLogger("effzoo.train")


@dataclass
class Parallelized:
    """The model to train and how it is wrapped (the train step needs to know for gradient sync)."""

    model: nn.Module
    ddp: bool = False
    fsdp: bool = False
    compiled: bool = False


def parallelize(model: nn.Module, info: DistInfo, device: torch.device, *, compile: bool = False,
                fsdp: bool = False, activation_checkpointing: bool = False,
                mp_dtype: torch.dtype | None = None) -> Parallelized:
    """Apply the parallel plan to a freshly built model, in this order: activation checkpointing, compile
    each block (so FSDP's per-block hooks stay outside the compiled graphs), shard every block and the
    root with FSDP2 (``mp_dtype``: the compute dtype of gathered parameters) or replicate with DDP."""
    model.gradient_checkpointing = activation_checkpointing
    if compile:
        for block in model.blocks:
            block.compile()
    if info.enabled and fsdp:
        return Parallelized(wrap_fsdp(model, mp_dtype if mp_dtype != torch.float32 else None), fsdp=True,
                            compiled=compile)
    if fsdp:
        LOG.warning("--fsdp with a single process: nothing to shard, training unsharded")
    if info.enabled:
        return Parallelized(wrap_ddp(model, device), ddp=True, compiled=compile)
    return Parallelized(model, compiled=compile)
