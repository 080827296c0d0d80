"""NSA hyper-parameters: the two presets, the declared config options, and their validation."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from effzoo.plugin import ConfigError, ModelConfig, UnknownNameError

DEFAULT_PRESET = "paper"

PRESETS: dict[str, dict[str, Any]] = {
    # arXiv 2502.11089 §4: l=32, d=16, l'=64, n=16 (1 initial + 2 local), w=512, separate K/V per branch.
    "paper": dict(compress_block=32, compress_stride=16, select_block=64, selected_blocks=16,
                  initial_blocks=1, local_blocks=2, window=512, shared_kv=False),
    # EfficientLLM scripts: window 128, compression block 64 (non-overlapping), 4 selected blocks,
    # one set of keys/values; the initial/local split of the 4 is effzoo's choice (their top-k had none).
    "efficientllm": dict(compress_block=64, compress_stride=64, select_block=64, selected_blocks=4,
                         initial_blocks=1, local_blocks=1, window=128, shared_kv=True),
}


def preset_values(options: dict[str, Any]) -> dict[str, Any]:
    """The preset named by ``options["nsa_preset"]`` (default ``paper``)."""
    name = str(options.get("nsa_preset", DEFAULT_PRESET)).lower().replace("-", "_")
    if name not in PRESETS:
        raise UnknownNameError("NSA preset (option nsa_preset)", name, PRESETS)
    return PRESETS[name]


def _from_preset(field: str) -> Any:
    return lambda values: preset_values(values["options"])[field]


def _default_hidden(values: dict[str, Any]) -> int:
    return int(values["head_dim"] or values["d_model"] // values["n_heads"])


OPTIONS: dict[str, Any] = {
    "nsa_preset": DEFAULT_PRESET,
    "nsa_compress_block": _from_preset("compress_block"),
    "nsa_compress_stride": _from_preset("compress_stride"),
    "nsa_select_block": _from_preset("select_block"),
    "nsa_selected_blocks": _from_preset("selected_blocks"),
    "nsa_initial_blocks": _from_preset("initial_blocks"),
    "nsa_local_blocks": _from_preset("local_blocks"),
    "nsa_window": _from_preset("window"),
    "nsa_shared_kv": _from_preset("shared_kv"),
    "nsa_compress_hidden": _default_hidden,
}
"""Every NSA setting is a declared option; preset-backed defaults follow ``nsa_preset``."""


@dataclass(frozen=True)
class NSASettings:
    """Validated NSA settings (token counts unless named otherwise)."""

    compress_block: int = 32  # l: tokens per compressed block
    compress_stride: int = 16  # d: distance between compressed block starts
    select_block: int = 64  # l': tokens per selection block
    selected_blocks: int = 16  # n: blocks each query attends to, forced ones included
    initial_blocks: int = 1  # always-selected blocks at the start of the sequence
    local_blocks: int = 2  # always-selected blocks ending with the query's own block
    window: int = 512  # w: sliding-window length, the query included
    compress_hidden: int = 64  # hidden width of the compressor MLP
    shared_kv: bool = False  # one key/value set for all branches instead of one per branch

    def __post_init__(self) -> None:
        positive = ("compress_block", "compress_stride", "select_block", "selected_blocks", "window", "compress_hidden")
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"nsa_{name} must be a positive integer, got {value!r}")
        for name in ("initial_blocks", "local_blocks"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ConfigError(f"nsa_{name} must be a non-negative integer, got {value!r}")
        if self.compress_stride > self.compress_block:
            raise ConfigError(
                f"nsa_compress_stride={self.compress_stride} > nsa_compress_block={self.compress_block} would skip "
                "tokens between compressed blocks; use a stride no larger than the block"
            )
        if self.initial_blocks + self.local_blocks > self.selected_blocks:
            raise ConfigError(
                f"nsa_selected_blocks={self.selected_blocks} must include the {self.initial_blocks} initial and "
                f"{self.local_blocks} local blocks that are always selected; raise it or lower those"
            )
        if not isinstance(self.shared_kv, bool):
            raise ConfigError(f"nsa_shared_kv must be true or false, got {self.shared_kv!r}")

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> NSASettings:
        """Settings from ``cfg.options``, falling back to the chosen preset."""
        chosen = {name: cfg.opt(f"nsa_{name}", default) for name, default in preset_values(cfg.options).items()}
        return cls(**chosen, compress_hidden=cfg.opt("nsa_compress_hidden", cfg.head_dim))

    def n_compressed(self, length: int) -> int:
        """Compressed blocks complete once ``length`` tokens exist: block i covers [i·d, i·d + l)."""
        return 0 if length < self.compress_block else (length - self.compress_block) // self.compress_stride + 1

    def n_select_blocks(self, length: int) -> int:
        """Selection blocks (the last possibly partial) covering ``length`` tokens."""
        return -(-length // self.select_block)
