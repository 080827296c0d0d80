"""Perplexity over consecutive, non-overlapping windows of a token stream."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from effzoo.data.errors import DataError

from .models import LanguageModel


def check_token_ids(lm: LanguageModel, tokens: Any, count: int, vocab_size: int | None = None,
                    chunk: int = 1 << 24) -> None:
    """Raise ``DataError`` when one of the first ``count`` tokens is negative or not below the smallest of the
    model's vocabulary, its tokenizer's and the data's (``vocab_size``): such an id either crashes the
    embedding or yields a perplexity of nothing real."""
    limits = {"the model's vocabulary": getattr(getattr(lm.model, "config", None), "vocab_size", None),
              f"the vocabulary of tokenizer {lm.tokenizer.name}": lm.tokenizer.vocab_size,
              "the data's vocabulary": vocab_size}
    name, limit = min(((k, int(v)) for k, v in limits.items() if v), key=lambda item: item[1])
    for start in range(0, count, chunk):
        block = np.asarray(tokens[start:min(start + chunk, count)]).astype(np.int64)
        bad = np.flatnonzero((block < 0) | (block >= limit))
        if len(bad):
            raise DataError(f"token {start + int(bad[0])} is id {int(block[bad[0]])}, outside {name} (size {limit}); "
                            "the data was not made with this model's tokenizer (pass --tokenizer, or other data)")


def checked_windows(lm: LanguageModel, tokens: Any, seq_len: int, max_tokens: int | None,
                    vocab_size: int | None = None) -> tuple[int, int]:
    """``(window length, window count)`` of the consecutive windows an evaluation reads, after checking
    that there is at least one and that every token id they cover is valid (:func:`check_token_ids`)."""
    seq_len = min(seq_len, lm.max_len)
    windows = (len(tokens) - 1) // seq_len
    if max_tokens is not None:
        windows = min(windows, max(1, max_tokens // seq_len))
    if windows < 1:
        raise DataError(f"{len(tokens)} tokens are fewer than one window of {seq_len} + 1; lower --seq-len")
    check_token_ids(lm, tokens, windows * seq_len + 1, vocab_size)
    return seq_len, windows


@torch.no_grad()
def perplexity(lm: LanguageModel, tokens: Any, *, seq_len: int = 512, batch_size: int = 4,
               max_tokens: int | None = None, progress: bool = False,
               vocab_size: int | None = None) -> dict[str, float | int]:
    """Mean next-token cross-entropy and its exponent over windows ``[i*L, (i+1)*L]`` of ``tokens``
    (every token predicted once, each window predicting ``L`` tokens), up to ``max_tokens`` predictions.
    Every id is checked first against the model's, the tokenizer's and ``vocab_size`` (the data's)."""
    seq_len, windows = checked_windows(lm, tokens, seq_len, max_tokens, vocab_size)
    from effzoo.metrics.progress import make_progress

    nll, count = 0.0, 0
    bar = make_progress(windows, desc="perplexity", unit="window", quiet=not progress)
    for first in range(0, windows, batch_size):
        rows = range(first, min(first + batch_size, windows))
        batch = np.stack([np.asarray(tokens[r * seq_len:r * seq_len + seq_len + 1], dtype=np.int64) for r in rows])
        data = torch.from_numpy(batch)
        logits = lm.logits(data[:, :-1]).float()
        targets = data[:, 1:].to(logits.device)
        nll += F.cross_entropy(logits.reshape(-1, logits.shape[-1]), targets.reshape(-1), reduction="sum").item()
        count += targets.numel()
        bar.update(len(rows))
    bar.close()
    loss = nll / count
    return {"loss": loss, "ppl": math.exp(loss), "tokens": count, "seq_len": seq_len}
