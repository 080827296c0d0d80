"""Plugin discovery through setuptools entry points (group ``effzoo``) and pluggy.

Built-in variants are entry points of effzoo's own distribution and go through exactly the same
path as third-party packages. Each plugin is loaded and registered in isolation: one that raises is
recorded (with its distribution and version) and effzoo keeps working, unless strict mode is on.

Environment variables:
- ``EFFZOO_DISABLE_PLUGIN_AUTOLOAD=1``: load only effzoo's built-ins, no third-party plugins.
- ``EFFZOO_BLOCK_PLUGINS=a,b``: skip plugins by entry-point name or distribution name (compared
  PEP 503-normalised: ``Effzoo_Example.Plugin`` matches ``effzoo-example-plugin``).
- ``EFFZOO_STRICT_PLUGINS=1``: raise PluginError on the first plugin that fails.

The entry points are the one list of built-ins: when effzoo's own are missing (a source tree that
was never pip-installed) loading stops with a PluginError that says how to install it.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
import re
import traceback
import warnings
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING

import pluggy

from . import hookspecs
from .errors import PluginError

if TYPE_CHECKING:
    from .registry import Registry

GROUP = "effzoo"
OWN_DISTRIBUTION = "effzoo"


@dataclass
class PluginReport:
    """The outcome of loading one plugin."""

    name: str
    module: str
    distribution: str
    version: str
    builtin: bool
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


@dataclass
class _Candidate:
    name: str
    module: str
    distribution: str
    version: str

    def load(self) -> ModuleType:
        return importlib.import_module(self.module)


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() in {"1", "true", "yes", "on"}


def normalize_name(name: str) -> str:
    """PEP 503 normalisation: lower case, runs of ``-``, ``_`` and ``.`` become one ``-``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _env_list(name: str) -> set[str]:
    return {normalize_name(item.strip()) for item in os.environ.get(name, "").split(",") if item.strip()}


def _candidates() -> list[_Candidate]:
    """Entry points of group ``effzoo`` (effzoo's built-ins are entry points of its own distribution)."""
    found = []
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        found.append(_Candidate(ep.name, ep.value.split(":")[0], dist, version))
    if not any(normalize_name(c.distribution) == OWN_DISTRIBUTION for c in found):
        raise PluginError(
            "effzoo's built-in plugins are entry points of the effzoo distribution, and none were found: "
            "effzoo is running from a source tree that is not installed. Run `pip install -e .` in it."
        )
    return found


def load_plugins(registry: "Registry", strict: bool | None = None) -> list[PluginReport]:
    """Import every allowed plugin and run its ``effzoo_register`` hook into ``registry``."""
    from .registry import Registrar

    strict = _env_flag("EFFZOO_STRICT_PLUGINS") if strict is None else strict
    third_party_allowed = not _env_flag("EFFZOO_DISABLE_PLUGIN_AUTOLOAD")
    blocked = _env_list("EFFZOO_BLOCK_PLUGINS")
    manager = pluggy.PluginManager(GROUP)
    manager.add_hookspecs(hookspecs)
    reports: list[PluginReport] = []
    candidates = sorted(_candidates(), key=lambda c: (normalize_name(c.distribution) != OWN_DISTRIBUTION, c.name))
    for cand in candidates:
        builtin = normalize_name(cand.distribution) == OWN_DISTRIBUTION
        if not builtin and not third_party_allowed:
            continue
        if {normalize_name(cand.name), normalize_name(cand.distribution)} & blocked:
            registry.blocked.append(f"{cand.name} ({cand.distribution})")
            continue
        report = PluginReport(cand.name, cand.module, cand.distribution, cand.version, builtin)
        reports.append(report)
        try:
            module = cand.load()
            manager.register(module, name=cand.name)
            manager.check_pending()
            registrar = Registrar(registry, cand.name, cand.distribution, cand.version)
            others = [plugin for name, plugin in manager.list_name_plugin() if name != cand.name]
            caller = manager.subset_hook_caller("effzoo_register", remove_plugins=others)
            if not caller.get_hookimpls():
                raise PluginError(f"module {cand.module} defines no effzoo_register hook")
            caller(register=registrar)
            registrar.commit()
        except Exception as exc:  # a broken plugin must not break effzoo
            if manager.get_plugin(cand.name) is not None:
                manager.unregister(name=cand.name)
            _fail(report, exc, strict)
    _reject_bad_references(registry, reports, strict)
    return reports


def _fail(report: PluginReport, exc: BaseException, strict: bool) -> None:
    report.error = f"{type(exc).__name__}: {exc}"
    message = f"effzoo plugin {report.name!r} from {report.distribution} {report.version} failed to load: {report.error}"
    if strict:
        trace = "".join(traceback.format_exception(exc)) if exc.__traceback__ is not None else ""
        raise PluginError(f"{message}\n{trace}".rstrip()) from exc
    warnings.warn(message + " (set EFFZOO_STRICT_PLUGINS=1 to raise)", stacklevel=3)


def _reject_bad_references(registry: "Registry", reports: list[PluginReport], strict: bool) -> None:
    """Withdraw plugins whose variants name what nobody registered (a size family, a base variant), one
    at a time until the rest is consistent, so the plugin at fault is reported and the others keep
    working. When plugins are blocked, the missing piece may be theirs: then only the variants that need
    it are left out (``registry.withdrawn``), and their plugin's components stay usable."""
    by_name = {r.name: r for r in reports}
    while problems := registry.reference_errors():
        variant, (plugin, why) = next(iter(problems.items()))
        if registry.blocked:
            registry.remove_variant(variant, f"{why}; blocked: {', '.join(registry.blocked)}")
            continue
        registry.remove_plugin(plugin)
        _fail(by_name[plugin], PluginError(why), strict)
