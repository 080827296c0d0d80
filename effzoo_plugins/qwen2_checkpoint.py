"""Qwen2 (transformers ``Qwen2ForCausalLM``) -> effzoo ``gqa``: fused q/k/v and gate/up projections.

The checkpoint format of the transformer plugin, which owns these parameter paths (block norms and
``mixer``/``ffn`` of the GQA attention and SwiGLU it builds by default); imported only when a Qwen2
checkpoint is read.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from effzoo import make_config
from effzoo.plugin import ModelConfig, TensorCursor, rope_settings
from effzoo.plugin import unsupported_checkpoint as unsupported

MODEL_TYPE = "qwen2"
IGNORED = (r"rotary_emb\.inv_freq$",)


def to_config(hf: Any) -> ModelConfig:
    """The ``gqa`` config with the checkpoint's shapes; raises on features effzoo does not reproduce."""
    if hf.hidden_act != "silu":
        raise unsupported(MODEL_TYPE, f"hidden_act={hf.hidden_act!r} (only 'silu', the SwiGLU of Qwen2)")
    layer_types = getattr(hf, "layer_types", None) or ["full_attention"] * hf.num_hidden_layers
    windowed = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    if windowed:
        raise unsupported(MODEL_TYPE, f"sliding-window attention (use_sliding_window=True, layers {windowed})")
    theta, partial = rope_settings(hf, MODEL_TYPE)
    if partial != 1.0:
        raise unsupported(MODEL_TYPE, f"partial_rotary_factor={partial}")
    head_dim = getattr(hf, "head_dim", None) or hf.hidden_size // hf.num_attention_heads
    return make_config(
        "gqa", "tiny", vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads, n_kv_heads=hf.num_key_value_heads, head_dim=head_dim,
        ffn_hidden=hf.intermediate_size, max_seq_len=hf.max_position_embeddings, norm_eps=hf.rms_norm_eps,
        rope_theta=theta, tie_embeddings=bool(hf.tie_word_embeddings), qkv_bias=True, out_bias=False,
        mlp_bias=False, init_std=hf.initializer_range,
    )


def to_state_dict(cursor: TensorCursor, config: ModelConfig) -> dict[str, Tensor]:
    """effzoo tensors from the checkpoint's (``model.``-prefixed) Qwen2 tensors."""
    prefix = "model." if cursor.has("model.embed_tokens.weight") else ""  # Qwen2ForCausalLM or Qwen2Model

    def take(name: str) -> Tensor:
        return cursor.take(prefix + name)

    state = {"embed.weight": take("embed_tokens.weight"), "norm.weight": take("norm.weight")}
    for i in range(config.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        attn = f"{src}.self_attn"
        for kind in ("weight", "bias"):
            state[f"{dst}.mixer.qkv_proj.{kind}"] = torch.cat(
                [take(f"{attn}.{p}_proj.{kind}") for p in ("q", "k", "v")], dim=0
            )
        state[f"{dst}.mixer.out_proj.weight"] = take(f"{attn}.o_proj.weight")
        state[f"{dst}.attn_norm.weight"] = take(f"{src}.input_layernorm.weight")
        state[f"{dst}.ffn_norm.weight"] = take(f"{src}.post_attention_layernorm.weight")
        state[f"{dst}.ffn.gate_up_proj.weight"] = torch.cat(
            [take(f"{src}.mlp.gate_proj.weight"), take(f"{src}.mlp.up_proj.weight")], dim=0
        )
        state[f"{dst}.ffn.down_proj.weight"] = take(f"{src}.mlp.down_proj.weight")
    if config.tie_embeddings:
        cursor.drop("lm_head.weight")  # saved copies of the tied embedding
    else:
        state["head.weight"] = cursor.take("lm_head.weight")
    cursor.finish(IGNORED)
    return state
