"""Plugin discovery through setuptools entry points (group ``effzoo``) and pluggy.

Built-in variants are entry points of effzoo's own distribution and go through exactly the same
path as third-party packages. Each plugin is loaded and registered in isolation: one that raises is
recorded (with its distribution and version) and effzoo keeps working, unless strict mode is on.

Environment variables:
- ``EFFZOO_DISABLE_PLUGIN_AUTOLOAD=1``: load only effzoo's built-ins, no third-party plugins.
- ``EFFZOO_BLOCK_PLUGINS=a,b``: skip plugins by entry-point name or distribution name.
- ``EFFZOO_STRICT_PLUGINS=1``: raise PluginError on the first plugin that fails.
"""
from __future__ import annotations

import importlib
import importlib.metadata as metadata
import os
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


def _env_list(name: str) -> set[str]:
    return {item.strip() for item in os.environ.get(name, "").split(",") if item.strip()}


def _candidates() -> list[_Candidate]:
    """Entry points of group ``effzoo``; effzoo's built-in list when effzoo itself is not installed."""
    found = []
    for ep in metadata.entry_points(group=GROUP):
        dist = ep.dist.name if ep.dist is not None else "?"
        version = ep.dist.version if ep.dist is not None else "?"
        found.append(_Candidate(ep.name, ep.value.split(":")[0], dist, version))
    if not any(c.distribution.lower() == OWN_DISTRIBUTION for c in found):
        from effzoo_plugins import BUILTINS

        warnings.warn(
            "effzoo's entry points were not found (running from a source tree that is not pip-installed?); "
            "loading the built-in plugins from effzoo_plugins.BUILTINS. Run `pip install -e .` to fix.",
            stacklevel=3,
        )
        found = [_Candidate(n, m, OWN_DISTRIBUTION, "source") for n, m in BUILTINS.items()] + found
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
    candidates = sorted(_candidates(), key=lambda c: (c.distribution.lower() != OWN_DISTRIBUTION, c.name))
    for cand in candidates:
        builtin = cand.distribution.lower() == OWN_DISTRIBUTION
        if (not builtin and not third_party_allowed) or {cand.name, cand.distribution} & blocked:
            continue
        report = PluginReport(cand.name, cand.module, cand.distribution, cand.version, builtin)
        reports.append(report)
        try:
            module = cand.load()
            manager.register(module, name=cand.name)
            manager.check_pending()
            impls = [i for i in manager.hook.effzoo_register.get_hookimpls() if i.plugin_name == cand.name]
            if not impls:
                raise PluginError(f"module {cand.module} defines no effzoo_register hook")
            registrar = Registrar(registry, cand.name)
            for impl in impls:
                impl.function(register=registrar)
            registrar.commit()
        except Exception as exc:  # a broken plugin must not break effzoo
            if manager.get_plugin(cand.name) is not None:
                manager.unregister(name=cand.name)
            report.error = f"{type(exc).__name__}: {exc}"
            message = f"effzoo plugin {cand.name!r} from {cand.distribution} {cand.version} failed to load: {report.error}"
            if strict:
                raise PluginError(message + "\n" + traceback.format_exc()) from exc
            warnings.warn(message + " (set EFFZOO_STRICT_PLUGINS=1 to raise)", stacklevel=2)
    return reports
