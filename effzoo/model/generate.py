"""Autoregressive decoding with the model's cache (KV or recurrent state)."""
from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError


def sample_next(logits: Tensor, temperature: float, top_k: int | None, top_p: float | None,
            generator: torch.Generator | None) -> Tensor:
    """Next token ids (B,) from last-position logits (B, V)."""
    if temperature <= 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.shape[-1])).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True)
        cumulative = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = cumulative - torch.softmax(sorted_logits, dim=-1) > top_p
        sorted_logits = sorted_logits.masked_fill(drop, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    probs = torch.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def check_request(model: torch.nn.Module, prompt_len: int, max_new_tokens: int) -> int:
    """Validate a generation request; return the total length (prompt + new tokens)."""
    if max_new_tokens < 0:
        raise ConfigError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    total = prompt_len + max_new_tokens
    if total > model.config.max_seq_len:
        raise ConfigError(
            f"prompt ({prompt_len}) + max_new_tokens ({max_new_tokens}) = {total} exceeds max_seq_len "
            f"{model.config.max_seq_len}; build the model with a larger max_seq_len"
        )
    return total


@torch.no_grad()
def generate(
    model: torch.nn.Module,
    input_ids: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    top_p: float | None = None,
    eos_token_id: int | None = None,
    generator: torch.Generator | None = None,
    fast: bool = False,
) -> Tensor:
    """Prompt (B, T) -> prompt plus up to ``max_new_tokens`` tokens (B, T + n).

    Sequences that emit ``eos_token_id`` keep emitting it; decoding stops when all have.
    ``fast=True`` decodes through :class:`effzoo.model.fast_decode.StaticDecoder` (a CUDA-graph step on
    CUDA for variants that support it, this eager loop otherwise), with the same tokens.
    """
    if fast:
        from .fast_decode import decoder_for

        return decoder_for(model).generate(
            input_ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
            eos_token_id=eos_token_id, generator=generator,
        )
    batch, length = input_ids.shape
    total = check_request(model, length, max_new_tokens)
    was_training = model.training
    model.eval()
    cache = model.new_cache(batch, total)
    out = model(input_ids, cache=cache)
    tokens = [input_ids]
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for step in range(max_new_tokens):
        nxt = sample_next(out.logits[:, -1], temperature, top_k, top_p, generator)
        if eos_token_id is not None:
            nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
            finished |= nxt == eos_token_id
        tokens.append(nxt[:, None])
        if step + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            break
        out = model(nxt[:, None], cache=cache)
    model.train(was_training)
    return torch.cat(tokens, dim=1)
