"""Mixture of Experts: routers (``topk``, ``noisy_topk``), the ``moe`` feed-forward and the ``moe`` variant.

``effzoo.build("moe", size="0.5Bx8")`` is Qwen2.5-0.5B with every FFN replaced by 8 experts of the
same size, top-2 routing; ``ffn="moe"`` puts the same layer into any other variant.
See docs/moe.md.
"""
from __future__ import annotations

from typing import Any

from effzoo.hookspecs import hookimpl
from effzoo.registry import Capabilities

MOE_OPTIONS: dict[str, Any] = {
    "n_experts": 8,
    "top_k": 2,
    "router": "topk",
    "moe_ffn_hidden": lambda config: config["ffn_hidden"],
    "shared_expert_hidden": 0,
    "moe_backend": "auto",
}

ROUTER_OPTIONS: dict[str, Any] = {
    "capacity_factor": None,
    "aux_loss_coef": 0.01,
    "z_loss_coef": 0.001,
    "normalize_router_weights": True,
}


@hookimpl
def effzoo_register(register: Any) -> None:
    register.add_ffn(
        "moe", "effzoo_plugins.moe.layer:moe_ffn", options=MOE_OPTIONS, aliases=["mixture_of_experts"],
        capabilities=Capabilities(moe=True, fast_path="grouped_mm"),
        description="Mixture of SwiGLU experts, sorted dispatch + grouped GEMM, optional shared expert",
    )
    register.add_router(
        "topk", "effzoo_plugins.moe.routers:topk_router", options={**ROUTER_OPTIONS, "router_jitter": 0.0},
        aliases=["top_k", "softmax_topk", "switch"],
        description="Softmax top-k gating, renormalised weights, capacity, balance + z losses, input jitter",
    )
    register.add_router(
        "noisy_topk", "effzoo_plugins.moe.routers:noisy_topk_router", options=dict(ROUTER_OPTIONS),
        aliases=["noisy"],
        description="Noisy top-k gating (Shazeer et al. 2017): learned per-expert Gaussian logit noise",
    )
    register.add_variant(
        "moe", family="qwen2.5", group="moe", defaults={"ffn": "moe"}, aliases=["mixture_of_experts"],
        capabilities=Capabilities(moe=True, fast_path="grouped_mm"),
        description="Qwen2.5 with every FFN a mixture of experts, 8 experts top-2 (sizes '0.5Bx8', '1.5Bx8')",
    )
