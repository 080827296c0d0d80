"""``effzoo list``: registered variants with their capabilities."""
from __future__ import annotations

import argparse
import json

from effzoo.registry import REGISTRY


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on variant names (default *)")
    parser.add_argument("--group", help="only this benchmark group (attention, position, moe, attention-free)")
    parser.add_argument("--components", action="store_true", help="also list components by kind")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def run(args: argparse.Namespace) -> int:
    filters = {"group": args.group} if args.group else {}
    variants = REGISTRY.list_variants(args.pattern, **filters)
    rows = [
        {"name": v.name, "group": v.group, "family": v.family, "sizes": sorted(REGISTRY.size_table(v.family)),
         "plugin": v.plugin, **v.capabilities.as_dict(), "description": v.description}
        for v in variants
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        caps = [k for k in ("kv_cache", "recurrent", "needs_cuda", "moe") if row[k]]
        fast = f" fast={row['fast_path']}" if row["fast_path"] else ""
        print(f"{row['name']:<10} {row['group']:<15} sizes={','.join(row['sizes'])} [{' '.join(caps)}]{fast}")
        print(f"{'':<10} {row['description']}")
    if args.components:
        for kind, table in REGISTRY.components.items():
            print(f"\n{kind}: " + ", ".join(sorted(table)))
    return 0
