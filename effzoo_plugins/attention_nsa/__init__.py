"""Native Sparse Attention (arXiv 2502.11089) as an effzoo plugin: attention ``nsa`` and variant ``nsa``.

Layout: ``settings`` (presets, options, validation), ``reference`` (pure-PyTorch oracle),
``flex`` (FlexAttention block-mask fast path), ``cache`` (decoding state), ``layer`` (the module).
The layer is imported at build time so ``import effzoo`` stays light.
"""
from __future__ import annotations

from effzoo import plugin
from effzoo.plugin import Capabilities

from .settings import OPTIONS, PRESETS

_DESCRIPTION = (
    "Native Sparse Attention: gated compressed + top-n selected blocks (shared per GQA group) + sliding window; "
    f"presets {', '.join(PRESETS)} (option nsa_preset)"
)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_attention(
        "nsa", "effzoo_plugins.attention_nsa.layer:nsa", aliases=["native_sparse"], options=OPTIONS,
        capabilities=Capabilities(fast_path="flex"), description=_DESCRIPTION,
    )
    register.add_variant(
        "nsa", family="qwen2.5", group="attention", defaults={"block": "transformer", "position": "rope", "attention": "nsa"},
        aliases=["native_sparse_attention"],
        capabilities=Capabilities(fast_path="flex", positions=("rope", "absolute", "learned", "none")),
        description="Native Sparse Attention on the Qwen2.5 shape (Yuan et al. 2025, arXiv 2502.11089)",
    )
    register.add_suite_method("attention", "NSA", "nsa", order=3)
