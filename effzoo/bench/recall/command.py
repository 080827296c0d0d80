"""The recall part of ``effzoo bench``: ``--suite recall`` runs it alone, ``--suite all`` after the groups."""
from __future__ import annotations

import argparse
from dataclasses import replace
from pathlib import Path

from .suite import RecallSettings, run_recall


def settings_from_args(args: argparse.Namespace) -> RecallSettings:
    """``--quick``, ``--variants``, ``--steps``, ``--seed``, ``--threads`` and ``--out`` (results go to
    OUT/recall)."""
    variants = [v.strip() for v in args.variants.split(",") if v.strip()] if getattr(args, "variants", None) else None
    changes = {"variants": variants, "seed": args.seed, "threads": getattr(args, "threads", None),
               "out": str(Path(args.out) / "recall")}
    settings = RecallSettings.quick(**changes) if args.quick else \
        RecallSettings(**{k: v for k, v in changes.items() if v is not None})
    if getattr(args, "steps", None):
        settings.train = replace(settings.train, steps=args.steps)
    return settings


def run_recall_command(args: argparse.Namespace) -> int:
    """Run the grid, print where the tables went and the failed cells; 1 when a cell failed."""
    settings = settings_from_args(args)
    rows = run_recall(settings)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"wrote {settings.out}/recall.{{csv,json,md,tex}} and recall-accuracy-vs-memory.png for {len(rows)} cells")
    for row in failed:
        print(f"FAILED recall {row['variant']} {row['setting']} d_model {row['d_model']}: {row.get('error')}")
    return 1 if failed else 0
