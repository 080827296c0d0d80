"""Native Sparse Attention (arXiv 2502.11089) as an effzoo plugin: attention ``nsa`` and variant ``nsa``.

Layout: ``settings`` (presets, options, validation), ``reference`` (pure-PyTorch oracle),
``flex`` (FlexAttention block-mask fast path), ``cache`` (decoding state), ``layer`` (the module).
The layer is imported at build time so ``import effzoo`` stays light.
"""
from __future__ import annotations

from typing import Any

from effzoo.hookspecs import hookimpl
from effzoo.registry import Capabilities

from .settings import OPTIONS, PRESETS

_DESCRIPTION = (
    "Native Sparse Attention: gated compressed + top-n selected blocks (shared per GQA group) + sliding window; "
    f"presets {', '.join(PRESETS)} (option nsa_preset)"
)


@hookimpl
def effzoo_register(register: Any) -> None:
    register.add_attention(
        "nsa", "effzoo_plugins.attention_nsa.layer:nsa", aliases=["native_sparse"], options=OPTIONS,
        capabilities=Capabilities(fast_path="flex"), description=_DESCRIPTION,
    )
    register.add_variant(
        "nsa", family="qwen2.5", group="attention", defaults={"attention": "nsa"},
        aliases=["native_sparse_attention"],
        capabilities=Capabilities(fast_path="flex", positions=("rope", "absolute", "learned", "none")),
        description="Native Sparse Attention on the Qwen2.5 shape (Yuan et al. 2025, arXiv 2502.11089)",
    )
