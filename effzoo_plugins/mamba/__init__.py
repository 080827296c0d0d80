"""Mamba-2 (SSD) as ``mamba`` and Mamba-1 (selective scan) as ``mamba1``: blocks, sizes, variants.

Heavy pieces load at build time: the block factories are ``"module:attr"`` strings, the Triton
kernels import only when the ``kernel`` setting resolves to ``triton``, mamba-ssm only when it is chosen.
"""
from __future__ import annotations

from typing import Any

from effzoo import plugin
from effzoo.plugin import Capabilities
from effzoo_plugins.common import QWEN25_VOCAB

MAMBA_SIZES = {
    "tiny": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=384,
                 max_seq_len=1024),
    "small": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, n_kv_heads=2, ffn_hidden=768,
                  max_seq_len=2048),
    "0.5B": dict(vocab_size=QWEN25_VOCAB, d_model=768, n_layers=24, n_heads=12, n_kv_heads=2, ffn_hidden=2304,
                 max_seq_len=32_768),
    "1.5B": dict(vocab_size=QWEN25_VOCAB, d_model=1536, n_layers=48, n_heads=24, n_kv_heads=2, ffn_hidden=4608,
                 max_seq_len=32_768),
    "3B": dict(vocab_size=QWEN25_VOCAB, d_model=2560, n_layers=64, n_heads=40, n_kv_heads=2, ffn_hidden=7680,
               max_seq_len=32_768),
}
"""EfficientLLM's Mamba shapes (layers 24/48/64, hidden 768/1536/2560). ``n_heads``/``n_kv_heads`` and
``ffn_hidden`` matter only when a hybrid schedule adds attention layers or an FFN."""

SHARED_OPTIONS: dict[str, Any] = {
    "d_state": plugin.positive_int(None),  # None: the block's standard size (Mamba-2 128, Mamba-1 16)
    "d_conv": plugin.positive_int(4),
    "expand": plugin.positive_int(2),
    "chunk_size": plugin.positive_int(256),
    "dt_min": plugin.positive_float(0.001),
    "dt_max": plugin.positive_float(0.1),
}
MAMBA2_OPTIONS = {**SHARED_OPTIONS, "ssm_head_dim": plugin.positive_int(64), "n_groups": plugin.positive_int(1)}
MAMBA1_OPTIONS = {**SHARED_OPTIONS, "dt_rank": plugin.positive_int(None)}  # None: ceil(d_model / 16)

EMBEDDING_POSITIONS = ("none", "absolute", "learned")
MAMBA_KERNELS = ("triton", "mamba_ssm")  # the values of the ``kernel`` setting beyond auto / reference
MAMBA_USES = {"norm": "rmsnorm", "ffn": None}  # an FFN only when a hybrid's attention variant brings one


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_block(
        "mamba", "effzoo_plugins.mamba.block:mamba2_block", aliases=["mamba2", "ssd"], options=MAMBA2_OPTIONS,
        uses=MAMBA_USES, kernels=MAMBA_KERNELS,
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="mamba-ssm/triton"),
        description="norm → Mamba-2 SSD mixer → residual (constant-size conv + SSM state)",
    )
    register.add_block(
        "mamba1", "effzoo_plugins.mamba.block:mamba1_block", aliases=["selective_scan"], options=MAMBA1_OPTIONS,
        uses=MAMBA_USES, kernels=MAMBA_KERNELS,
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="mamba-ssm"),
        description="norm → Mamba-1 selective-scan mixer → residual (constant-size conv + SSM state)",
    )
    register.add_sizes("mamba", MAMBA_SIZES)
    register.add_variant(
        "mamba", family="mamba", group="attention-free", aliases=["mamba2"],
        defaults={"block": "mamba", "ffn": "none", "norm_eps": 1e-5, "d_state": 128},
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="mamba-ssm/triton",
                                  positions=EMBEDDING_POSITIONS, quick_recall=True),
        description="Mamba-2: state-space duality, scalar decay per head, chunked scan (Dao & Gu 2024)",
    )
    register.add_variant(
        "mamba1", family="mamba", group="attention-free",
        defaults={"block": "mamba1", "ffn": "none", "norm_eps": 1e-5, "d_state": 16},
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="mamba-ssm",
                                  positions=EMBEDDING_POSITIONS),
        description="Mamba-1: selective state space with per-channel decay (Gu & Dao 2023)",
    )
    register.add_suite_method("attention-free", "Mamba", "mamba", order=1)
