"""``effzoo list``: registered variants with their capabilities (and what a plugin replaced)."""
from __future__ import annotations

import argparse
import json
from dataclasses import fields

from effzoo.build import make_config
from effzoo.registry import REGISTRY, Capabilities, VariantSpec

FLAGS = [f.name for f in fields(Capabilities) if isinstance(getattr(Capabilities(), f.name), bool)]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("pattern", nargs="?", default="*", help="fnmatch pattern on variant names (default *)")
    parser.add_argument("--group", help="only this benchmark group (attention, position, moe, attention-free)")
    parser.add_argument("--components", action="store_true", help="also list components by kind")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def variant_sizes(spec: VariantSpec) -> list[str]:
    """The sizes to build ``spec`` at; a mixture-of-experts variant's with their expert count ('0.5Bx8')."""
    sizes = sorted(REGISTRY.size_table(REGISTRY.family(spec.name)))
    if not spec.capabilities.moe:
        return sizes
    experts = make_config(spec.name, sizes[0]).opt("n_experts")
    return [f"{size}x{experts}" for size in sizes] if experts else sizes


def _replaced(kind: str, name: str) -> str:
    notes = [str(r) for r in REGISTRY.replacements if (r.kind, r.name) == (kind, name)]
    return f" (replaced: {'; '.join(notes)})" if notes else ""


def run(args: argparse.Namespace) -> int:
    filters = {"group": args.group} if args.group else {}
    variants = REGISTRY.list_variants(args.pattern, **filters)
    rows = [
        {"name": v.name, "group": v.group, "family": REGISTRY.family(v.name), "sizes": variant_sizes(v),
         "plugin": v.plugin, "distribution": v.provider, **v.capabilities.as_dict(),
         "description": v.description, "replaced": [str(r) for r in REGISTRY.replacements
                                                     if (r.kind, r.name) == ("variant", v.name)]}
        for v in variants
    ]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    for row in rows:
        caps = [k for k in FLAGS if row[k]]
        fast = f" fast={row['fast_path']}" if row["fast_path"] else ""
        print(f"{row['name']:<10} {row['group']:<15} sizes={','.join(row['sizes'])} [{' '.join(caps)}]{fast}"
              f"{_replaced('variant', row['name'])}")
        print(f"{'':<10} {row['description']}")
    if args.components:
        for kind, table in REGISTRY.components.items():
            print(f"\n{kind}: " + ", ".join(f"{name}{_replaced(kind, name)}" for name in sorted(table)))
    return 0
