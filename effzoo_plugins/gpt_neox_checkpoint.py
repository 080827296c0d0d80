"""GPT-NeoX / Pythia (transformers ``GPTNeoXForCausalLM``) -> effzoo ``pythia``.

GPT-NeoX's ``query_key_value`` interleaves per head, rows ordered (head, [q|k|v], head_dim);
effzoo's ``qkv_proj`` stores all queries, then all keys, then all values. The checkpoint format of the
pythia plugin; imported only when a GPT-NeoX checkpoint is read.
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from effzoo import make_config
from effzoo.plugin import ModelConfig, TensorCursor, rope_settings
from effzoo.plugin import unsupported_checkpoint as unsupported

MODEL_TYPE = "gpt_neox"
IGNORED = (r"attention\.bias$", r"attention\.masked_bias$", r"rotary_emb\.inv_freq$")


def to_config(hf: Any) -> ModelConfig:
    """The ``pythia`` config with the checkpoint's shapes; raises on features effzoo does not reproduce."""
    if hf.hidden_act != "gelu":
        raise unsupported(MODEL_TYPE, f"hidden_act={hf.hidden_act!r} (only exact 'gelu')")
    theta, partial = rope_settings(hf, MODEL_TYPE)
    head_dim = hf.hidden_size // hf.num_attention_heads
    if int(head_dim * partial) % 2:
        raise unsupported(MODEL_TYPE, f"an odd rotary width int({head_dim} * {partial})")
    return make_config(
        "pythia", "tiny", vocab_size=hf.vocab_size, d_model=hf.hidden_size, n_layers=hf.num_hidden_layers,
        n_heads=hf.num_attention_heads, n_kv_heads=hf.num_attention_heads, head_dim=head_dim,
        ffn_hidden=hf.intermediate_size, max_seq_len=hf.max_position_embeddings, norm_eps=hf.layer_norm_eps,
        parallel_residual=bool(hf.use_parallel_residual), rope_theta=theta, rotary_pct=partial,
        qkv_bias=bool(hf.attention_bias), out_bias=bool(hf.attention_bias), mlp_bias=True,
        tie_embeddings=bool(hf.tie_word_embeddings), init_std=hf.initializer_range,
    )


def split_heads_qkv(fused: Tensor, n_heads: int, head_dim: int) -> Tensor:
    """(head, [q|k|v], head_dim)-ordered rows -> ([q|k|v], head, head_dim) rows; weight or bias."""
    rest = fused.shape[1:]
    return fused.reshape(n_heads, 3, head_dim, *rest).transpose(0, 1).reshape(3 * n_heads * head_dim, *rest)


def to_state_dict(cursor: TensorCursor, config: ModelConfig) -> dict[str, Tensor]:
    """effzoo tensors from the checkpoint's (``gpt_neox.``-prefixed) GPT-NeoX tensors."""
    prefix = "gpt_neox." if cursor.has("gpt_neox.embed_in.weight") else ""  # GPTNeoXForCausalLM or GPTNeoXModel

    def take(name: str) -> Tensor:
        return cursor.take(prefix + name)

    kinds = ("weight", "bias")
    state = {"embed.weight": take("embed_in.weight")}
    state.update({f"norm.{k}": take(f"final_layer_norm.{k}") for k in kinds})
    attention_kinds = kinds if config.qkv_bias else ("weight",)
    for i in range(config.n_layers):
        src, dst = f"layers.{i}", f"blocks.{i}"
        for k in kinds:
            state[f"{dst}.attn_norm.{k}"] = take(f"{src}.input_layernorm.{k}")
            state[f"{dst}.ffn_norm.{k}"] = take(f"{src}.post_attention_layernorm.{k}")
            state[f"{dst}.ffn.up_proj.{k}"] = take(f"{src}.mlp.dense_h_to_4h.{k}")
            state[f"{dst}.ffn.down_proj.{k}"] = take(f"{src}.mlp.dense_4h_to_h.{k}")
        for k in attention_kinds:
            qkv = take(f"{src}.attention.query_key_value.{k}")
            state[f"{dst}.mixer.qkv_proj.{k}"] = split_heads_qkv(qkv, config.n_heads, config.head_dim)
            state[f"{dst}.mixer.out_proj.{k}"] = take(f"{src}.attention.dense.{k}")
    head_name = "lm_head.weight" if cursor.has("lm_head.weight") else "embed_out.weight"
    if config.tie_embeddings:
        cursor.drop(head_name)
    else:
        state["head.weight"] = cursor.take(head_name)
    cursor.finish(IGNORED)
    return state
