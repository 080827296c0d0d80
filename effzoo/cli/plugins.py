"""``effzoo plugins``: every plugin found, where it comes from, whether it loaded, what it replaced."""
from __future__ import annotations

import argparse
import json

from effzoo.registry import REGISTRY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    registry = REGISTRY.ensure_loaded()
    reports = registry.reports
    if args.json:
        print(json.dumps({
            "plugins": [{**r.__dict__, "ok": r.ok} for r in reports],
            "replaced": [r.__dict__ for r in registry.replacements],
            "blocked": registry.blocked,
            "withdrawn": registry.withdrawn,
        }, indent=2))
        return 0
    for r in reports:
        status = "ok" if r.ok else f"FAILED: {r.error}"
        origin = "built-in" if r.builtin else "third-party"
        print(f"{r.name:<16} {r.distribution} {r.version} ({origin}, {r.module}) {status}")
    for replacement in registry.replacements:
        print(f"  override: {replacement}")
    if registry.blocked:
        print(f"blocked by EFFZOO_BLOCK_PLUGINS: {', '.join(registry.blocked)}")
    for why in registry.withdrawn:
        print(f"  left out: {why}")
    failed = [r for r in reports if not r.ok]
    if failed:
        print(f"\n{len(failed)} plugin(s) failed to load; effzoo works without them. "
              "EFFZOO_STRICT_PLUGINS=1 raises instead, EFFZOO_BLOCK_PLUGINS=name skips one.")
    return 0
