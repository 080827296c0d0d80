"""Tensor-parallel styles a component names in ``Component.tensor_parallel_plan`` (``effzoo.plugin.tensor_parallel``).

A plan maps child names to ``torch.distributed.tensor.parallel`` styles, as ``parallelize_module`` takes
them: :func:`colwise` splits a linear layer's outputs (its local output is this rank's slice), :func:`rowwise`
splits its inputs and all-reduces the output. :class:`FusedColwiseParallel` is the column split of a fused
projection (q|k|v, gate|up): each segment is split on its own, so every rank holds a slice of each segment
(its own q, k and v heads) instead of a contiguous slab that would mix q and k heads.
:class:`ExpertParallel` shards MoE experts over the group; :func:`expert_parallel` dispatches tokens to
them with all-to-alls (``torch.distributed`` functional collectives).

A component's forward reads what a plan sharded with :func:`local`, and meets the group where its own
code (not a linear layer) crosses it: :func:`column_matmul` (``x @ w`` with ``w``'s columns split),
:func:`sum_gradients` (a whole tensor used only with this rank's shard: its gradient is summed),
:func:`gather_columns` (this rank's columns -> all of them, for key/value heads fewer than the ranks).
:class:`ShardedRows` / :class:`ShardedColumns` split a component's own parameters; :class:`SummedGradients`
keeps a module's parameters whole and sums their gradients over the group.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed._functional_collectives as funcol
from torch import Tensor, nn
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
from torch.distributed.tensor.parallel import ColwiseParallel, ParallelStyle, RowwiseParallel

from .errors import ConfigError

ROW_ORDER = "tp_row_order"  # attribute a fused parameter carries: the global row order its shards follow


def colwise() -> ColwiseParallel:
    """Split a linear layer's output features; replicated input, this rank's output slice."""
    return ColwiseParallel()


def rowwise() -> RowwiseParallel:
    """Split a linear layer's input features (the output of a column split); all-reduced output."""
    return RowwiseParallel()


def check_divides(component: str, tp_size: int, settable: tuple[str, ...] = (), **counts: int) -> None:
    """ConfigError naming ``component`` unless ``tp_size`` divides every count (heads, channels, ...).
    For a count named in ``settable`` (a config key) the message also says which ``--set`` would do."""
    for name, count in counts.items():
        if count % tp_size:
            advice = f", or --set {name}={-(-count // tp_size) * tp_size}" if name in settable else ""
            raise ConfigError(f"--tp {tp_size} does not divide {component}'s {name}={count}; "
                              f"choose a tensor-parallel degree that divides it{advice}")


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


# -- expert parallel: MoE experts sharded over the tensor-parallel group -----------------------
class ExpertParallel(ParallelStyle):
    """Shard a stacked-experts module's parameters (experts on dim 0) over the group: each rank keeps
    ``n_experts / tp`` whole experts. The module's ``ep_mesh`` is set, so its MoE layer dispatches tokens
    with :func:`expert_parallel` instead of running every expert itself."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        tp_size, rank = device_mesh.size(), device_mesh.get_local_rank()
        for name, param in list(module.named_parameters(recurse=False)):
            per_rank = param.shape[0] // tp_size
            local = param.detach()[rank * per_rank:(rank + 1) * per_rank].contiguous()
            module.register_parameter(name, nn.Parameter(DTensor.from_local(local, device_mesh, [Shard(0)],
                                                                            run_check=False),
                                                         requires_grad=param.requires_grad))
        module.ep_mesh = device_mesh
        return module


# all_gather_tensor's newer name in recent torch (same signature); the old one where it is missing
_all_gather = getattr(funcol, "all_gather_single", None) or funcol.all_gather_tensor


class _ScatterToSlice(torch.autograd.Function):
    """Forward: this rank's rows of a tensor every rank holds whole. Backward: all-gather the rows'
    gradients, so the whole tensor's gradient is complete (and equal) on every rank."""

    @staticmethod
    def forward(ctx: Any, whole: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        size, rank = dist.get_world_size(group), dist.get_rank(group)
        rows = whole.shape[0] // size
        return whole[rank * rows:(rank + 1) * rows]

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        return _all_gather(grad.contiguous(), 0, ctx.group).wait(), None


class _GatherFromSlice(torch.autograd.Function):
    """Forward: all-gather every rank's rows into the whole tensor. Backward: this rank's rows of the
    gradient, which is the same on every rank (the residual stream is replicated)."""

    @staticmethod
    def forward(ctx: Any, part: Tensor, group: Any) -> Tensor:  # type: ignore[override]
        ctx.group = group
        return _all_gather(part.contiguous(), 0, group).wait()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:  # type: ignore[override]
        size, rank = dist.get_world_size(ctx.group), dist.get_rank(ctx.group)
        rows = grad.shape[0] // size
        return grad[rank * rows:(rank + 1) * rows], None


def expert_parallel(tokens: Tensor, weights: Tensor, experts: Tensor, n_experts: int, mesh: DeviceMesh,
                    run_local: Callable[[Tensor, Tensor], Tensor]) -> Tensor:
    """Σ_k weight · expert_k(token) with the experts spread over ``mesh`` (expert parallel).

    Every rank of the group holds all N tokens and their routing (``weights``/``experts``, (N, k)); each
    takes its N / size tokens, sends every (token, expert) assignment to the rank owning the expert with an
    all-to-all (``all_to_all_single_autograd``), ``run_local(rows, local_expert_ids)`` computes them there,
    a second all-to-all brings the outputs back, and an all-gather makes the result whole again."""
    group = mesh.get_group()
    size = dist.get_world_size(group)
    if tokens.shape[0] % size:
        raise ConfigError(f"expert parallel over {size} ranks needs a token count divisible by {size} "
                          f"(micro-batch x seq-len = {tokens.shape[0]})")
    per_rank = n_experts // size
    mine = _ScatterToSlice.apply(tokens, group)
    slot_weights = _ScatterToSlice.apply(weights, group)
    rows = mine.shape[0]
    slot_experts = experts[dist.get_rank(group) * rows:(dist.get_rank(group) + 1) * rows]
    flat_experts = slot_experts.reshape(-1)
    top_k = slot_experts.shape[1]
    order = torch.argsort(flat_experts // per_rank, stable=True)
    send_counts = torch.bincount(flat_experts // per_rank, minlength=size)
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()  # the split sizes must be host integers
    outgoing = mine.repeat_interleave(top_k, dim=0)[order]
    incoming = funcol.all_to_all_single_autograd(outgoing, recv, send, group)
    incoming_experts = funcol.all_to_all_single(flat_experts[order].contiguous(), recv, send, group).wait()
    # a rank that receives no rows still joins the backward all-to-all: keep its outputs in the graph
    outputs = run_local(incoming, incoming_experts % per_rank) if incoming.shape[0] else incoming * 0
    returned = funcol.all_to_all_single_autograd(outputs, send, recv, group)
    per_slot = torch.empty_like(returned)
    per_slot[order] = returned
    combined = (per_slot.view(rows, top_k, -1) * slot_weights.to(per_slot.dtype).unsqueeze(-1)).sum(dim=1)
    return _GatherFromSlice.apply(combined, group)


def local(tensor: Tensor) -> Tensor:
    """This rank's values of a parameter a plan sharded (a DTensor), or the tensor itself."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


class ShardedRows(ParallelStyle):
    """Shard a module's own parameters (not a linear layer's) by rows, each split per segment like
    :class:`FusedColwiseParallel`: ``{"conv_bias": (x_width, b_width, c_width)}``. No input or output
    handling: the module's forward reads them with :func:`local` on its rank's channel slice. Name it
    with the key ``""`` in a plan (the component itself)."""

    def __init__(self, segments: dict[str, tuple[int, ...]]) -> None:
        super().__init__()
        self.segments = {name: tuple(int(s) for s in sizes) for name, sizes in segments.items()}

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        tp_size, rank = device_mesh.size(), device_mesh.get_local_rank()
        for name, sizes in self.segments.items():
            param = getattr(module, name)
            order = fused_row_order(sizes, tp_size)
            rows = order.numel() // tp_size
            local_rows = param.detach().index_select(0, order[rank * rows:(rank + 1) * rows].to(param.device))
            sharded = nn.Parameter(DTensor.from_local(local_rows.contiguous(), device_mesh, [Shard(0)], run_check=False),
                                   requires_grad=param.requires_grad)
            setattr(sharded, ROW_ORDER, order)
            module.register_parameter(name, sharded)
        return module


class ShardedColumns(ParallelStyle):
    """Shard a module's own 2-d parameters by columns (``Shard(1)``): ``ShardedColumns(("decay_up",))``
    for a low-rank ``x @ down @ up`` whose ``up`` produces this rank's channels. The forward multiplies
    with :func:`column_matmul`. Name it under the key ``""``, alone or in a tuple with :class:`ShardedRows`."""

    def __init__(self, names: tuple[str, ...]) -> None:
        super().__init__()
        self.names = tuple(names)

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        tp_size, rank = device_mesh.size(), device_mesh.get_local_rank()
        for name in self.names:
            param = getattr(module, name)
            width = param.shape[1] // tp_size
            local_columns = param.detach()[:, rank * width:(rank + 1) * width].contiguous()
            module.register_parameter(name, nn.Parameter(
                DTensor.from_local(local_columns, device_mesh, [Shard(1)], run_check=False),
                requires_grad=param.requires_grad))
        return module


class SummedGradients(ParallelStyle):
    """Keep a module's parameters whole on every rank and sum their gradients over the group: for a
    module applied to this rank's shard of the activations only (NSA's block compressor, shared by the
    key/value heads the ranks split), whose gradient is then each rank's part of the whole."""

    def _apply(self, module: nn.Module, device_mesh: DeviceMesh) -> nn.Module:
        group = device_mesh.get_group()
        for param in module.parameters():
            if param.requires_grad:
                param.register_hook(lambda grad: funcol.all_reduce(grad, "sum", group).wait())
        return module


def column_matmul(x: Tensor, weight: Tensor) -> Tensor:
    """``x @ weight``; with ``weight`` split by :class:`ShardedColumns`, ``x`` (whole on every rank) times
    this rank's columns, and ``x``'s gradient summed over the group (as ``ColwiseParallel`` does)."""
    if not isinstance(weight, DTensor):
        return x @ weight
    whole = DTensor.from_local(x, weight.device_mesh, [Replicate()], run_check=False)
    return (whole @ weight).to_local()


def sum_gradients(x: Tensor, mesh: DeviceMesh) -> Tensor:
    """``x`` unchanged (it is the same on every rank); its gradient is summed over ``mesh``: for a
    tensor each rank uses with its own shard only (Mamba-1's B and C read by this rank's channels)."""
    return DTensor.from_local(x, mesh, [Replicate()], run_check=False).to_local(grad_placements=[Partial()])


def gather_columns(x: Tensor, mesh: DeviceMesh) -> Tensor:
    """Every rank's columns (last dim) of ``x`` concatenated in rank order; each rank's gradient is summed
    back to the rank that computed the columns (an all-gather, reduce-scattered in backward)."""
    sharded = DTensor.from_local(x, mesh, [Shard(x.dim() - 1)], run_check=False)
    return sharded.redistribute(mesh, [Replicate()]).to_local(grad_placements=[Partial()])
