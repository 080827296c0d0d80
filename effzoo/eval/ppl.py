"""Perplexity over consecutive, non-overlapping windows of a token stream."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effzoo.data.errors import DataError

from .models import LanguageModel


@torch.no_grad()
def perplexity(lm: LanguageModel, tokens: Any, *, seq_len: int = 512, batch_size: int = 4,
               max_tokens: int | None = None, progress: bool = False) -> dict[str, float | int]:
    """Mean next-token cross-entropy and its exponent over windows ``[i*L, (i+1)*L]`` of ``tokens``
    (every token predicted once, each window predicting ``L`` tokens), up to ``max_tokens`` predictions."""
    seq_len = min(seq_len, lm.max_len)
    windows = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // seq_len))
    if windows < 1:
        raise DataError(f"{len(tokens)} tokens are fewer than one window of {seq_len} + 1; lower --seq-len")
    from tqdm import tqdm

    nll, count = 0.0, 0
    for first in tqdm(range(0, windows, batch_size), desc="perplexity", disable=not progress):
        rows = range(first, min(first + batch_size, windows))
        batch = np.stack([np.asarray(tokens[r * seq_len:r * seq_len + seq_len + 1], dtype=np.int64) for r in rows])
        data = torch.from_numpy(batch)
        logits = lm.logits(data[:, :-1]).float()
        targets = data[:, 1:].to(logits.device)
        if logits.shape[-1] <= int(targets.max()):
            raise DataError(f"token id {int(targets.max())} is outside the model's vocabulary ({logits.shape[-1]})")
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
    loss = nll / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count, "seq_len": seq_len}
