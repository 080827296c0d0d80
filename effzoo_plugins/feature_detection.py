"""Feature detection for the plugins' optional kernels: importability and Triton's interpreter mode."""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os

TRUTHY = ("1", "true", "on", "yes")


@functools.cache
def import_error(module: str) -> str | None:
    """None when ``module`` imports (compiled extensions included), else why it does not."""
    try:
        importlib.import_module(module)
    except Exception as exc:  # noqa: BLE001 - a broken CUDA extension raises ImportError, OSError or RuntimeError
        return f"{type(exc).__name__}: {exc}"
    return None


def installed(package: str) -> bool:
    """Whether ``package`` is installed, checked without importing it."""
    return importlib.util.find_spec(package) is not None


def triton_interpreting() -> bool:
    """Whether TRITON_INTERPRET asks Triton to run kernels on CPU."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in TRUTHY
