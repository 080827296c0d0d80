"""The hooks a plugin implements (built-ins and third-party packages alike)."""
from __future__ import annotations

import pluggy

hookspec = pluggy.HookspecMarker("effzoo")
hookimpl = pluggy.HookimplMarker("effzoo")


@hookspec
def effzoo_register(register):  # type: ignore[no-untyped-def]
    """Add variants, components and size presets through ``register`` (an effzoo.registry.Registrar)."""
