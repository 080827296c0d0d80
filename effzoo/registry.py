"""Registered variants (model recipes), components (attention, position, block, ffn, router) and sizes.

Plugins never touch the tables directly: the ``effzoo_register`` hook receives a :class:`Registrar`
whose additions are staged and committed only when the plugin's hook returns, so a plugin that
fails half-way leaves nothing behind.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import Any

from .errors import ConfigError, PluginError, UnknownNameError, unknown_keys_error

COMPONENT_KINDS = ("attention", "position", "block", "ffn", "router", "norm")


@dataclass(frozen=True)
class Capabilities:
    """What a variant or component can do; ``list_variants`` filters on these."""

    kv_cache: bool = True
    recurrent: bool = False
    needs_cuda: bool = False
    fast_path: str | None = None
    moe: bool = False
    positions: tuple[str, ...] | None = None  # supported position encodings; None = every one

    def as_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


@dataclass(frozen=True)
class ComponentSpec:
    """A registered building block: ``factory(cfg, ...)`` returns an ``nn.Module``."""

    kind: str
    name: str
    factory: Callable[..., Any] | str
    description: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    aliases: tuple[str, ...] = ()
    capabilities: Capabilities = Capabilities()
    plugin: str = ""

    def load(self) -> Callable[..., Any]:
        """The factory, importing ``"module:attr"`` strings on first use (keeps ``import effzoo`` light)."""
        if callable(self.factory):
            return self.factory
        module_name, _, attr = self.factory.partition(":")
        try:
            return getattr(importlib.import_module(module_name), attr)
        except (ImportError, AttributeError) as exc:
            raise PluginError(
                f"{self.kind} {self.name!r} (plugin {self.plugin or '?'}) cannot load its factory {self.factory!r}: {exc}"
            ) from exc


@dataclass(frozen=True)
class VariantSpec:
    """A model recipe: a size family plus config defaults applied over the chosen size preset."""

    name: str
    family: str
    description: str = ""
    defaults: dict[str, Any] = field(default_factory=dict)
    group: str = ""
    aliases: tuple[str, ...] = ()
    capabilities: Capabilities = Capabilities()
    plugin: str = ""


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Registry:
    """Tables of variants, components (by kind) and size families."""

    def __init__(self) -> None:
        self.variants: dict[str, VariantSpec] = {}
        self.components: dict[str, dict[str, ComponentSpec]] = {k: {} for k in COMPONENT_KINDS}
        self.sizes: dict[str, dict[str, dict[str, Any]]] = {}
        self.aliases: dict[str, dict[str, str]] = {"variant": {}, **{k: {} for k in COMPONENT_KINDS}}
        self.reports: list[Any] = []
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------
    def ensure_loaded(self) -> "Registry":
        """Load the plugins once (lazily, on first use)."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    from .plugins import load_plugins

                    self._loaded = True
                    self.reports = load_plugins(self)
        return self

    def plugin_names(self) -> list[str]:
        return [r.name for r in self.reports if r.error is None]

    # -- lookups ---------------------------------------------------------------------------
    def canonical(self, kind: str, name: str) -> str:
        """Resolve aliases; raise UnknownNameError with close matches."""
        self.ensure_loaded()
        table = self.variants if kind == "variant" else self.components.get(kind)
        if table is None:
            raise ConfigError(f"unknown component kind {kind!r}; kinds: variant, {', '.join(COMPONENT_KINDS)}")
        key = _key(name)
        if key in table:
            return key
        if key in self.aliases[kind]:
            return self.aliases[kind][key]
        raise UnknownNameError(kind, name, list(table) + list(self.aliases[kind]), self.plugin_names())

    def variant(self, name: str) -> VariantSpec:
        return self.variants[self.canonical("variant", name)]

    def component(self, kind: str, name: str) -> ComponentSpec:
        return self.components[kind][self.canonical(kind, name)]

    def size_table(self, family: str) -> dict[str, dict[str, Any]]:
        self.ensure_loaded()
        if family not in self.sizes:
            raise UnknownNameError("size family", family, self.sizes, self.plugin_names())
        return self.sizes[family]

    def names(self, kind: str = "variant") -> list[str]:
        self.ensure_loaded()
        table = self.variants if kind == "variant" else self.components[kind]
        return sorted(table, key=_natural_key)

    def list_variants(
        self, pattern: str | Iterable[str] = "*", exclude: str | Iterable[str] = (), **capabilities: Any
    ) -> list[VariantSpec]:
        """Variants whose name matches ``pattern`` (fnmatch) and whose capabilities equal the filters.

        Capability filters are fields of :class:`Capabilities` (``kv_cache=True``, ``recurrent=True``...),
        plus ``group=`` and ``family=``.
        """
        self.ensure_loaded()
        include = [pattern] if isinstance(pattern, str) else list(pattern)
        exclude = [exclude] if isinstance(exclude, str) else list(exclude)
        valid = {f.name for f in fields(Capabilities)} | {"group", "family", "plugin"}
        bad = set(capabilities) - valid
        if bad:
            raise unknown_keys_error("variant filters", bad, valid)
        out = []
        for name in self.names("variant"):
            spec = self.variants[name]
            if not any(fnmatch.fnmatch(name, p) for p in include) or any(fnmatch.fnmatch(name, p) for p in exclude):
                continue
            attrs = {**spec.capabilities.as_dict(), "group": spec.group, "family": spec.family, "plugin": spec.plugin}
            if all(attrs[k] == v for k, v in capabilities.items()):
                out.append(spec)
        return out


class Registrar:
    """What a plugin's ``effzoo_register(register)`` hook receives. Additions are staged per plugin."""

    def __init__(self, registry: Registry, plugin: str) -> None:
        self._registry = registry
        self.plugin = plugin
        self._variants: list[tuple[VariantSpec, bool]] = []
        self._components: list[tuple[ComponentSpec, bool]] = []
        self._sizes: list[tuple[str, dict[str, dict[str, Any]], bool]] = []

    def add_variant(
        self,
        name: str,
        *,
        family: str,
        description: str,
        defaults: dict[str, Any] | None = None,
        group: str = "",
        aliases: Iterable[str] = (),
        capabilities: Capabilities | None = None,
        override: bool = False,
    ) -> None:
        """Register a model recipe: ``defaults`` are config fields/options set over the size preset."""
        spec = VariantSpec(
            name=_key(name), family=family, description=description, defaults=dict(defaults or {}),
            group=group, aliases=tuple(_key(a) for a in aliases),
            capabilities=capabilities or Capabilities(), plugin=self.plugin,
        )
        self._variants.append((spec, override))

    def add_component(
        self,
        kind: str,
        name: str,
        factory: Callable[..., Any] | str,
        *,
        description: str,
        options: dict[str, Any] | None = None,
        aliases: Iterable[str] = (),
        capabilities: Capabilities | None = None,
        override: bool = False,
    ) -> None:
        """Register a component; ``factory`` may be ``"module:attr"`` so heavy imports wait for build time.

        ``options`` maps the plugin-specific config keys it accepts to their defaults.
        """
        if kind not in COMPONENT_KINDS:
            raise PluginError(f"plugin {self.plugin}: unknown component kind {kind!r}; kinds: {', '.join(COMPONENT_KINDS)}")
        spec = ComponentSpec(
            kind=kind, name=_key(name), factory=factory, description=description, options=dict(options or {}),
            aliases=tuple(_key(a) for a in aliases), capabilities=capabilities or Capabilities(), plugin=self.plugin,
        )
        self._components.append((spec, override))

    def add_attention(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("attention", name, factory, **kw)

    def add_position(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("position", name, factory, **kw)

    def add_block(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("block", name, factory, **kw)

    def add_ffn(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("ffn", name, factory, **kw)

    def add_router(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("router", name, factory, **kw)

    def add_sizes(self, family: str, presets: dict[str, dict[str, Any]], *, override: bool = False) -> None:
        """Register (or extend) a size family: size name -> config fields. Names go through parse_size."""
        from .sizes import parse_size

        normalised = {str(parse_size(size)): dict(values) for size, values in presets.items()}
        self._sizes.append((family, normalised, override))

    # -- commit ----------------------------------------------------------------------------
    def commit(self) -> None:
        """Check every staged addition for clashes, then apply them all (or none)."""
        reg = self._registry
        for spec, override in self._variants:
            self._check_clash("variant", spec.name, spec.aliases, reg.variants, override)
        for spec, override in self._components:
            self._check_clash(spec.kind, spec.name, spec.aliases, reg.components[spec.kind], override)
        for family, presets, override in self._sizes:
            clash = set(presets) & set(reg.sizes.get(family, {}))
            if clash and not override:
                raise PluginError(
                    f"plugin {self.plugin}: size(s) {sorted(clash)} of family {family!r} already registered; "
                    "pass override=True to replace them"
                )
        for spec, _ in self._variants:
            reg.variants[spec.name] = spec
            for alias in spec.aliases:
                reg.aliases["variant"][alias] = spec.name
        for spec, _ in self._components:
            reg.components[spec.kind][spec.name] = spec
            for alias in spec.aliases:
                reg.aliases[spec.kind][alias] = spec.name
        for family, presets, _ in self._sizes:
            reg.sizes.setdefault(family, {}).update(presets)

    def _check_clash(self, kind: str, name: str, aliases: tuple[str, ...], table: dict[str, Any], override: bool) -> None:
        if override:
            return
        taken = set(table) | set(self._registry.aliases[kind])
        for key in (name, *aliases):
            if key in taken:
                owner = table[key].plugin if key in table else "an alias"
                raise PluginError(
                    f"plugin {self.plugin}: {kind} {key!r} is already registered (by {owner}); "
                    "pass override=True to replace it deliberately"
                )


def _key(name: str) -> str:
    """The canonical spelling of a registered name: lower case, ``-`` as ``_``."""
    return str(name).lower().replace("-", "_")


REGISTRY = Registry()
