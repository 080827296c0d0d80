"""AdamW with the EfficientLLM settings and a warmup + cosine-to-floor learning-rate schedule."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Decay matrices (linear and embedding weights); no decay for biases, norm scales and 1-D tables."""
    decay, no_decay, seen = [], [], set()
    for param in model.parameters():
        if not param.requires_grad or id(param) in seen:
            continue
        seen.add(id(param))
        (decay if param.ndim >= 2 else no_decay).append(param)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def build_optimizer(model: nn.Module, *, lr: float, betas: tuple[float, float], weight_decay: float,
                    eps: float, device_type: str, mixed_dtensors: bool = False) -> torch.optim.AdamW:
    """AdamW, fused on CUDA/NPU (one kernel per parameter group), foreach elsewhere; one parameter at a
    time when ``mixed_dtensors`` (tensor parallel: DTensor shards beside replicated plain tensors, which
    the multi-tensor kernels cannot take together)."""
    if mixed_dtensors:
        return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, foreach=False)
    fused = device_type in ("cuda", "npu")
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps,
                             fused=fused or None, foreach=None if fused else True)


class WarmupCosine:
    """Linear warmup from 0 to ``lr`` over ``warmup`` steps, then cosine decay to ``min_lr`` at ``total``."""

    def __init__(self, optimizer: torch.optim.Optimizer, *, lr: float, min_lr: float, warmup: int, total: int) -> None:
        self.optimizer, self.lr, self.min_lr = optimizer, lr, min_lr
        self.warmup, self.total = max(0, warmup), max(1, total)
        self.step_index = 0

    def lr_at(self, step: int) -> float:
        """Learning rate used for optimizer step ``step`` (0-based)."""
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        span = max(1, self.total - self.warmup)
        progress = min(1.0, (step - self.warmup) / span)
        return self.min_lr + 0.5 * (self.lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def apply(self, step: int) -> float:
        """Set the learning rate of every parameter group for ``step`` and return it."""
        self.step_index = step
        value = self.lr_at(step)
        for group in self.optimizer.param_groups:
            group["lr"] = value
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"lr": self.lr, "min_lr": self.min_lr, "warmup": self.warmup, "total": self.total,
                "step_index": self.step_index}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the position; the shape of the schedule always comes from the current settings."""
        self.step_index = int(state["step_index"])
