"""Mixture of Experts: routers (``topk``, ``noisy_topk``), the ``moe`` feed-forward and the ``moe`` variant.

``effzoo.build("moe", size="0.5Bx8")`` is Qwen2.5-0.5B with every FFN replaced by 8 experts of the
same size, top-2 routing; ``ffn="moe"`` puts the same layer into any other variant.
See docs/moe.md.
"""
from __future__ import annotations

from typing import Any

from effzoo import plugin
from effzoo.plugin import Capabilities

MOE_OPTIONS: dict[str, Any] = {
    "n_experts": plugin.positive_int(8),
    "top_k": plugin.positive_int(2),
    "moe_ffn_hidden": plugin.positive_int(lambda config: config["ffn_hidden"]),
    "shared_expert_hidden": plugin.non_negative_int(0),
}

ROUTER_OPTIONS: dict[str, Any] = {
    "capacity_factor": plugin.positive_float(None),
    "aux_loss_coef": plugin.Option(0.01, float, low=0),
    "z_loss_coef": plugin.Option(0.001, float, low=0),
    "normalize_router_weights": plugin.Option(True, bool),
}


def dense_against_moe(sizes: list[str] | None) -> list[tuple[str, str, str]]:
    """The MoE group's rows: dense baselines against 8-expert top-2 models. Without sizes the paper's
    table (dense 1.5B / 3B against 0.5B×8 / 1.5B×8), else ``Dense S`` and ``MoE Sx8`` per size S."""
    if sizes is None:
        return [("Dense", "gqa", "1.5B"), ("Dense", "gqa", "3B"), ("MoE", "moe", "0.5Bx8"), ("MoE", "moe", "1.5Bx8")]
    return [row for size in sizes for row in (("Dense", "gqa", size), ("MoE", "moe", f"{size}x8"))]


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_ffn(
        "moe", "effzoo_plugins.moe.layer:moe_ffn", options=MOE_OPTIONS, aliases=["mixture_of_experts"],
        uses={"router": "topk"}, kernels=("grouped_mm", "bmm"),
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
        "moe", family="qwen2.5", group="moe", defaults={"block": "transformer", "position": "rope", "ffn": "moe"}, aliases=["mixture_of_experts"],
        capabilities=Capabilities(moe=True, fast_path="grouped_mm"),
        description="Qwen2.5 with every FFN a mixture of experts, 8 experts top-2 (sizes '0.5Bx8', '1.5Bx8')",
    )
    register.add_suite("moe", default_sizes=(), order=2, pairing=dense_against_moe)
