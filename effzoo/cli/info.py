"""``effzoo info VARIANT --size S``: parameters, FLOPs/token and cache bytes/token."""
from __future__ import annotations

import argparse
import json

from effzoo.analysis import info
from effzoo.cli.overrides import add_set_argument, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant")
    parser.add_argument("--size", default="tiny", help="tiny, small, 0.5B, 1.5B, 3B, MoE 0.5Bx8 (default tiny)")
    parser.add_argument("--seq-len", type=int, default=2048, help="sequence length for FLOPs/token (default 2048)")
    add_set_argument(parser)
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def _human(n: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.3f}{unit}"
    return f"{n:g}"


def run(args: argparse.Namespace) -> int:
    stats = info(args.variant, args.size, seq_len=args.seq_len, **parse_overrides(args.set))
    if args.json:
        print(json.dumps(stats, indent=2))
        return 0
    cfg = stats["config"]
    kinds = cfg["layers"] or [cfg["block"]]
    heads = f", {cfg['n_heads']} heads / {cfg['n_kv_heads']} kv heads" if cfg["attention"] else ""
    blocks = ", ".join(f"{kinds.count(k)}× {k}" for k in dict.fromkeys(kinds)) if cfg["layers"] else cfg["block"]
    print(f"{stats['variant']} {stats['size']}: {cfg['n_layers']} layers ({blocks}), d_model {cfg['d_model']}"
          f"{heads}, position {cfg['position'] or 'none'}, ffn {cfg['ffn'] or 'none'}")
    rows = [
        ("parameters", f"{stats['params']:,}"),
        ("embedding parameters", f"{stats['embedding_params']:,}"),
        ("non-embedding parameters", f"{stats['non_embedding_params']:,}"),
        ("active parameters", f"{stats['active_params']:,}"),
        (f"training FLOPs/token @ {args.seq_len}", _human(stats["train_flops_per_token"])),
        (f"forward FLOPs/token @ {args.seq_len}", _human(stats["forward_flops_per_token"])),
        ("KV-cache bytes/token (bf16)", f"{stats['kv_cache_bytes_per_token']:,}"),
        ("recurrent state bytes/sequence (bf16)", f"{stats['state_bytes_per_sequence']:,}"),
    ]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"  {key.ljust(width)}  {value}")
    return 0
