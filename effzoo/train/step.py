"""``train_step``: one optimizer step -- micro-batches forward and backward, gradient clipping, the
update, skipped when the loss or the gradient norm is non-finite -- with one host readback at the end.

With a fused optimizer (CUDA/NPU) and no loss scaler, the skip is decided on the device (the optimizer's
``found_inf``), so the readback of loss and gradient norm comes after the update has been queued and the
device queue never drains. Elsewhere (CPU, fp16 with its scaler) the readback precedes the update, as
the host must decide; on CPU that costs nothing."""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn

from ..backends import BackendAdapter
from .distributed import DistInfo, all_reduce_mean
from .model_parallel import model_parallel_backward
from .parallel import Parallelized


@dataclass
class StepSettings:
    """What every step of a run does the same way."""

    grad_accum: int = 1
    grad_clip: float = 1.0
    amp_dtype: torch.dtype = torch.float32
    fused_loss: bool = True
    kernel: str | None = None


@dataclass
class StepResult:
    """The step's loss (mean over micro-batches and ranks), gradient norm, whether the update ran, and the
    seconds spent in the trainer's own collective (None for one process)."""

    loss: float
    grad_norm: float
    stepped: bool
    comm_s: float | None = None


def device_skips(optimizer: torch.optim.Optimizer, scaler: object | None) -> bool:
    """True when the optimizer can skip a non-finite update on the device (fused AdamW's ``found_inf``)."""
    return scaler is None and bool(optimizer.defaults.get("fused"))


def train_step(plan: Parallelized, optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None,
               batches: Iterator[tuple[torch.Tensor, torch.Tensor]], adapter: BackendAdapter, info: DistInfo,
               settings: StepSettings) -> StepResult:
    """Run one optimizer step over ``settings.grad_accum`` micro-batches from ``batches``."""
    if plan.model_parallel:
        readback, comm_s = model_parallel_backward(plan, scaler, optimizer, batches, adapter, settings)
        return _update(optimizer, scaler, readback, comm_s)
    model = plan.model
    loss_sum = torch.zeros((), device=adapter.device)
    for micro_step in range(settings.grad_accum):
        inputs, targets = next(batches)
        last_micro = micro_step == settings.grad_accum - 1
        if plan.fsdp:  # reduce-scatter gradients only after the last micro-step
            model.set_requires_gradient_sync(last_micro)
        sync = model.no_sync() if plan.ddp and not last_micro else contextlib.nullcontext()
        with sync:
            with adapter.autocast(settings.amp_dtype):
                output = model(inputs, targets, return_logits=not settings.fused_loss, backend=settings.kernel)
            loss = output.loss / settings.grad_accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
        loss_sum += loss.detach()
    if scaler is not None:
        scaler.unscale_(optimizer)
    grad_norm = clip_grad_norm(model, settings.grad_clip)
    readback = torch.stack([loss_sum.float(), grad_norm.float()])
    comm_s = None
    if info.enabled:  # the trainer's own collective, timed between device synchronisations
        adapter.synchronize()
        comm_start = time.perf_counter()
        all_reduce_mean(readback, info)
        adapter.synchronize()
        comm_s = time.perf_counter() - comm_start
    return _update(optimizer, scaler, readback, comm_s)


def _update(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None, readback: torch.Tensor,
            comm_s: float | None) -> StepResult:
    """The update from the gradients in place, given the step's [loss, grad norm] on the device."""
    if device_skips(optimizer, scaler):
        optimizer.grad_scale, optimizer.found_inf = None, (~torch.isfinite(readback).all()).float()
        optimizer.step()
        del optimizer.grad_scale, optimizer.found_inf
        optimizer.zero_grad(set_to_none=True)
        loss_value, norm_value = readback.tolist()  # the one host synchronisation, after the update
        return StepResult(loss_value, norm_value, math.isfinite(loss_value) and math.isfinite(norm_value), comm_s)
    loss_value, norm_value = readback.tolist()  # the one host synchronisation per step
    stepped = math.isfinite(loss_value) and (math.isfinite(norm_value) or scaler is not None)
    if stepped:
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
    if scaler is not None:
        scaler.update()
    optimizer.zero_grad(set_to_none=True)
    return StepResult(loss_value, norm_value, stepped, comm_s)


def clip_grad_norm(model: nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm (``max_norm`` 0 = measure only); a plain tensor also under FSDP."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"), foreach=True)
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm
