"""Tensor-parallel styles a component names in ``Component.tensor_parallel_plan`` (``effzoo.plugin.tensor_parallel``).

A plan maps child names to ``torch.distributed.tensor.parallel`` styles, as ``parallelize_module`` takes
them: :func:`colwise` splits a linear layer's outputs (its local output is this rank's slice), :func:`rowwise`
splits its inputs and all-reduces the output. :class:`FusedColwiseParallel` is the column split of a fused
projection (q|k|v, gate|up): each segment is split on its own, so every rank holds a slice of each segment
(its own q, k and v heads) instead of a contiguous slab that would mix q and k heads.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, RowwiseParallel

from .errors import ConfigError

ROW_ORDER = "tp_row_order"  # attribute a fused parameter carries: the global row order its shards follow


def colwise() -> ColwiseParallel:
    """Split a linear layer's output features; replicated input, this rank's output slice."""
    return ColwiseParallel()


def rowwise() -> RowwiseParallel:
    """Split a linear layer's input features (the output of a column split); all-reduced output."""
    return RowwiseParallel()


def check_divides(component: str, tp_size: int, **counts: int) -> None:
    """ConfigError naming ``component`` unless ``tp_size`` divides every count (heads, channels, ...)."""
    for name, count in counts.items():
        if count % tp_size:
            raise ConfigError(f"--tp {tp_size} does not divide {component}'s {name}={count}; "
                              f"choose a tensor-parallel degree that divides it")


def fused_row_order(segments: tuple[int, ...], tp_size: int) -> torch.Tensor:
    """Global row order of a fused projection under TP: rank 0's slice of every segment, then rank 1's, ..."""
    starts = [sum(segments[:i]) for i in range(len(segments))]
    order = [torch.arange(start + rank * size // tp_size, start + (rank + 1) * size // tp_size)
             for rank in range(tp_size) for start, size in zip(starts, segments)]
    return torch.cat(order)


class FusedColwiseParallel(ColwiseParallel):
    """Column split of a fused linear layer whose output rows are ``segments`` (e.g. q, k, v widths).

    The parameters become DTensors sharded on dim 0 of the rows in :func:`fused_row_order`; the order is
    kept on each parameter (``tp_row_order``) so checkpoints store the rows in their natural order.
    Every rank must hold the same full weights when the plan is applied (the same seed builds them)."""

    def __init__(self, segments: tuple[int, ...]) -> None:
        super().__init__()
        self.segments = tuple(int(s) for s in segments)

    def _partition_linear_fn(self, name: str, module: nn.Module, device_mesh: DeviceMesh) -> None:
        tp_size, rank = device_mesh.size(), device_mesh.get_local_rank()
        order = fused_row_order(self.segments, tp_size)
        rows = order.numel() // tp_size
        mine = order[rank * rows:(rank + 1) * rows].to(next(module.parameters()).device)
        for param_name, param in list(module.named_parameters(recurse=False)):
            local = param.detach().index_select(0, mine).contiguous()
            dist_param = nn.Parameter(DTensor.from_local(local, device_mesh, [Shard(0)], run_check=False),
                                      requires_grad=param.requires_grad)
            setattr(dist_param, ROW_ORDER, order)
            module.register_parameter(param_name, dist_param)


def natural_rows(value: Any, order: torch.Tensor) -> torch.Tensor:
    """The full tensor of a fused parameter (or its optimizer state) with rows back in natural order."""
    full = value.full_tensor() if isinstance(value, DTensor) else value
    natural = torch.empty_like(full)
    natural[order.to(full.device)] = full
    return natural


def sharded_rows(natural: torch.Tensor, like: DTensor, order: torch.Tensor) -> DTensor:
    """The inverse of :func:`natural_rows`: this rank's shard of ``natural`` as a DTensor shaped like ``like``."""
    mesh = like.device_mesh
    rows = order.numel() // mesh.size()
    rank = mesh.get_local_rank()
    local = natural.to(like.device).index_select(0, order[rank * rows:(rank + 1) * rows].to(like.device))
    return DTensor.from_local(local.to(like.dtype).contiguous(), mesh, like.placements, run_check=False)
