"""Parameter, FLOP and cache accounting of a variant (``effzoo.info``), computed on the meta device."""
from __future__ import annotations

from typing import Any

import torch

from .build import build_from_config, make_config


def model_stats(model: torch.nn.Module, seq_len: int, bytes_per_value: int = 2) -> dict[str, Any]:
    """Counts for a built model. FLOPs follow 6·N + 12·L·H·Q·T (training) generalised per block.

    N is the active non-embedding parameter count including the output head (tied or not).
    """
    cfg = model.config
    total = model.num_parameters()
    embedding = model.embed.weight.numel() + sum(p.numel() for p in model.position.parameters())
    non_embedding = total - embedding
    head = cfg.vocab_size * cfg.d_model if cfg.tie_embeddings else 0
    inactive = sum(block.inactive_params() for block in model.blocks)
    active_compute = non_embedding + head - inactive
    extra = sum(block.extra_flops_per_token(seq_len) for block in model.blocks)
    forward = 2.0 * active_compute + extra
    return {
        "variant": cfg.variant,
        "size": cfg.size,
        "params": total,
        "embedding_params": embedding,
        "non_embedding_params": non_embedding,
        "active_params": total - inactive,
        "compute_params": active_compute,
        "seq_len": seq_len,
        "forward_flops_per_token": forward,
        "train_flops_per_token": 3.0 * forward,
        "kv_cache_bytes_per_token": sum(b.cache_bytes_per_token(bytes_per_value) for b in model.blocks),
        "state_bytes_per_sequence": sum(b.state_bytes(bytes_per_value) for b in model.blocks),
        "layers": cfg.n_layers,
        "d_model": cfg.d_model,
        "config": cfg.to_dict(),
    }


def info(variant: str, size: str = "tiny", *, seq_len: int = 2048, bytes_per_value: int = 2,
         **overrides: Any) -> dict[str, Any]:
    """Params, non-embedding params, FLOPs/token at ``seq_len`` and cache bytes/token (bf16 by default)."""
    model = build_from_config(make_config(variant, size, **overrides), device="meta")
    return model_stats(model, seq_len, bytes_per_value)
