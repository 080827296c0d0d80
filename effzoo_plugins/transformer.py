"""The transformer block, the norms, the Qwen2.5 size family and the MHA / GQA / MQA variants."""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from effzoo.config import ModelConfig
from effzoo.hookspecs import hookimpl
from effzoo.interfaces import MixContext, MixerBlock
from effzoo.model.parts import build_component, layernorm, make_norm, rmsnorm
from effzoo.registry import Capabilities


def optional_ffn(cfg: ModelConfig, layer: int) -> tuple[nn.Module | None, nn.Module | None]:
    """A block's (norm, feed-forward) pair, or (None, None) when ``ffn="none"``."""
    if cfg.ffn.lower() == "none":
        return None, None
    return make_norm(cfg), build_component("ffn", cfg.ffn, cfg, layer)


def inactive_ffn_params(ffn: nn.Module | None) -> int:
    """Parameters of ``ffn`` a token does not use (the unrouted experts of an MoE); 0 for dense or no FFN."""
    inactive = getattr(ffn, "inactive_params", None)
    return inactive() if inactive is not None else 0


class TransformerBlock(MixerBlock):
    """norm → attention → residual → norm → FFN → residual (or GPT-NeoX's parallel residual).

    ``ffn="none"`` gives a mixer-only block.
    """

    def __init__(self, cfg: ModelConfig, layer: int = 0) -> None:
        super().__init__()
        self.parallel = cfg.parallel_residual
        self.attn_norm = make_norm(cfg)
        self.mixer = build_component("attention", cfg.attention, cfg, layer)
        self.ffn_norm, self.ffn = optional_ffn(cfg, layer)

    def forward(self, x: Tensor, ctx: MixContext, state: Any | None = None) -> tuple[Tensor, Any | None]:
        mixed, state = self.mixer(self.attn_norm(x), ctx, state)
        if self.ffn is None:
            return x + mixed, state
        if self.parallel:
            return x + mixed + self.ffn(self.ffn_norm(x), ctx), state
        x = x + mixed
        return x + self.ffn(self.ffn_norm(x), ctx), state

    def init_state(self, batch: int, max_len: int, device: torch.device, dtype: torch.dtype) -> Any:
        return self.mixer.init_cache(batch, max_len, device, dtype)

    def cache_bytes_per_token(self, bytes_per_value: int = 2) -> int:
        return self.mixer.cache_bytes_per_token(bytes_per_value)

    def state_bytes(self, bytes_per_value: int = 2) -> int:
        fixed = getattr(self.mixer, "state_bytes", None)
        return fixed(bytes_per_value) if fixed is not None else 0

    def extra_flops_per_token(self, seq_len: int) -> float:
        return self.mixer.extra_flops_per_token(seq_len)

    def inactive_params(self) -> int:
        return inactive_ffn_params(self.ffn)

    def supports_static_decode(self) -> bool:
        """The attention must support it, and the FFN (if any) must declare it (dense FFNs do; MoE does not)."""
        ffn_ok = self.ffn is None or getattr(self.ffn, "supports_static_decode", lambda: False)()
        return self.mixer.supports_static_decode() and ffn_ok


def transformer_block(cfg: ModelConfig, layer: int = 0) -> TransformerBlock:
    """The ``transformer`` block factory."""
    return TransformerBlock(cfg, layer)


def kv_head_per_query_head(preset: dict[str, Any]) -> int:
    """The ``n_kv_heads`` default of multi-head attention: one key/value head per query head."""
    return preset["n_heads"]


QWEN25_VOCAB = 151_936  # the Qwen2.5 tokenizer, which the EfficientLLM runs use for every architecture
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


@hookimpl
def effzoo_register(register: Any) -> None:
    register.add_block("transformer", transformer_block, aliases=["attention"],
                       description="norm → attention → residual → norm → FFN → residual (parallel option)")
    register.add_component("norm", "rmsnorm", rmsnorm, aliases=["rms"], description="RMSNorm (F.rms_norm)")
    register.add_component("norm", "layernorm", layernorm, aliases=["ln"], description="LayerNorm with bias")
    register.add_sizes("qwen2.5", QWEN25_SIZES)
    register.add_variant("gqa", family="qwen2.5", group="attention", aliases=["qwen2.5", "qwen", "dense"],
                         capabilities=Capabilities(fast_path="sdpa/flex"),
                         description="Grouped-query attention, the Qwen2.5 baseline (Ainslie et al. 2023)")
    register.add_variant("mqa", family="qwen2.5", group="attention", defaults={"n_kv_heads": 1},
                         capabilities=Capabilities(fast_path="sdpa/flex"),
                         description="Multi-query attention: one key/value head (Shazeer 2019)")
    register.add_variant("mha", family="qwen2.5", group="attention",
                         defaults={"n_kv_heads": kv_head_per_query_head},
                         capabilities=Capabilities(fast_path="sdpa/flex"),
                         description="Multi-head attention: one key/value head per query head (Vaswani et al. 2017)")
