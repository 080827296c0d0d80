"""``effzoo.build``: variant name + size preset + overrides -> a validated config -> a model.

``make_config`` walks the composition the components declare: the decoder uses blocks, a position
encoding and a norm; each registered component names the kinds it uses (``uses=``, a transformer
block: attention, ffn, norm; an MoE ffn: router) with their defaults. A config holds, and validates
the options of, exactly the components the model builds.
"""
from __future__ import annotations

from typing import Any

import torch

from .config import CORE_RANGES, ModelConfig, check_not_renamed, resolve_default
from .errors import ConfigError, UnknownNameError, unknown_keys_error
from .registry import COMPONENT_KINDS, NOT_USED, REGISTRY, ComponentSpec
from .sizes import parse_size

_DTYPES = {
    "float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
    "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
    "float16": torch.float16, "fp16": torch.float16, "half": torch.float16,
}
_DECODER_USES: dict[str, str | None] = {"position": None, "norm": None}  # defaults come from variant / blocks
_REQUIRED = ("block", "norm")


def parse_dtype(dtype: str | torch.dtype | None) -> torch.dtype | None:
    """'bf16' / 'bfloat16' / torch.bfloat16 -> torch.bfloat16 (None stays None)."""
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    key = str(dtype).lower().removeprefix("torch.")
    if key not in _DTYPES:
        raise ConfigError(f"unknown dtype {dtype!r}; choose one of {', '.join(sorted(_DTYPES))}")
    return _DTYPES[key]


def _choice(values: dict[str, Any], kind: str) -> Any:
    """The name chosen for ``kind``: a core field, or (router, ...) an entry of ``options``."""
    return values[kind] if kind in values else values["options"].get(kind)


def _store(values: dict[str, Any], kind: str, name: Any) -> None:
    if kind in values:
        values[kind] = name
    else:
        values["options"][kind] = name


def _walk_components(values: dict[str, Any], variant: str) -> list[ComponentSpec]:
    """Resolve every component the model uses, following each one's declared ``uses``; store the
    canonical names in ``values`` and leave the kinds nobody uses at None."""
    block_names = values["layers"] or ([values["block"]] if values["block"] else [])
    if not block_names:
        raise ConfigError(
            f"variant {variant!r} selects no block: register it with base= (a variant to build on) or defaults "
            f"naming block= (registered blocks: {', '.join(REGISTRY.names('block')) or 'none'})"
        )
    blocks = [REGISTRY.component("block", name) for name in dict.fromkeys(block_names)]
    if values["layers"] is not None:
        values["layers"] = [REGISTRY.canonical("block", name) for name in values["layers"]]
    if values["layers"] is None:
        values["block"] = blocks[0].name
    elif values["block"] is not None:
        values["block"] = REGISTRY.canonical("block", values["block"])
    requests: dict[str, list[str | None]] = {}
    for user in [_DECODER_USES, *(b.uses for b in blocks)]:
        for kind, default in user.items():
            requests.setdefault(kind, []).append(default)
    picked, resolved = list(blocks), {"block"}
    while pending := [k for k in COMPONENT_KINDS if k in requests and k not in resolved]:
        kind = pending[0]
        resolved.add(kind)
        name = _choice(values, kind) or next((d for d in requests[kind] if d is not None), None)
        if name is None:
            if kind in _REQUIRED:
                raise ConfigError(f"variant {variant!r} selects no {kind} and no component declares a default one")
            continue
        if str(name).lower() == NOT_USED and kind not in ("position",):
            _store(values, kind, NOT_USED)
            continue
        spec = REGISTRY.component(kind, name)
        _store(values, kind, spec.name)
        picked.append(spec)
        for used, default in spec.uses.items():
            requests.setdefault(used, []).append(default)
    unused = [k for k in ("attention", "ffn") if k not in resolved and values[k] is not None]
    unused += [k for k in COMPONENT_KINDS if k not in values and k not in resolved and k in values["options"]]
    if unused:
        users = ", ".join(f"{b.name} uses {', '.join(b.uses) or 'nothing'}" for b in blocks)
        raise ConfigError(
            f"variant {variant!r} does not use {' or '.join(f'{k}={_choice(values, k)!r}' for k in unused)} "
            f"({users}); remove the setting or pick a block that uses it"
        )
    return picked


def _check_core(values: dict[str, Any]) -> None:
    for key, option in CORE_RANGES.items():
        option.check(key, values[key])


def make_config(variant: str, size: str = "tiny", **overrides: Any) -> ModelConfig:
    """The validated config of ``variant`` at ``size`` with ``overrides`` (None values are ignored)."""
    spec = REGISTRY.variant(variant)
    parsed = parse_size(size)
    family = REGISTRY.family(spec.name)
    table = REGISTRY.size_table(family)
    if parsed.name not in table:
        raise UnknownNameError(f"size for variant {spec.name!r} (family {family})", size, table)
    values: dict[str, Any] = ModelConfig().to_dict()
    values.update({"head_dim": None, "options": {}, "provenance": {}})
    values.update(table[parsed.name])
    core = ModelConfig.core_fields()
    for recipe in REGISTRY.variant_chain(spec.name):
        for key, value in recipe.defaults.items():
            (values if key in core else values["options"])[key] = resolve_default(value, values)
    for key, value in overrides.items():
        check_not_renamed(key, value)
        if value is None:
            continue
        (values if key in core else values["options"])[key] = value
    values["variant"], values["size"] = spec.name, str(parsed)
    _check_core(values)
    values["layers"] = _expand_layers(values["layers"], values["n_layers"])
    if parsed.experts > 1:
        _use_experts(values, parsed.experts, str(parsed))
    components = _walk_components(values, spec.name)
    supported = spec.capabilities.positions
    if supported is not None and (values["position"] or NOT_USED) not in supported:
        raise ConfigError(
            f"variant {spec.name!r} does not support position {values['position']!r}; "
            f"supported: {', '.join(supported)}"
        )
    _check_kernel(values["kernel"], components, spec.name)
    declared: dict[str, Any] = {}
    option_specs: dict[str, Any] = {}
    for component in components:
        for key, default in component.options.items():
            declared.setdefault(key, default)
        for key, option in component.option_specs.items():
            option_specs.setdefault(key, option)
    chosen_kinds = {k for k in COMPONENT_KINDS if k not in core}
    unknown = set(values["options"]) - set(declared) - chosen_kinds
    if unknown:
        raise unknown_keys_error(f"settings for variant {spec.name!r}", unknown, core | set(declared))
    options = {key: resolve_default(default, values) for key, default in declared.items()}
    options.update(values["options"])
    for key, option in option_specs.items():
        option.check(key, options[key])
    values["options"] = options
    values["provenance"] = {f"variant:{spec.name}": spec.provider,
                            **{f"{c.kind}:{c.name}": c.provider for c in components}}
    return ModelConfig(**values)


def kernel_choices(components: list[ComponentSpec]) -> tuple[str, ...]:
    """The ``kernel`` values a model of ``components`` accepts: auto, reference, the attention backends
    when it has attention, and every value the components declare."""
    from .ops.attention import BACKENDS, EXTRA_BACKENDS

    choices = ["auto", "reference"]
    if any(c.kind == "attention" for c in components):
        choices += [*BACKENDS, *EXTRA_BACKENDS]
    for component in components:
        choices += component.kernels
    return tuple(dict.fromkeys(choices))


def _check_kernel(kernel: str, components: list[ComponentSpec], variant: str) -> None:
    choices = kernel_choices(components)
    if kernel not in choices:
        raise ConfigError(f"unknown kernel {kernel!r} for variant {variant!r}; choose one of {', '.join(choices)}")


def _use_experts(values: dict[str, Any], experts: int, size: str) -> None:
    """A size 'Sx8' asks for a mixture-of-experts FFN (one registered with ``capabilities.moe``): the
    chosen one, else the only one registered; it gets option ``n_experts``."""
    moe = [n for n in REGISTRY.names("ffn") if REGISTRY.components["ffn"][n].capabilities.moe]
    chosen = values["ffn"]
    if chosen is None or REGISTRY.canonical("ffn", chosen) not in moe:
        if chosen is not None and str(chosen).lower() != NOT_USED or len(moe) != 1:
            raise ConfigError(
                f"size {size!r} has {experts} experts, but ffn={chosen!r} is not a mixture of experts; "
                f"choose ffn= one of {', '.join(moe) or '(none registered)'} or a dense size"
            )
        values["ffn"] = moe[0]
    values["options"].setdefault("n_experts", experts)


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


def _missing_provider(config: ModelConfig, error: UnknownNameError) -> ConfigError | None:
    """For a saved config naming a component nobody registers now: which package provided it."""
    for key, provider in config.provenance.items():
        kind, _, name = key.partition(":")
        if kind == error.kind and name == str(error.name).lower().replace("-", "_") and provider:
            distribution = provider.split()[0]
            return ConfigError(
                f"{kind} {error.name!r} is not registered; this config was saved with it from {provider}: "
                f"install it (pip install {distribution}) or check `effzoo plugins`"
            )
    return None


def build_from_config(
    config: ModelConfig, *, device: str | torch.device | None = None, dtype: str | torch.dtype | None = None
) -> torch.nn.Module:
    """Instantiate ``config`` on ``device`` ('meta' allocates nothing) and initialise its weights."""
    from .model.decoder import EffzooModel

    target = torch.device(device) if device is not None else torch.device("cpu")
    try:
        with target:
            model = EffzooModel(config)
            if target.type != "meta":
                model.init_weights()
    except UnknownNameError as exc:
        hint = _missing_provider(config, exc)
        if hint is None:
            raise
        raise hint from exc
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
