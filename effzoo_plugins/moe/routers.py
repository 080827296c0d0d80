"""Token-to-expert routers: softmax top-k (optional input jitter) and noisy top-k gating.

A router scores every token against every expert, keeps the ``top_k`` best, renormalises their
weights, applies the expert capacity (training only) and computes the auxiliary losses:

- load balance (Switch Transformer): ``E · Σ_e f_e · P_e`` where ``f_e`` is the fraction of the N·k
  assignments that chose expert e (before capacity) and ``P_e`` the mean router probability of e.
  It equals 1 for a uniform router and E/k when every token picks the same k experts.
- z-loss (ST-MoE): ``mean_n logsumexp(logits_n)²``, keeps router logits small.

Capacity: each expert takes at most ``ceil(capacity_factor · N · k / E)`` assignments per call.
Priority is slot-major, then token order: every token's first choice is served before any
second choice, and within a slot earlier tokens (flattened batch × sequence order) win.
Capacity applies in training only, so evaluation and cached decoding never drop tokens.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo.plugin import ConfigError, ModelConfig, Router, Routing

from . import ROUTER_OPTIONS


def expert_capacity(n_tokens: int, top_k: int, n_experts: int, capacity_factor: float) -> int:
    """Assignments one expert accepts: ceil(capacity_factor · N · k / E)."""
    return math.ceil(capacity_factor * n_tokens * top_k / n_experts)


def expert_counts(experts: Tensor, n_experts: int, mask: Tensor | None = None) -> Tensor:
    """Assignments per expert (int64, (E,)), optionally only where ``mask``; no host sync, unlike bincount."""
    flat = experts.reshape(-1)
    ones = torch.ones_like(flat) if mask is None else mask.reshape(-1).long()
    return torch.zeros(n_experts, dtype=torch.long, device=flat.device).scatter_add_(0, flat, ones)


def capacity_keep(experts: Tensor, n_experts: int, capacity: int) -> Tensor:
    """(N, k) expert ids -> (N, k) bool, False for assignments past their expert's capacity.

    Priority: slot-major (all first choices before second choices), then token index.
    """
    n_tokens, top_k = experts.shape
    flat = experts.t().reshape(-1)  # slot-major order = priority order
    order = torch.argsort(flat, stable=True)
    counts = expert_counts(flat, n_experts)
    starts = counts.cumsum(0) - counts
    rank_sorted = torch.arange(flat.numel(), device=flat.device) - starts[flat[order]]
    rank = torch.empty_like(rank_sorted).scatter_(0, order, rank_sorted)
    return (rank < capacity).view(top_k, n_tokens).t()


def load_balance_loss(probs: Tensor, experts: Tensor, n_experts: int) -> Tensor:
    """Switch-style E · Σ_e f_e · P_e (probs (N, E) float, experts (N, k) chosen before capacity)."""
    fraction = expert_counts(experts, n_experts).to(probs.dtype) / experts.numel()
    return n_experts * (fraction * probs.mean(0)).sum()


def z_loss(logits: Tensor) -> Tensor:
    """ST-MoE router z-loss: mean over tokens of logsumexp(logits)²."""
    return torch.logsumexp(logits, dim=-1).square().mean()


class TopKRouter(Router):
    """Softmax over a linear gate, top-k experts per token, weights renormalised over the k."""

    def __init__(
        self, d_model: int, n_experts: int, top_k: int, *, capacity_factor: float | None = None,
        aux_loss_coef: float = 0.01, z_loss_coef: float = 0.001, jitter: float = 0.0,
        normalize_weights: bool = True,
    ) -> None:
        super().__init__()
        if n_experts < 1 or not 1 <= top_k <= n_experts:
            raise ConfigError(f"MoE needs n_experts >= 1 and 1 <= top_k <= n_experts, got n_experts={n_experts}, top_k={top_k}")
        if capacity_factor is not None and capacity_factor <= 0:
            raise ConfigError(f"capacity_factor must be positive or None (no dropping), got {capacity_factor}")
        if not 0.0 <= jitter < 1.0:
            raise ConfigError(f"router_jitter must be in [0, 1), got {jitter}")
        self.n_experts, self.top_k = n_experts, top_k
        self.capacity_factor = capacity_factor
        self.aux_loss_coef, self.z_loss_coef = aux_loss_coef, z_loss_coef
        self.jitter, self.normalize_weights = jitter, normalize_weights
        self.gate = nn.Linear(d_model, n_experts, bias=False)

    def logits(self, x: Tensor) -> Tensor:
        """Router logits in float32, (N, d) -> (N, E); multiplicative input jitter while training."""
        if self.training and self.jitter > 0:
            x = x * torch.empty_like(x).uniform_(1.0 - self.jitter, 1.0 + self.jitter)
        with torch.autocast(x.device.type, enabled=False):
            return F.linear(x.float(), self.gate.weight.float())

    def forward(self, x: Tensor) -> Routing:
        logits = self.logits(x)
        probs = logits.softmax(dim=-1)
        weights, experts = probs.topk(self.top_k, dim=-1)
        if self.normalize_weights:
            weights = weights / weights.sum(dim=-1, keepdim=True)
        if self.training and self.capacity_factor is not None:
            capacity = expert_capacity(x.shape[0], self.top_k, self.n_experts, self.capacity_factor)
            keep = capacity_keep(experts, self.n_experts, capacity)
            weights = weights * keep
        else:
            keep = torch.ones_like(experts, dtype=torch.bool)
        balance = load_balance_loss(probs, experts, self.n_experts)
        z = z_loss(logits)
        with torch.no_grad():
            stats = {
                "tokens_per_expert": expert_counts(experts, self.n_experts, keep),
                "dropped_fraction": 1.0 - keep.float().mean(),
                "router_entropy": torch.special.entr(probs).sum(-1).mean(),
                "load_balance_loss": balance.detach(),
                "z_loss": z.detach(),
            }
        aux = self.aux_loss_coef * balance + self.z_loss_coef * z
        return Routing(weights=weights, experts=experts, keep=keep, aux_loss=aux, stats=stats)


class NoisyTopKRouter(TopKRouter):
    """Noisy top-k gating (Shazeer et al. 2017): logits + N(0, 1) · softplus(x · W_noise) while training."""

    def __init__(self, d_model: int, n_experts: int, top_k: int, **kw: object) -> None:
        super().__init__(d_model, n_experts, top_k, **kw)
        self.noise = nn.Linear(d_model, n_experts, bias=False)

    def logits(self, x: Tensor) -> Tensor:
        clean = super().logits(x)
        if not self.training:
            return clean
        with torch.autocast(x.device.type, enabled=False):
            scale = F.softplus(F.linear(x.float(), self.noise.weight.float()))
        return clean + torch.randn_like(clean) * scale

    def init_weights(self) -> None:
        nn.init.zeros_(self.noise.weight)  # as Shazeer et al.: noise std starts at softplus(0) ≈ 0.69, then learned


def _router_kwargs(cfg: ModelConfig) -> dict[str, object]:
    """The shared router options (ROUTER_OPTIONS' defaults where a config predates an option)."""
    def option(name: str) -> object:
        return cfg.opt(name, ROUTER_OPTIONS[name].default)

    factor = option("capacity_factor")
    return dict(
        capacity_factor=None if factor is None else float(factor),
        aux_loss_coef=float(option("aux_loss_coef")), z_loss_coef=float(option("z_loss_coef")),
        normalize_weights=bool(option("normalize_router_weights")),
    )


def topk_router(cfg: ModelConfig, layer: int = 0) -> TopKRouter:
    """The ``topk`` router factory."""
    return TopKRouter(cfg.d_model, int(cfg.opt("n_experts")), int(cfg.opt("top_k")),
                      jitter=float(cfg.opt("router_jitter", 0.0)), **_router_kwargs(cfg))


def noisy_topk_router(cfg: ModelConfig, layer: int = 0) -> NoisyTopKRouter:
    """The ``noisy_topk`` router factory."""
    return NoisyTopKRouter(cfg.d_model, int(cfg.opt("n_experts")), int(cfg.opt("top_k")), **_router_kwargs(cfg))
