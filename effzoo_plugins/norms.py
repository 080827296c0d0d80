"""The normalisation layers: RMSNorm (Qwen2.5, Mamba) and LayerNorm (GPT-NeoX, RWKV)."""
from __future__ import annotations

from effzoo import plugin


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_norm("rmsnorm", plugin.rmsnorm, aliases=["rms"], description="RMSNorm (F.rms_norm)")
    register.add_norm("layernorm", plugin.layernorm, aliases=["ln"], description="LayerNorm with bias")
