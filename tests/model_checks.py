"""Shared steps of the model tests: a few optimizer steps on a fixed batch, and cached decoding."""
from __future__ import annotations

import torch


def train_losses(model: torch.nn.Module, ids: torch.Tensor, steps: int, lr: float = 3e-3) -> list[float]:
    """Losses of ``steps`` AdamW steps on next-token prediction over the fixed batch ``ids`` (B, T + 1)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def cached_logits(model: torch.nn.Module, inputs: torch.Tensor, prefill: int, cache: object | None = None,
                  max_len: int = 32) -> torch.Tensor:
    """Logits of ``inputs`` (B, T) decoded with the model's cache (a new one unless given): ``prefill``
    tokens at once, then one by one."""
    cache = cache if cache is not None else model.new_cache(inputs.shape[0], max_len)
    pieces = [model(inputs[:, :prefill], cache=cache).logits]
    pieces += [model(inputs[:, t:t + 1], cache=cache).logits for t in range(prefill, inputs.shape[1])]
    return torch.cat(pieces, dim=1)
