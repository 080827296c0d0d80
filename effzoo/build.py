"""``effzoo.build``: variant name + size preset + overrides -> a validated config -> a model."""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from .config import ModelConfig
from .errors import ConfigError, UnknownNameError, unknown_keys_error
from .registry import REGISTRY, ComponentSpec
from .sizes import parse_size

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16 (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


def _resolve(value: Any, context: dict[str, Any]) -> Any:
    """Defaults may be callables of the values chosen so far (e.g. MLA latent = d_model // 8)."""
    return value(context) if isinstance(value, Callable) else value


def _selected_components(values: dict[str, Any]) -> list[ComponentSpec]:
    """Components the config names, each resolved through aliases (raises on unknown names)."""
    picked = [
        REGISTRY.component("position", values["position"]),
        REGISTRY.component("norm", values["norm"]),
    ]
    kinds = values["layers"] or [values["block"]]
    blocks = [REGISTRY.component("block", kind) for kind in dict.fromkeys(kinds)]
    picked += blocks
    if any(b.name == "transformer" for b in blocks):
        picked.append(REGISTRY.component("attention", values["attention"]))
    if str(values["ffn"]).lower() != "none":
        ffn = REGISTRY.component("ffn", values["ffn"])
        picked.append(ffn)
        if ffn.capabilities.moe:
            picked.append(REGISTRY.component("router", values["options"].get("router", "topk")))
    return picked


def make_config(variant: str, size: str = "tiny", **overrides: Any) -> ModelConfig:
    """The validated config of ``variant`` at ``size`` with ``overrides`` (None values are ignored)."""
    spec = REGISTRY.variant(variant)
    parsed = parse_size(size)
    table = REGISTRY.size_table(spec.family)
    if parsed.name not in table:
        raise UnknownNameError(f"size for variant {spec.name!r} (family {spec.family})", size, table)
    values: dict[str, Any] = ModelConfig().to_dict()
    values.update({"head_dim": None, "options": {}})
    values.update(table[parsed.name])
    core = ModelConfig.core_fields()
    for key, value in spec.defaults.items():
        (values if key in core else values["options"])[key] = _resolve(value, values)
    if parsed.experts > 1:
        values["ffn"] = "moe"
        values["options"]["n_experts"] = parsed.experts
    for key, value in overrides.items():
        if value is None:
            continue
        (values if key in core else values["options"])[key] = value
    values["variant"], values["size"] = spec.name, str(parsed)
    values["layers"] = _expand_layers(values["layers"], values["n_layers"])
    for kind in ("position", "attention", "norm", "block"):
        values[kind] = REGISTRY.canonical(kind, values[kind])
    if values["layers"] is not None:
        values["layers"] = [REGISTRY.canonical("block", k) for k in values["layers"]]
    if str(values["ffn"]).lower() != "none":
        values["ffn"] = REGISTRY.canonical("ffn", values["ffn"])
    supported = spec.capabilities.positions
    if supported is not None and values["position"] not in supported:
        raise ConfigError(
            f"variant {spec.name!r} does not support position {values['position']!r}; "
            f"supported: {', '.join(supported)}"
        )
    components = _selected_components(values)
    declared: dict[str, Any] = {}
    for component in components:
        for key, default in component.options.items():
            declared.setdefault(key, default)
    unknown = set(values["options"]) - set(declared)
    if unknown:
        raise unknown_keys_error(f"settings for variant {spec.name!r}", unknown, core | set(declared))
    options = {key: _resolve(default, values) for key, default in declared.items()}
    options.update(values["options"])
    values["options"] = options
    if "router" in options:
        options["router"] = REGISTRY.canonical("router", options["router"])
    return ModelConfig(**values)


def _expand_layers(layers: Any, n_layers: int) -> list[str] | None:
    """A hybrid schedule: a full per-layer list, or a shorter pattern repeated to n_layers."""
    if layers is None:
        return None
    if isinstance(layers, str):
        layers = [part.strip() for part in layers.split(",") if part.strip()]
    layers = list(layers)
    if not layers:
        raise ConfigError("layers must name at least one block kind")
    if len(layers) != n_layers:
        if n_layers % len(layers):
            raise ConfigError(
                f"layers pattern of length {len(layers)} does not tile n_layers={n_layers}; "
                "give one entry per layer or a pattern whose length divides n_layers"
            )
        layers = layers * (n_layers // len(layers))
    return layers


def build_from_config(
    config: ModelConfig, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> torch.nn.Module:
    """Instantiate ``config`` on ``device`` ('meta' allocates nothing) and initialise its weights."""
    from .model.decoder import EffzooModel

    target = torch.device(device) if device is not None else torch.device("cpu")
    with target:
        model = EffzooModel(config)
        if target.type != "meta":
            model.init_weights()
    torch_dtype = parse_dtype(dtype)
    if torch_dtype is not None:
        model = model.to(torch_dtype)
    return model


def build_empty(
    config: ModelConfig, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> torch.nn.Module:
    """``config`` with uninitialised weights on ``device`` (to load a checkpoint into), its
    non-persistent buffers computed."""
    target = torch.device(device) if device is not None else torch.device("cpu")
    model = build_from_config(config, device="meta", dtype=dtype).to_empty(device=target)
    model.init_buffers()
    return model


def build(
    variant: str, size: str = "tiny", *, device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None, **overrides: Any,
) -> torch.nn.Module:
    """Build ``variant`` at ``size`` ('tiny', '0.5B', '1.5B', '3B', MoE '0.5Bx8') with config overrides."""
    return build_from_config(make_config(variant, size, **overrides), device=device, dtype=dtype)
