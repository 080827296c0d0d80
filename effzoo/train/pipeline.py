"""Pipeline parallel with ``torch.distributed.pipelining``: the decoder split into stages by layer
(torchtitan-style: each rank keeps its own layers; the first stage embeds, the last applies the final norm,
and the schedule's loss function the head and cross-entropy), run by ScheduleGPipe or Schedule1F1B with
``--grad-accum`` micro-batches.

Parameters more than one stage uses are kept on each of them and their gradients summed over the
pipeline group after backward: the position encoding (every stage rotates or biases its attention) and,
with tied embeddings, the embedding matrix (the first stage's input table is the last stage's head).
MoE auxiliary losses reach the gradient through :class:`AuxLossCarrier` on the stage output.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..interfaces import MixContext
from ..ops.attention import attention_backend
from ..ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy


class AuxLossCarrier(torch.autograd.Function):
    """Identity on the stage output whose backward gives ``aux`` the gradient 1, so a stage's auxiliary
    losses join the backward pass that the pipeline schedule starts from the next stage (Megatron's
    MoE aux-loss scaler); the schedule's gradient scaling then averages them over micro-batches."""

    @staticmethod
    def forward(ctx: Any, hidden: Tensor, aux: Tensor) -> Tensor:  # type: ignore[override]
        ctx.aux_shape = aux.shape
        return hidden.view_as(hidden)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:  # type: ignore[override]
        return grad, torch.ones(ctx.aux_shape, device=grad.device, dtype=grad.dtype)


def stage_layers(n_layers: int, stages: int) -> list[range]:
    """Contiguous layer ranges, as even as possible, earlier stages taking the remainder."""
    base, extra = divmod(n_layers, stages)
    bounds, start = [], 0
    for stage in range(stages):
        end = start + base + (1 if stage < extra else 0)
        bounds.append(range(start, end))
        start = end
    return bounds


class DecoderStage(nn.Module):
    """Layers ``layers`` of an EffzooModel; parameter names are the full model's (``blocks.7.…``), so
    checkpoints of any layout share one set of keys."""

    def __init__(self, model: nn.Module, stage: int, stages: int) -> None:
        super().__init__()
        self.config = model.config
        self.first, self.last = stage == 0, stage == stages - 1
        self.layers = stage_layers(self.config.n_layers, stages)[stage]
        tied = model.head is None
        self.embed = model.embed if self.first or tied else None
        self.position = model.position
        self.blocks = nn.ModuleDict({str(i): model.blocks[i] for i in self.layers})
        self.norm = model.norm if self.last else None
        self.head = model.head if self.last else None
        self.gradient_checkpointing = model.gradient_checkpointing
        self.backend: str | None = None
        self.aux_values: list[Tensor] = []  # this stage's detached aux losses, one per micro-batch

    @property
    def output_weight(self) -> Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def shared_parameters(self) -> list[nn.Parameter]:
        """Parameters other stages hold too (their gradients are summed over the pipeline group)."""
        shared = list(self.position.parameters())
        if self.head is None and self.embed is not None:
            shared.append(self.embed.weight)
        return shared

    def forward(self, x: Tensor) -> Tensor:
        length = x.shape[1]
        positions = torch.arange(length, device=x.device)
        hidden = self.position.embed(self.embed(x), positions) if self.first else x
        backend = self.backend or attention_backend(self.config.kernel)
        ctx = MixContext(positions=positions, position=self.position, backend=backend,
                         tables=self.position.prepare(positions))
        for block in self.blocks.values():
            if self.gradient_checkpointing and self.training:
                hidden, _ = checkpoint(block, hidden, ctx, None, use_reentrant=False)
            else:
                hidden, _ = block(hidden, ctx, None)
        if ctx.aux_losses and torch.is_grad_enabled():  # training micro-batches only (not shape inference, eval)
            aux = torch.stack(ctx.aux_losses).sum()
            self.aux_values.append(aux.detach())
            hidden = AuxLossCarrier.apply(hidden, aux)
        return self.norm(hidden) if self.last else hidden

    def take_aux(self, micro_batches: int) -> Tensor:
        """Mean auxiliary loss of this stage over the last step's micro-batches (0 without any); resets.
        Only the last ``micro_batches`` values count: the stage's shape inference, at the first step, runs
        one forward more."""
        device = next(self.parameters()).device
        values = self.aux_values[-micro_batches:]
        total = torch.stack(values).sum() / micro_batches if values else torch.zeros((), device=device)
        self.aux_values = []
        return total.float()


def loss_function(stage: DecoderStage, fused_loss: bool):  # type: ignore[no-untyped-def]
    """The schedule's per-micro-batch loss on the last stage: the decoder's head and cross-entropy."""

    def loss(hidden: Tensor, targets: Tensor) -> Tensor:
        flat = hidden.reshape(-1, hidden.shape[-1])
        if fused_loss:
            return linear_cross_entropy(flat, stage.output_weight, targets.reshape(-1))
        logits = F.linear(flat, stage.output_weight).float()
        return F.cross_entropy(logits, targets.reshape(-1), ignore_index=IGNORE_INDEX)

    return loss


def build_schedule(stage_module: DecoderStage, stage: int, stages: int, device: torch.device, group: Any,
                   micro_batches: int, kind: str, fused_loss: bool):  # type: ignore[no-untyped-def]
    """The PipelineStage of this rank and its schedule (``kind``: 1f1b | gpipe)."""
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    pipe_stage = PipelineStage(stage_module, stage, stages, device, group=group)
    schedule_class = Schedule1F1B if kind == "1f1b" else ScheduleGPipe
    return schedule_class(pipe_stage, micro_batches, loss_fn=loss_function(stage_module, fused_loss))
