"""Forward, backward and gradient synchronisation of one step under a TP / PP / CP layout.

Under such a layout the model is this rank's part (its TP shards, its pipeline stage) and there is no DDP
wrapper: after backward, gradients of parameters several pipeline stages hold are summed over the ``pp``
mesh dimension, every gradient is averaged over the ranks that hold the same parameters for other data
(``dp``, and ``cp``, whose ranks see other parts of the same sequences), and the global norm counts each
parameter once (TP shards summed over ``tp``, stages summed over ``pp``) before clipping. Under CP each
micro-batch runs inside ``context_parallel.sequence_shard``, its loss the mean over this rank's tokens.
"""
from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.distributed.tensor import DTensor, Shard

from ..backends import BackendAdapter
from .context_parallel import sequence_shard

if TYPE_CHECKING:
    from .parallel import Parallelized
    from .step import StepSettings


def local(tensor: Tensor) -> Tensor:
    """This rank's values of a plain tensor or DTensor."""
    return tensor.to_local() if isinstance(tensor, DTensor) else tensor


def is_sharded(tensor: Tensor) -> bool:
    return isinstance(tensor, DTensor) and any(isinstance(p, Shard) for p in tensor.placements)


def model_parallel_backward(plan: "Parallelized", scaler: Any, optimizer: torch.optim.Optimizer,
                            batches: Iterator[tuple[Tensor, Tensor]], adapter: BackendAdapter,
                            settings: "StepSettings") -> tuple[Tensor, float]:
    """Forward and backward of ``settings.grad_accum`` micro-batches, gradients synchronised and clipped;
    returns [loss, grad norm] on the device (the same on every rank) and the collective seconds."""
    if plan.schedule is not None:
        loss = pipeline_backward(plan, batches, adapter, settings)
    else:
        loss = torch.zeros((), device=adapter.device)
        for _ in range(settings.grad_accum):
            with micro_batch(plan, *next(batches)) as (inputs, targets, positions):
                with adapter.autocast(settings.amp_dtype):
                    output = plan.model(inputs, targets, return_logits=not settings.fused_loss,
                                        backend=settings.kernel, token_positions=positions)
                micro_loss = output.loss / settings.grad_accum
                (scaler.scale(micro_loss) if scaler is not None else micro_loss).backward()
            loss += micro_loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    adapter.synchronize()
    start = time.perf_counter()
    sync_gradients(plan)
    norm = clip_gradients(plan, settings.grad_clip)
    loss = replica_loss(plan, loss.float())
    adapter.synchronize()
    return torch.stack([loss, norm.to(loss.device)]), time.perf_counter() - start


@contextlib.contextmanager
def micro_batch(plan: "Parallelized", inputs: Tensor,
                targets: Tensor) -> Iterator[tuple[Tensor, Tensor, Tensor | None]]:
    """``(inputs, targets, positions)`` for the forward and backward inside: under CP this rank's shard
    of the sequences and its tokens' positions, with attention run as ring attention; else the batch
    as it is and no positions (the decoder's own)."""
    if plan.layout.cp == 1:
        yield inputs, targets, None
        return
    with sequence_shard(plan.mesh["cp"], inputs, targets) as shard:
        yield shard


def pipeline_backward(plan: "Parallelized", batches: Iterator[tuple[Tensor, Tensor]], adapter: BackendAdapter,
                      settings: "StepSettings") -> Tensor:
    """One pipeline schedule step over the concatenated micro-batches; this stage's share of the loss
    (the language-model loss on the last stage, plus the stage's own auxiliary losses)."""
    stage = plan.model
    stage.backend = settings.kernel
    pairs = [next(batches) for _ in range(settings.grad_accum)]
    inputs, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    losses: list[Tensor] = []
    args = (inputs,) if stage.first else ()
    with adapter.autocast(settings.amp_dtype):
        plan.schedule.step(*args, target=targets if stage.last else None, losses=losses if stage.last else None)
    loss = stage.take_aux(settings.grad_accum)
    if stage.last:
        loss = loss + torch.stack([l.detach().float() for l in losses]).mean()
    return loss


def replica_loss(plan: "Parallelized", loss: Tensor) -> Tensor:
    """The model's loss from every rank's share: summed over pipeline stages, averaged over replicas."""
    world = dist.get_world_size()
    dist.all_reduce(loss, op=dist.ReduceOp.SUM)
    return loss / (world // plan.layout.pp)


def sync_gradients(plan: "Parallelized") -> None:
    """Sum the gradients of parameters held by several stages over ``pp``; average all over the
    replicas (``dp``, or the flattened ``dp_cp`` under CP)."""
    params = [p for p in plan.model.parameters() if p.requires_grad]
    if plan.layout.pp > 1:
        shared = plan.model.shared_parameters()
        for param in shared:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        _all_reduce([local(p.grad) for p in shared], plan.group("pp"))
    replicas = plan.layout.dp * plan.layout.cp
    if replicas > 1:  # every rank reduces the same list: a parameter unused in this step counts zero
        for param in params:
            if param.grad is None:
                param.grad = torch.zeros_like(param)
        grads = [local(p.grad) for p in params]
        _all_reduce(grads, plan.group("dp_cp" if plan.layout.cp > 1 else "dp"))
        for grad in grads:
            grad.div_(replicas)


def _all_reduce(tensors: list[Tensor], group: Any) -> None:
    """One SUM all-reduce per dtype over a flat copy of ``tensors``, written back in place."""
    by_dtype: dict[torch.dtype, list[Tensor]] = {}
    for tensor in tensors:
        by_dtype.setdefault(tensor.dtype, []).append(tensor)
    for same in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for t in same])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
        offset = 0
        for tensor in same:
            tensor.copy_(flat[offset:offset + tensor.numel()].view_as(tensor))
            offset += tensor.numel()


def grad_norm(plan: "Parallelized") -> Tensor:
    """Global L2 norm of the gradients, each parameter counted once over the whole model."""
    model: nn.Module = plan.model
    skip = set()
    if plan.layout.pp > 1 and not model.first:  # shared parameters count on the first stage only
        skip = {id(p) for p in model.shared_parameters()}
    device = next(model.parameters()).device
    sharded, replicated = torch.zeros((), device=device), torch.zeros((), device=device)
    for param in model.parameters():
        if param.grad is None or id(param) in skip:
            continue
        square = local(param.grad).float().pow(2).sum()
        if is_sharded(param.grad):
            sharded += square
        else:
            replicated += square
    if plan.layout.tp > 1:
        dist.all_reduce(sharded, op=dist.ReduceOp.SUM, group=plan.group("tp"))
    total = sharded + replicated
    if plan.layout.pp > 1:
        dist.all_reduce(total, op=dist.ReduceOp.SUM, group=plan.group("pp"))
    return total.sqrt()


def clip_gradients(plan: "Parallelized", max_norm: float) -> Tensor:
    """Scale the gradients to global norm ``max_norm`` when above it (0 = measure only); the norm before."""
    norm = grad_norm(plan)
    if max_norm > 0:
        coef = torch.clamp(max_norm / (norm + 1e-6), max=1.0)
        for param in plan.model.parameters():
            if param.grad is not None:
                local(param.grad).mul_(coef)
    return norm
