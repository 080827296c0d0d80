"""The transformer block, the Qwen2.5 size family, the MHA / GQA / MQA variants and the attention and
attention-free benchmark groups they anchor."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from effzoo import plugin
from effzoo.plugin import Capabilities, MixContext, MixerBlock, ModelConfig
from effzoo_plugins.common import QWEN25_VOCAB


class TransformerBlock(MixerBlock):
    """norm → attention → residual → norm → FFN → residual (or GPT-NeoX's parallel residual).

    ``ffn="none"`` gives a mixer-only block.
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.attn_norm = plugin.make_norm(cfg)
        self.mixer = plugin.build_component("attention", cfg.attention, cfg, layer)
        self.ffn_norm, self.ffn = plugin.optional_ffn(cfg, layer)

    def forward(self, x: Tensor, ctx: MixContext, state: Any | None = None) -> tuple[Tensor, Any | None]:
        mixed, state = self.mixer(self.attn_norm(x), ctx, state)
        if self.ffn is None:
            return x + mixed, state
        if self.parallel:
            return x + mixed + self.ffn(self.ffn_norm(x), ctx), state
        x = x + mixed
        return x + self.ffn(self.ffn_norm(x), ctx), state

    def tensor_parallel_plan(self, tp_size: int) -> dict[str, Any] | None:
        """The residual stream is whole on every rank; the attention and FFN declare their own splits."""
        return {}

    def supports_context_parallel(self) -> bool:
        """Norms and residuals work per token; the attention and FFN answer for themselves."""
        return True

    def init_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        return self.mixer.init_cache(batch, max_len, device, dtype)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return self.mixer.cache_bytes_per_token(bytes_per_value)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        return self.mixer.state_bytes(bytes_per_value)

    def extra_flops_per_token(self, seq_len: int) -> float:
        return self.mixer.extra_flops_per_token(seq_len)

    def inactive_params(self) -> int:
        return 0 if self.ffn is None else self.ffn.inactive_params()

    def supports_static_decode(self) -> bool:
        """The attention must support it, and the FFN (if any) must declare it (dense FFNs do; MoE does not)."""
        ffn_ok = self.ffn is None or self.ffn.supports_static_decode()
        return self.mixer.supports_static_decode() and ffn_ok


def transformer_block(cfg: ModelConfig, layer: int = 0) -> TransformerBlock:
    """The ``transformer`` block factory."""
    return TransformerBlock(cfg, layer)


QWEN25 = dict(vocab_size=QWEN25_VOCAB, max_seq_len=32_768, rope_theta=1_000_000.0, norm_eps=1e-6,
              qkv_bias=True, tie_embeddings=True)

QWEN25_SIZES = {
    "tiny": dict(vocab_size=512, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, ffn_hidden=384,
                 max_seq_len=1024, rope_theta=10_000.0),
    "small": dict(vocab_size=512, d_model=256, n_layers=6, n_heads=8, n_kv_heads=2, ffn_hidden=704,
                  max_seq_len=2048, rope_theta=10_000.0),
    "0.5B": dict(QWEN25, d_model=896, n_layers=24, n_heads=14, n_kv_heads=2, ffn_hidden=4864),
    "1.5B": dict(QWEN25, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, ffn_hidden=8960),
    "3B": dict(QWEN25, d_model=2048, n_layers=36, n_heads=16, n_kv_heads=2, ffn_hidden=11008),
}


TRANSFORMER_USES = {"attention": "gqa", "ffn": "swiglu", "norm": "rmsnorm"}
QWEN25_BLOCK = {"block": "transformer", "position": "rope"}
PAPER_SIZES = ("0.5B", "1.5B", "3B")


@plugin.hookimpl
def effzoo_register(register: plugin.Registrar) -> None:
    register.add_block("transformer", transformer_block, aliases=["attention"], uses=TRANSFORMER_USES,
                       description="norm → attention → residual → norm → FFN → residual (parallel option)")
    register.add_sizes("qwen2.5", QWEN25_SIZES)
    register.add_variant("gqa", family="qwen2.5", group="attention", aliases=["qwen2.5", "qwen", "dense"],
                         defaults=QWEN25_BLOCK, capabilities=Capabilities(fast_path="sdpa/flex", quick_recall=True),
                         baseline=True,
                         description="Grouped-query attention, the Qwen2.5 baseline (Ainslie et al. 2023)")
    register.add_variant("mqa", family="qwen2.5", group="attention", defaults={**QWEN25_BLOCK, "n_kv_heads": 1},
                         capabilities=Capabilities(fast_path="sdpa/flex"),
                         description="Multi-query attention: one key/value head (Shazeer 2019)")
    register.add_variant("mha", family="qwen2.5", group="attention",
                         defaults={**QWEN25_BLOCK, "n_kv_heads": plugin.one_kv_head_per_query_head},
                         capabilities=Capabilities(fast_path="sdpa/flex"),
                         description="Multi-head attention: one key/value head per query head (Vaswani et al. 2017)")
    register.add_suite("attention", default_sizes=PAPER_SIZES, order=0)
    register.add_suite_method("attention", "MQA", "mqa", order=0)
    register.add_suite_method("attention", "GQA", "gqa", order=1)
    register.add_suite("attention-free", default_sizes=PAPER_SIZES, order=3)
    register.add_suite_method("attention-free", "Qwen2.5", "gqa", order=0)
    register.add_checkpoint_format("qwen2", to_config="effzoo_plugins.qwen2_checkpoint:to_config",
                                   to_state_dict="effzoo_plugins.qwen2_checkpoint:to_state_dict",
                                   description="transformers Qwen2ForCausalLM -> gqa")
