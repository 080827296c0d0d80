"""What a model holds per token of context when it answers: its cache or its recurrent state.

``cache_bytes_per_token`` (keys and values, or MLA's latent, of every layer) and ``state_bytes``
(recurrent and convolution states of every layer, independent of length) come from the model's own
blocks through :func:`effzoo.analysis.model_stats`, at 2 bytes per value (bf16). At the end of a
sequence of length L a model holds ``cache * L + state`` bytes; the plot's x axis divides that by L:
attention's KV cache per token, a recurrent model's fixed state spread over the tokens it summarises.
"""
from __future__ import annotations

from typing import Any

import torch

from effzoo.analysis import model_stats

BYTES_PER_VALUE = 2


def memory_bytes(model: torch.nn.Module, seq_len: int) -> dict[str, Any]:
    """Cache bytes per token, state bytes per sequence, and their total per token at ``seq_len``."""
    stats = model_stats(model, seq_len, BYTES_PER_VALUE)
    cache, state = stats["kv_cache_bytes_per_token"], stats["state_bytes_per_sequence"]
    return {"cache_bytes_per_token": cache, "state_bytes": state,
            "memory_bytes_per_token": (cache * seq_len + state) / seq_len, "params": stats["params"]}
