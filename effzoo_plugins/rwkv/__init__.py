"""RWKV-7 ("Goose", Peng et al. 2025) as the attention-free ``rwkv`` variant.

Modules: ``reference`` (per-token oracle + chunked PyTorch form), ``block`` (token shift, time-mix,
channel-mix, the MixerBlock), ``kernels`` (dispatch, flash-linear-attention detection),
``triton_chunk`` (own Triton chunk scan, imported only when used). See docs/rwkv.md.
"""
from __future__ import annotations

from typing import Any

from effzoo import plugin
from effzoo.plugin import Capabilities
from effzoo_plugins.common import QWEN25_VOCAB


def lora_rank(d_model: int, scale: float, power: float) -> int:
    """Default width of a data-dependent low-rank projection: scale·d^power rounded to 32, at least 32."""
    return max(32, int(round(scale * d_model**power / 32)) * 32)


def _rank(scale: float, power: float) -> Any:
    return lambda c: lora_rank(c["d_model"], scale, power)


BLOCK_OPTIONS: dict[str, Any] = {
    "rwkv_head_size": plugin.positive_int(64),
    "rwkv_decay_lora": plugin.positive_int(_rank(1.8, 0.5)),
    "rwkv_iclr_lora": plugin.positive_int(_rank(1.8, 0.5)),
    "rwkv_value_lora": plugin.positive_int(_rank(1.3, 0.5)),
    "rwkv_gate_lora": plugin.positive_int(_rank(0.6, 0.8)),
    "rwkv_value_residual": plugin.Option(True, bool),
    "rwkv_chunk_size": plugin.positive_int(None),  # None: 32 tokens (PyTorch form), 64 (Triton scan)
}

_REAL = dict(vocab_size=QWEN25_VOCAB, max_seq_len=32_768)
RWKV_SIZES = {
    "tiny": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=2, n_kv_heads=2, ffn_hidden=512, max_seq_len=1024),
    "small": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=4, n_kv_heads=4, ffn_hidden=1024,
                  max_seq_len=2048),
    "0.5B": dict(_REAL, d_model=1024, n_layers=24, n_heads=16, n_kv_heads=16, ffn_hidden=4096),
    "1.5B": dict(_REAL, d_model=2048, n_layers=32, n_heads=32, n_kv_heads=32, ffn_hidden=8192),
    "3B": dict(_REAL, d_model=2560, n_layers=40, n_heads=40, n_kv_heads=40, ffn_hidden=10240),
}

RWKV7_DEFAULTS = dict(block="rwkv7", norm_eps=1e-5, tie_embeddings=False)


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_block(
        "rwkv7", "effzoo_plugins.rwkv.block:rwkv7_block", aliases=["rwkv", "goose"], options=BLOCK_OPTIONS, uses={"norm": "layernorm"},
        kernels=("fla", "triton", "torch"),
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="fla/triton"),
        description="RWKV-7 time-mix (generalised delta rule) + squared-ReLU channel-mix, with token shift",
    )
    register.add_sizes("rwkv", RWKV_SIZES)
    register.add_variant(
        "rwkv", family="rwkv", group="attention-free", aliases=["rwkv7", "goose"], defaults=RWKV7_DEFAULTS,
        capabilities=Capabilities(kv_cache=False, recurrent=True, fast_path="fla/triton", positions=("none",),
                                  quick_recall=True),
        description="RWKV-7 'Goose': attention-free recurrent mixer with a generalised delta rule (Peng et al. 2025)",
    )
    register.add_suite_method("attention-free", "RWKV", "rwkv", order=3)
