"""Registered variants (model recipes), components (attention, position, block, ffn, router, norm),
size families and benchmark suites.

Plugins never touch the tables directly: the ``effzoo_register`` hook receives a :class:`Registrar`
whose additions are staged and committed only when the plugin's hook returns, so a plugin that
fails half-way leaves nothing behind. After every plugin committed, :meth:`Registry.check_references`
rejects the plugins whose variants name a size family nobody registered, so one bad plugin never
breaks the others.
"""
from __future__ import annotations

import fnmatch
import importlib
import re
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, PluginError, UnknownNameError, unknown_keys_error

if TYPE_CHECKING:
    from .registry_records import CheckpointFormat, Replacement, SuiteRow, SuiteSpec

COMPONENT_KINDS = ("attention", "position", "block", "ffn", "router", "norm")
POSITION_KINDS = ("embedding", "rotary", "bias", "none")
NOT_USED = "none"  # the value of an optional kind (e.g. ``ffn="none"``) that the model leaves out


@dataclass(frozen=True)
class Capabilities:
    """What a variant or component can do; ``list_variants`` filters on these."""

    kv_cache: bool = True
    recurrent: bool = False
    needs_cuda: bool = False
    fast_path: str | None = None
    moe: bool = False
    positions: tuple[str, ...] | None = None  # supported position encodings; None = every one
    quick_recall: bool = False  # a variant of the recall suite's ``--quick`` grid (effzoo.bench.recall)

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
    uses: dict[str, str | None] = field(default_factory=dict)  # kind -> default name (None: optional, off)
    position_kind: str = ""  # positions only: embedding | rotary | bias | none
    option_specs: dict[str, Any] = field(default_factory=dict)  # option -> effzoo.config.Option (type, range)
    distribution: str = ""
    version: str = ""
    kernels: tuple[str, ...] = ()  # values of the core ``kernel`` setting it adds to auto and reference

    @property
    def provider(self) -> str:
        """``distribution version`` of the package that registered it (what to install)."""
        return f"{self.distribution} {self.version}".strip()

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
    baseline: bool = False  # the variant commands use when none is named (``effzoo train``)
    base: str = ""  # a variant whose defaults apply first (this one's override them)
    distribution: str = ""
    version: str = ""

    @property
    def provider(self) -> str:
        """``distribution version`` of the package that registered it (what to install)."""
        return f"{self.distribution} {self.version}".strip()


def _natural_key(name: str) -> list[Any]:
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


class Registry:
    """Tables of variants, components (by kind) and size families."""

    def __init__(self) -> None:
        self.variants: dict[str, VariantSpec] = {}
        self.components: dict[str, dict[str, ComponentSpec]] = {k: {} for k in COMPONENT_KINDS}
        self.sizes: dict[str, dict[str, dict[str, Any]]] = {}
        self.size_owners: dict[str, str] = {}  # family -> plugin that registered it first
        self.suites: dict[str, SuiteSpec] = {}
        self.suite_rows: list[SuiteRow] = []
        self.checkpoint_formats: dict[str, CheckpointFormat] = {}  # transformers model_type -> its mapping
        self.aliases: dict[str, dict[str, str]] = {"variant": {}, **{k: {} for k in COMPONENT_KINDS}}
        self.replacements: list[Replacement] = []
        self.blocked: list[str] = []  # "name (distribution)" of plugins skipped by EFFZOO_BLOCK_PLUGINS
        self.withdrawn: list[str] = []  # variants left out because what they need is blocked
        self.reports: list[Any] = []
        self._loaded = False
        self._lock = threading.RLock()

    # -- loading ---------------------------------------------------------------------------
    def ensure_loaded(self) -> "Registry":
        """Load the plugins once (lazily, on first use). If loading raises (strict mode), the tables are
        emptied again, so a later call loads (and raises) again instead of returning half a registry."""
        if not self._loaded:
            with self._lock:
                if not self._loaded:
                    from .plugins import load_plugins

                    try:
                        self.reports = load_plugins(self)
                    except BaseException:
                        self.clear()
                        raise
                    self._loaded = True
        return self

    def clear(self) -> None:
        """Forget everything registered (the state before plugins load)."""
        self.__init__()  # type: ignore[misc]

    def plugin_names(self) -> list[str]:
        return [r.name for r in self.reports if r.error is None]

    def _unknown(self, kind: str, name: str, available: Iterable[str]) -> UnknownNameError:
        error = UnknownNameError(kind, name, available, self.plugin_names())
        if self.blocked:
            error.args = (f"{error.args[0]} Blocked by EFFZOO_BLOCK_PLUGINS: {', '.join(self.blocked)}.",)
        return error

    def remove_plugin(self, plugin: str) -> None:
        """Withdraw everything ``plugin`` registered (a plugin rejected after it committed)."""
        self.variants = {k: v for k, v in self.variants.items() if v.plugin != plugin}
        for kind in COMPONENT_KINDS:
            self.components[kind] = {k: c for k, c in self.components[kind].items() if c.plugin != plugin}
        for kind, table in self.aliases.items():
            targets = self.variants if kind == "variant" else self.components[kind]
            self.aliases[kind] = {a: n for a, n in table.items() if n in targets}
        for family in [f for f, owner in self.size_owners.items() if owner == plugin]:
            del self.sizes[family], self.size_owners[family]
        self.suites = {k: s for k, s in self.suites.items() if s.plugin != plugin}
        self.suite_rows = [r for r in self.suite_rows if r.plugin != plugin]
        self.checkpoint_formats = {k: f for k, f in self.checkpoint_formats.items() if f.plugin != plugin}

    def reference_errors(self) -> dict[str, tuple[str, str]]:
        """variant -> (its plugin, why it is invalid): it names a size family or base variant nobody registered."""
        problems: dict[str, tuple[str, str]] = {}
        for spec in self.variants.values():
            if spec.base and spec.base not in self.variants and spec.base not in self.aliases["variant"]:
                problems[spec.name] = (spec.plugin, f"variant {spec.name!r} builds on variant {spec.base!r}, "
                                                    "which no plugin registers")
            elif spec.family and spec.family not in self.sizes:
                problems[spec.name] = (spec.plugin, (
                    f"variant {spec.name!r} names size family {spec.family!r}, which no plugin registers "
                    f"(registered: {', '.join(sorted(self.sizes)) or 'none'})"
                ))
        return problems

    def remove_variant(self, name: str, why: str) -> None:
        """Withdraw one variant whose references are missing because a plugin was blocked."""
        del self.variants[name]
        self.aliases["variant"] = {a: n for a, n in self.aliases["variant"].items() if n != name}
        self.withdrawn.append(why)

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
        raise self._unknown(kind, name, list(table) + list(self.aliases[kind]))

    def variant(self, name: str) -> VariantSpec:
        return self.variants[self.canonical("variant", name)]

    def variant_chain(self, name: str) -> list[VariantSpec]:
        """The variant and its ``base`` variants, the innermost base first."""
        chain = [self.variant(name)]
        while chain[-1].base:
            if len(chain) > 16:
                raise ConfigError(f"variant {name!r}: base variants form a cycle")
            chain.append(self.variant(chain[-1].base))
        return chain[::-1]

    def family(self, name: str) -> str:
        """The size family of variant ``name`` (inherited from its base when it names none)."""
        return next(s.family for s in reversed(self.variant_chain(name)) if s.family)

    def component(self, kind: str, name: str) -> ComponentSpec:
        return self.components[kind][self.canonical(kind, name)]

    def size_table(self, family: str) -> dict[str, dict[str, Any]]:
        self.ensure_loaded()
        if family not in self.sizes:
            raise self._unknown("size family", family, self.sizes)
        return self.sizes[family]

    def baseline(self) -> str:
        """The variant flagged ``baseline=True`` (alphabetically first if several), else the first one."""
        self.ensure_loaded()
        flagged = [n for n in self.names("variant") if self.variants[n].baseline]
        names = flagged or self.names("variant")
        if not names:
            raise ConfigError("no variant is registered (see `effzoo plugins`)")
        return names[0]

    def position_kind(self, name: str) -> str:
        """The kind (embedding, rotary, bias, none) that registered position ``name`` declares."""
        return self.component("position", name).position_kind

    def kernel_names(self) -> set[str]:
        """Every ``kernel`` value some registered component declares (beyond auto and reference)."""
        self.ensure_loaded()
        return {k for table in self.components.values() for spec in table.values() for k in spec.kernels}

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
    """What a plugin's ``effzoo_register(register)`` hook receives. Additions are staged per plugin and
    applied all together (or not at all) by :meth:`commit`."""

    def __init__(self, registry: Registry, plugin: str, distribution: str = "", version: str = "") -> None:
        self._registry = registry
        self.plugin = plugin
        self.distribution, self.version = distribution, version
        self._variants: list[tuple[VariantSpec, bool]] = []
        self._components: list[tuple[ComponentSpec, bool]] = []
        self._sizes: list[tuple[str, dict[str, dict[str, Any]], bool]] = []
        self._suites: list[SuiteSpec] = []
        self._rows: list[SuiteRow] = []
        self._formats: list[Any] = []

    def add_variant(
        self,
        name: str,
        *,
        family: str = "",
        description: str,
        defaults: dict[str, Any] | None = None,
        base: str = "",
        group: str = "",
        aliases: Iterable[str] = (),
        capabilities: Capabilities | None = None,
        baseline: bool = False,
        override: bool = False,
    ) -> None:
        """Register a model recipe: ``defaults`` are config fields/options set over the size preset
        (values may be callables of the values chosen so far), after those of variant ``base`` if given
        (``family`` then defaults to the base's); ``baseline`` marks the default variant."""
        if not family and not base:
            raise PluginError(f"plugin {self.plugin}: variant {name!r} needs family= or base=")
        spec = VariantSpec(
            name=_key(name), family=family, description=description, defaults=dict(defaults or {}),
            group=group, aliases=tuple(_key(a) for a in aliases), capabilities=capabilities or Capabilities(),
            plugin=self.plugin, baseline=baseline, base=_key(base) if base else "",
            distribution=self.distribution, version=self.version,
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
        uses: dict[str, str | None] | None = None,
        position_kind: str = "",
        kernels: Iterable[str] = (),
        override: bool = False,
    ) -> None:
        """Register a component; ``factory`` may be ``"module:attr"`` so heavy imports wait for build time.

        ``options`` maps the plugin-specific config keys it accepts to their defaults, or to an
        :class:`effzoo.config.Option` carrying the default with its type and range. ``uses`` maps the
        component kinds it builds from to their default names (None: optional, absent unless chosen).
        ``kernels`` names the implementations it offers beyond ``auto`` and ``reference`` as values of
        the core ``kernel`` setting (e.g. ``("triton",)``); other components treat them as ``auto``.
        """
        from .config import Option

        if kind not in COMPONENT_KINDS:
            raise PluginError(f"plugin {self.plugin}: unknown component kind {kind!r}; kinds: {', '.join(COMPONENT_KINDS)}")
        bad_uses = set(uses or {}) - set(COMPONENT_KINDS)
        if bad_uses:
            raise PluginError(f"plugin {self.plugin}: {kind} {name!r} uses unknown kind(s) {sorted(bad_uses)}")
        if kind == "position" and position_kind not in POSITION_KINDS:
            raise PluginError(
                f"plugin {self.plugin}: position {name!r} must declare position_kind= one of {', '.join(POSITION_KINDS)}"
            )
        options = dict(options or {})
        specs = {key: value for key, value in options.items() if isinstance(value, Option)}
        spec = ComponentSpec(
            kind=kind, name=_key(name), factory=factory, description=description,
            options={key: value.default if isinstance(value, Option) else value for key, value in options.items()},
            aliases=tuple(_key(a) for a in aliases), capabilities=capabilities or Capabilities(), plugin=self.plugin,
            uses={k: (None if v is None else _key(v)) for k, v in (uses or {}).items()},
            position_kind=position_kind, option_specs=specs, distribution=self.distribution, version=self.version,
            kernels=tuple(kernels),
        )
        self._components.append((spec, override))

    def add_attention(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("attention", name, factory, **kw)

    def add_position(self, name: str, factory: Callable[..., Any] | str, *, kind: str, **kw: Any) -> None:
        """Register a position encoding of ``kind`` (embedding, rotary, bias or none)."""
        self.add_component("position", name, factory, position_kind=kind, **kw)

    def add_block(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("block", name, factory, **kw)

    def add_ffn(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("ffn", name, factory, **kw)

    def add_router(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("router", name, factory, **kw)

    def add_norm(self, name: str, factory: Callable[..., Any] | str, **kw: Any) -> None:
        self.add_component("norm", name, factory, **kw)

    def add_sizes(self, family: str, presets: dict[str, dict[str, Any]], *, override: bool = False) -> None:
        """Register (or extend) a size family: size name -> config fields. Names go through parse_size."""
        from .sizes import parse_size

        normalised = {str(parse_size(size)): dict(values) for size, values in presets.items()}
        self._sizes.append((family, normalised, override))

    def add_suite(
        self, name: str, *, default_sizes: Iterable[str], order: float,
        pairing: Callable[[list[str] | None], list[tuple[str, str, str]]] | None = None,
    ) -> None:
        """Declare a benchmark group (``effzoo bench --suite NAME``) placed by ``order`` among the groups."""
        from .registry_records import SuiteSpec

        self._suites.append(SuiteSpec(name, tuple(default_sizes), order, pairing, self.plugin))

    def add_suite_method(
        self, suite: str, method: str, variant: str, *, order: float, overrides: dict[str, Any] | None = None,
    ) -> None:
        """Add a row ``method`` (built as ``variant`` with ``overrides``) to a benchmark group, placed by ``order``."""
        from .registry_records import SuiteRow

        self._rows.append(SuiteRow(suite, method, _key(variant), dict(overrides or {}), order, self.plugin))

    def add_checkpoint_format(
        self, model_type: str, *, to_config: Callable[..., Any] | str, to_state_dict: Callable[..., Any] | str,
        description: str = "",
    ) -> None:
        """Register how a transformers checkpoint of ``model_type`` maps onto effzoo (see CheckpointFormat);
        ``effzoo.hf.import_checkpoint`` then reads it."""
        from .registry_records import CheckpointFormat

        self._formats.append(CheckpointFormat(model_type, to_config, to_state_dict, description, self.plugin))

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
        for suite in self._suites:
            if suite.name in reg.suites:
                raise PluginError(f"plugin {self.plugin}: suite {suite.name!r} is already declared by {reg.suites[suite.name].plugin}")
        for fmt in self._formats:
            if fmt.model_type in reg.checkpoint_formats:
                raise PluginError(f"plugin {self.plugin}: checkpoint format {fmt.model_type!r} is already registered")
        me = f"{self.plugin} ({self.distribution} {self.version})".replace(" ()", "")
        for spec, _ in self._variants:
            self._note_replacement("variant", spec.name, reg.variants, me)
            reg.variants[spec.name] = spec
            for alias in spec.aliases:
                reg.aliases["variant"][alias] = spec.name
        for spec, _ in self._components:
            self._note_replacement(spec.kind, spec.name, reg.components[spec.kind], me)
            reg.components[spec.kind][spec.name] = spec
            for alias in spec.aliases:
                reg.aliases[spec.kind][alias] = spec.name
        for family, presets, _ in self._sizes:
            reg.size_owners.setdefault(family, self.plugin)
            reg.sizes.setdefault(family, {}).update(presets)
        reg.suites.update({suite.name: suite for suite in self._suites})
        reg.suite_rows.extend(self._rows)
        reg.checkpoint_formats.update({fmt.model_type: fmt for fmt in self._formats})

    def _note_replacement(self, kind: str, name: str, table: dict[str, Any], me: str) -> None:
        from .registry_records import Replacement

        old = table.get(name)
        if old is not None and old.plugin != self.plugin:
            self._registry.replacements.append(
                Replacement(kind, name, f"{old.plugin} ({old.provider})" if old.provider else old.plugin, me)
            )

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
