"""Pythia (GPT-NeoX): the core TransformerBlock with a parallel residual, LayerNorm, partial rotary
(25% of each head), a GELU MLP, biases everywhere, multi-head attention and an untied head.

Vocabulary: the EfficientLLM runs train every architecture on the Qwen2.5 tokenizer, so the
0.5B / 1.5B / 3B presets use its 151,936 entries (Pythia's own tokenizer has 50,304 padded
entries: pass ``vocab_size=50304`` to build the original Pythia shape).
"""
from __future__ import annotations

from effzoo import plugin
from effzoo.plugin import Capabilities
from effzoo_plugins.common import QWEN25_VOCAB

PYTHIA = dict(vocab_size=QWEN25_VOCAB, max_seq_len=8192)

PYTHIA_SIZES = {
    "tiny": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, ffn_hidden=512, max_seq_len=1024),
    "small": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, ffn_hidden=1024, max_seq_len=2048),
    "0.5B": dict(PYTHIA, d_model=1024, n_layers=24, n_heads=16, ffn_hidden=4 * 1024),
    "1.5B": dict(PYTHIA, d_model=2048, n_layers=32, n_heads=16, ffn_hidden=4 * 2048),
    "3B": dict(PYTHIA, d_model=2560, n_layers=32, n_heads=32, ffn_hidden=4 * 2560),
}

GPT_NEOX_BLOCK = dict(
    block="transformer", attention="gqa", position="rope", ffn="gelu", norm="layernorm", norm_eps=1e-5,
    parallel_residual=True, qkv_bias=True, out_bias=True, mlp_bias=True, tie_embeddings=False,
    rope_theta=10_000.0, rotary_pct=0.25,
    n_kv_heads=plugin.one_kv_head_per_query_head,  # multi-head attention
)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_sizes("pythia", PYTHIA_SIZES)
    register.add_variant(
        "pythia", family="pythia", group="attention-free", aliases=["gpt_neox", "gptneox", "neox"],
        defaults=GPT_NEOX_BLOCK, capabilities=Capabilities(fast_path="sdpa/flex"),
        description="Pythia / GPT-NeoX: parallel attention + GELU MLP residual, LayerNorm, 25% rotary "
                    "(Biderman et al. 2023)",
    )
    register.add_suite_method("attention-free", "Pythia", "pythia", order=2)
    register.add_checkpoint_format("gpt_neox", to_config="effzoo_plugins.gpt_neox_checkpoint:to_config",
                                   to_state_dict="effzoo_plugins.gpt_neox_checkpoint:to_state_dict",
                                   description="transformers GPTNeoXForCausalLM -> pythia")
