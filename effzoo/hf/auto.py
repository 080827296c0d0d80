"""Register effzoo with transformers' Auto classes (idempotent)."""
from __future__ import annotations


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForCausalLM`` load directories whose model_type is ``"effzoo"``."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from .config import EffzooConfig
    from .modeling import EffzooForCausalLM

    AutoConfig.register(EffzooConfig.model_type, EffzooConfig, exist_ok=True)
    AutoModelForCausalLM.register(EffzooConfig, EffzooForCausalLM, exist_ok=True)
