"""``effzoo plugins``: every plugin found, where it comes from, and whether it loaded."""
from __future__ import annotations

import argparse
import json

from effzoo.registry import REGISTRY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    reports = REGISTRY.ensure_loaded().reports
    if args.json:
        print(json.dumps([{**r.__dict__, "ok": r.ok} for r in reports], indent=2))
        return 0
    for r in reports:
        status = "ok" if r.ok else f"FAILED: {r.error}"
        origin = "built-in" if r.builtin else "third-party"
        print(f"{r.name:<16} {r.distribution} {r.version} ({origin}, {r.module}) {status}")
    failed = [r for r in reports if not r.ok]
    if failed:
        print(f"\n{len(failed)} plugin(s) failed to load; effzoo works without them. "
              "EFFZOO_STRICT_PLUGINS=1 raises instead, EFFZOO_BLOCK_PLUGINS=name skips one.")
    return 0
