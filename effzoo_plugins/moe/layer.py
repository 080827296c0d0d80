"""The MoE feed-forward: a router, E SwiGLU experts run by grouped GEMMs, an optional shared expert."""
from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from effzoo import plugin
from effzoo.plugin import Component, ConfigError, FeedForward, MixContext, ModelConfig, Routing, build_component

from . import MOE_OPTIONS
from .dispatch import configured_backend, moe_swiglu


class SharedExpert(FeedForward):
    """The always-on dense SwiGLU expert beside the routed ones: down(silu(gate(x)) * up(x))."""

    residual_projections = ("down_proj",)

    def __init__(self, d_model: int, hidden: int, bias: bool = False) -> None:
        super().__init__()
        self.gate_up_proj = nn.Linear(d_model, 2 * hidden, bias=bias)
        self.down_proj = nn.Linear(hidden, d_model, bias=bias)

    def forward(self, x: Tensor, ctx: MixContext | None = None) -> Tensor:
        gate, up = self.gate_up_proj(x).chunk(2, dim=-1)
        return self.down_proj(F.silu(gate) * up)

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Hidden-channel split, as the dense SwiGLU: gate and up split per segment, down reduces."""
        tp = plugin.tensor_parallel
        hidden = self.down_proj.in_features
        tp.check_divides("moe shared expert", tp_size, shared_expert_hidden=hidden)
        return {"gate_up_proj": tp.FusedColwiseParallel((hidden, hidden)), "down_proj": tp.rowwise()}


class GroupedExperts(Component):
    """E bias-free SwiGLU experts stored as stacked weights in ``nn.Linear`` layout."""

    def __init__(self, n_experts: int, d_model: int, hidden: int, init_std: float, residual_std: float) -> None:
        super().__init__()
        self.init_std, self.residual_std = init_std, residual_std
        self.gate_up_proj = nn.Parameter(torch.empty(n_experts, 2 * hidden, d_model))  # gate rows, then up rows
        self.down_proj = nn.Parameter(torch.empty(n_experts, d_model, hidden))
        self.ep_mesh: Any = None  # the expert-parallel group once ExpertParallel sharded the experts over it

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Nothing of its own: the MoE layer's plan shards the experts (ExpertParallel)."""
        return {}

    def supports_context_parallel(self) -> bool:
        """Experts work per token, so any shard of the sequence is right (the router's balance loss is
        then each shard's, averaged over the ranks, as under data parallelism)."""
        return True

    def params_per_expert(self) -> int:
        """Weights of one expert (gate, up and down projections)."""
        return (self.gate_up_proj.numel() + self.down_proj.numel()) // self.gate_up_proj.shape[0]

    def init_weights(self) -> None:
        nn.init.normal_(self.gate_up_proj, 0.0, self.init_std)
        nn.init.normal_(self.down_proj, 0.0, self.residual_std)


class MoEFeedForward(FeedForward):
    """x -> Σ_k weight_k · expert_k(x) (+ shared expert(x)); aux loss and per-layer stats go to ``ctx``."""

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.layer = layer
        self.n_experts, self.top_k = int(cfg.opt("n_experts")), int(cfg.opt("top_k"))
        hidden = int(cfg.opt("moe_ffn_hidden"))
        shared = int(cfg.opt("shared_expert_hidden", MOE_OPTIONS["shared_expert_hidden"].default))
        self.backend = configured_backend(cfg.kernel)
        if hidden <= 0 or shared < 0:
            raise ConfigError(f"moe_ffn_hidden must be positive and shared_expert_hidden >= 0, got {hidden}, {shared}")
        router = cfg.opt("router")
        self.router = build_component("router", router, cfg, layer)
        if (self.router.n_experts, self.router.top_k) != (self.n_experts, self.top_k):
            raise ConfigError(
                f"router {router!r} routes to n_experts={self.router.n_experts}, top_k={self.router.top_k} but the "
                f"MoE layer has n_experts={self.n_experts}, top_k={self.top_k}; a router factory must read the "
                "n_experts and top_k options"
            )
        residual_std = cfg.init_std / math.sqrt(2 * cfg.n_layers)
        self.experts = GroupedExperts(self.n_experts, cfg.d_model, hidden, cfg.init_std, residual_std)
        self.shared_expert = SharedExpert(cfg.d_model, shared, cfg.mlp_bias) if shared else None

    def forward(self, x: Tensor, ctx: MixContext | None = None) -> Tensor:
        tokens = x.reshape(-1, x.shape[-1])
        routing = self.router(tokens)
        if self.experts.ep_mesh is not None:  # expert parallel: tokens travel to the rank holding their expert
            out = plugin.tensor_parallel.expert_parallel(tokens, routing.weights, routing.experts, self.n_experts,
                                                         self.experts.ep_mesh, self._run_local_experts)
        else:
            out = moe_swiglu(tokens, routing, self.experts.gate_up_proj, self.experts.down_proj, self.backend)
        if self.shared_expert is not None:
            out = out + self.shared_expert(tokens)
        if ctx is not None:
            ctx.aux_losses.append(routing.aux_loss)
            ctx.stats.update({f"moe.layer{self.layer}.{name}": value for name, value in routing.stats.items()})
        return out.view_as(x)

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """Expert parallel over the tensor-parallel group: each rank holds n_experts / tp whole experts and
        receives the tokens routed to them by all-to-all; the router (and its aux loss) runs whole on every rank."""
        tp = plugin.tensor_parallel
        tp.check_divides("moe feed-forward", tp_size, n_experts=self.n_experts)
        return {"experts": tp.ExpertParallel()}

    def _run_local_experts(self, rows: Tensor, local_experts: Tensor) -> Tensor:
        """Rows (M, d) through this rank's experts ``local_experts`` (M,), one assignment each."""
        ones = torch.ones(rows.shape[0], 1, device=rows.device, dtype=rows.dtype)
        routing = Routing(weights=ones, experts=local_experts[:, None], keep=ones.bool(),
                          aux_loss=torch.zeros((), device=rows.device))
        return moe_swiglu(rows, routing, self.experts.gate_up_proj.to_local(), self.experts.down_proj.to_local(),
                          self.backend)

    def inactive_params(self) -> int:
        """Expert weights a token does not use: (E - k) experts."""
        return (self.n_experts - self.top_k) * self.experts.params_per_expert()


def moe_ffn(cfg: ModelConfig, layer: int = 0) -> MoEFeedForward:
    """The ``moe`` feed-forward factory."""
    return MoEFeedForward(cfg, layer)
