"""The one decoder every variant is assembled into.

    ids -> embedding -> position.embed -> blocks (one MixerBlock per layer) -> norm -> head
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from ..cache import ModelCache
from ..config import ModelConfig
from ..errors import ConfigError
from ..interfaces import Component, MixContext, NoPositionalEncoding
from ..ops.attention import attention_backend
from ..ops.linear_cross_entropy import IGNORE_INDEX, linear_cross_entropy
from .parts import build_component, make_norm


@dataclass
class ModelOutput:
    """Logits (None when not requested), the loss (cross-entropy + auxiliary), and decoding cache."""

    logits: Tensor | None = None
    loss: Tensor | None = None
    lm_loss: Tensor | None = None
    aux_loss: Tensor | None = None
    cache: ModelCache | None = None
    stats: dict[str, Any] = field(default_factory=dict)


class EffzooModel(nn.Module):
    """A decoder-only language model built from registered components named in ``config``."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.d_model)
        self.position = (NoPositionalEncoding() if config.position is None
                         else build_component("position", config.position, config))
        self.blocks = nn.ModuleList(
            build_component("block", kind, config, layer) for layer, kind in enumerate(config.layer_kinds)
        )
        self.norm = make_norm(config)
        self.head = None if config.tie_embeddings else nn.Linear(config.d_model, config.vocab_size, bias=False)
        self.gradient_checkpointing = False
        self.attention_backend = attention_backend(config.kernel)  # what ``kernel`` means to attention

    # -- weights ---------------------------------------------------------------------------
    @property
    def output_weight(self) -> Tensor:
        return self.embed.weight if self.head is None else self.head.weight

    def _components(self) -> list[Component]:
        return [m for m in self.modules() if isinstance(m, Component)]

    def init_weights(self) -> None:
        """Normal(0, init_std) for linear/embedding weights, zero biases, std / sqrt(2·layers) for the
        linear layers components declare in ``residual_projections``, then every component's
        ``init_weights`` (special parameters) and ``init_buffers`` (non-persistent buffers)."""
        std = self.config.init_std
        residual_std = std / math.sqrt(2 * self.config.n_layers)
        residual = {id(c.get_submodule(name)) for c in self._components() for name in c.residual_projections}
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0.0, residual_std if id(module) in residual else std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Embedding):
                nn.init.normal_(module.weight, 0.0, std)
        for component in self._components():
            component.init_weights()
        self.init_buffers()

    def init_buffers(self) -> None:
        """Recompute every component's non-persistent buffers (RoPE frequencies, ALiBi slopes) with its
        ``init_buffers``: what a model materialised with ``to_empty`` needs before use."""
        for component in self._components():
            component.init_buffers()

    def install_kernels(self, device_type: str) -> list[str]:
        """Let every component switch to the fused kernels it declares for ``device_type``; the names."""
        return sorted({name for c in self._components() for name in c.install_kernels(device_type)})

    def num_parameters(self, *, exclude_embeddings: bool = False) -> int:
        """Parameter count (shared tensors once). Without embeddings the output head still counts."""
        total = sum(p.numel() for p in self.parameters())  # parameters() yields a tied tensor once
        if exclude_embeddings:
            total -= self.embed.weight.numel()
            total -= sum(p.numel() for p in self.position.parameters())
            if self.head is None:  # tied: the head is the embedding matrix, and it does compute
                total += self.embed.weight.numel()
        return total

    # -- forward ---------------------------------------------------------------------------
    def new_cache(self, batch: int, max_len: int | None = None) -> ModelCache:
        """Empty decoding states for every layer, on the model's device and dtype."""
        max_len = max_len or self.config.max_seq_len
        ref = self.embed.weight
        states = [block.init_state(batch, max_len, ref.device, ref.dtype) for block in self.blocks]
        return ModelCache(layers=states, max_len=max_len)

    @functools.cached_property
    def _static_decode_blockers(self) -> tuple[str, ...]:
        """Block types without static-shape decoding; computed once, since the blocks never change
        (the check costs ~0.1 ms at 24 layers, too much to repeat on every decoded token)."""
        return tuple(sorted({type(b).__name__ for b in self.blocks if not b.supports_static_decode()}))

    def check_static_decode(self) -> None:
        """Raise ConfigError unless every block supports the static-shape decoding path."""
        unsupported = self._static_decode_blockers
        if unsupported:
            raise ConfigError(
                f"{self.config.variant!r}: blocks {', '.join(unsupported)} do not support static-shape decoding "
                "(explicit positions); use the eager cached path (generate(fast=False))"
            )

    def forward(
        self,
        input_ids: Tensor,
        targets: Tensor | None = None,
        cache: ModelCache | None = None,
        *,
        return_logits: bool = True,
        backend: str | None = None,
        positions: Tensor | None = None,
        token_positions: Tensor | None = None,
    ) -> ModelOutput:
        """``input_ids`` (B, T); ``targets`` (B, T) are the next tokens (IGNORE_INDEX = -100 skipped).

        ``positions`` (T,), a device tensor, selects the static-shape path (effzoo.model.fast_decode):
        with a cache, every layer writes its state at these slots and attends over the whole cache, and
        ``cache.offset`` is left to the caller; without one, the tokens attend to each other at these
        positions. Every block must ``supports_static_decode()``.

        ``token_positions`` (T,), for training on a shard of longer sequences (context parallel): the
        positions of these tokens in their sequences, in the shard's order, for the position encoding only;
        attention stays causal among the tokens as the kernel sees them, which torch's context_parallel
        turns into the whole sequence's causal attention. No cache; the caller keeps them within
        ``max_seq_len`` (the embedding lookups do not check on the host).
        """
        _, length = input_ids.shape
        kv_positions = None
        if token_positions is not None:
            if cache is not None or positions is not None:
                raise ConfigError("token_positions is for training on sequence shards: no cache, no positions")
            positions = token_positions
        elif positions is None:
            offset = cache.offset if cache is not None else 0
            self.position.check_positions(offset + length)
            positions = torch.arange(offset, offset + length, device=input_ids.device)
        else:
            self.check_static_decode()
            kv_positions = torch.arange(cache.max_len, device=positions.device) if cache is not None else positions
        x = self.position.embed(self.embed(input_ids), positions)
        backend = self.attention_backend if backend is None else attention_backend(backend)
        ctx = MixContext(positions=positions, position=self.position, backend=backend,
                         kv_positions=kv_positions, tables=self.position.prepare(positions))
        for layer, block in enumerate(self.blocks):
            state = cache.layers[layer] if cache is not None else None
            if self.gradient_checkpointing and self.training and state is None:
                x, state = checkpoint(block, x, ctx, None, use_reentrant=False)
            else:
                x, state = block(x, ctx, state)
            if cache is not None:
                cache.layers[layer] = state
        if cache is not None and kv_positions is None:
            cache.offset += length
        x = self.norm(x)
        logits = F.linear(x, self.output_weight) if return_logits else None
        out = ModelOutput(logits=logits, cache=cache, stats=ctx.stats)
        if targets is not None:
            if logits is None:  # chunked head + loss: the full logits are never materialised
                out.lm_loss = linear_cross_entropy(x.reshape(-1, x.shape[-1]), self.output_weight, targets.reshape(-1))
            else:
                out.lm_loss = F.cross_entropy(
                    logits.float().reshape(-1, logits.shape[-1]), targets.reshape(-1), ignore_index=IGNORE_INDEX
                )
            out.aux_loss = torch.stack(ctx.aux_losses).sum() if ctx.aux_losses else None
            out.loss = out.lm_loss if out.aux_loss is None else out.lm_loss + out.aux_loss
        return out

    # -- conveniences ----------------------------------------------------------------------
    def generate(self, input_ids: Tensor, max_new_tokens: int, **kwargs: Any) -> Tensor:
        """Greedy (temperature 0) or sampled continuation using the decoding cache."""
        from .generate import generate

        return generate(self, input_ids, max_new_tokens, **kwargs)

    def save_pretrained(self, directory: str) -> None:
        """Write ``config.json`` + ``model.safetensors`` atomically (see effzoo.pretrained)."""
        from ..pretrained import save_pretrained

        save_pretrained(self, directory)
