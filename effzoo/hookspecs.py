"""The hooks a plugin implements (built-ins and third-party packages alike)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from .registry import Registrar

hookspec = pluggy.HookspecMarker("effzoo")
hookimpl = pluggy.HookimplMarker("effzoo")


@hookspec
def effzoo_register(register: Registrar) -> None:
    """Add variants, components, size families, suites and checkpoint formats through ``register``."""
