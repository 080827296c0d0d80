"""Train one MQAR cell and measure its test accuracy, with the loss and the head on answers only."""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from .data import IGNORE, MQARSplit


@dataclass(frozen=True)
class TrainSettings:
    """Optimiser and length of the training of one cell (AdamW; warmup, constant, cosine decay)."""

    steps: int = 1500
    batch_size: int = 64
    lr: float = 3e-3
    min_lr: float = 3e-5
    warmup: int = 20
    decay: float = 0.3  # fraction of the steps, at the end, over which the learning rate decays
    weight_decay: float = 0.0
    eval_batch: int = 250


def answer_logits(model: torch.nn.Module, inputs: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Logits at the ``where`` positions only: the final norm's output is caught by a hook and only the
    answer positions go through the output head (the head over 8,192 tokens is most of the cost)."""
    caught: list[torch.Tensor] = []
    handle = model.norm.register_forward_hook(lambda _m, _i, out: caught.append(out))
    try:
        model(inputs, return_logits=False)
    finally:
        handle.remove()
    return F.linear(caught[0][where], model.output_weight)


def _lr(step: int, s: TrainSettings) -> float:
    """Linear warmup, constant, then cosine decay to ``min_lr`` over the last ``decay`` of the steps."""
    if step < s.warmup:
        return s.lr * (step + 1) / s.warmup
    start = max(s.warmup, round(s.steps * (1 - s.decay)))
    if step < start:
        return s.lr
    progress = (step - start) / max(1, s.steps - start)
    return s.min_lr + 0.5 * (s.lr - s.min_lr) * (1 + math.cos(math.pi * progress))


@torch.no_grad()
def accuracy(model: torch.nn.Module, split: MQARSplit, batch: int = 250) -> float:
    """Fraction of answers whose arg-max prediction is the right value."""
    model.eval()
    right = total = 0
    for first in range(0, len(split), batch):
        inputs, targets = split.inputs[first:first + batch].long(), split.targets[first:first + batch].long()
        where = targets != IGNORE
        right += int((answer_logits(model, inputs, where).argmax(-1) == targets[where]).sum())
        total += int(where.sum())
    model.train()
    return right / max(1, total)


def train_cell(model: torch.nn.Module, train: MQARSplit, test: MQARSplit, settings: TrainSettings,
               *, seed: int = 0) -> dict[str, Any]:
    """Train ``model`` for ``settings.steps`` batches drawn from ``train``; returns accuracy and timings."""
    gen = torch.Generator().manual_seed(seed)
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": settings.weight_decay},
                             {"params": rest, "weight_decay": 0.0}], lr=settings.lr, betas=(0.9, 0.98))
    model.train()
    start = time.perf_counter()
    loss = torch.tensor(float("nan"))
    for step in range(settings.steps):
        for group in opt.param_groups:
            group["lr"] = _lr(step, settings)
        rows = torch.randint(0, len(train), (settings.batch_size,), generator=gen)
        inputs, targets = train.inputs[rows].long(), train.targets[rows].long()
        where = targets != IGNORE
        loss = F.cross_entropy(answer_logits(model, inputs, where).float(), targets[where])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
    train_s = time.perf_counter() - start
    return {"accuracy": accuracy(model, test, settings.eval_batch), "final_loss": float(loss.detach()),
            "steps": settings.steps, "train_seconds": train_s, "eval_seconds": time.perf_counter() - start - train_s}
