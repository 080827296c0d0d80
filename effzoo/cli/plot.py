"""``effzoo plot``: compare loss curves (tokens on the x axis) of runs or Megatron / nanochat logs."""
from __future__ import annotations

import argparse
from pathlib import Path

from effzoo.bench.curves import read_loss_curve
from effzoo.bench.plots import loss_curves


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", help="effzoo run folders, metrics.jsonl files or text training logs")
    parser.add_argument("--output", default="loss.png", help="image file to write (default loss.png)")
    parser.add_argument("--labels", help="comma-separated legend labels (default: the source names)")
    parser.add_argument("--title", default="Training loss")
    parser.add_argument("--smooth-window", type=int, default=1, help="moving-average window in points")
    parser.add_argument("--token-threshold", type=float, help="plot only points after this many tokens")
    parser.add_argument("--exp", action="store_true", help="plot exp(loss) (perplexity) instead of loss")
    parser.add_argument("--tokens-per-step", type=float, help="tokens per step, for text logs")
    parser.add_argument("--seq-len", type=int, help="sequence length, for Megatron logs with consumed samples")


def run(args: argparse.Namespace) -> int:
    labels = args.labels.split(",") if args.labels else [Path(s).name for s in args.sources]
    if len(labels) != len(args.sources):
        from effzoo.errors import ConfigError

        raise ConfigError(f"--labels names {len(labels)} curves but {len(args.sources)} sources were given")
    curves = {label: read_loss_curve(source, tokens_per_step=args.tokens_per_step, seq_len=args.seq_len)
              for label, source in zip(labels, args.sources)}
    path = loss_curves(curves, args.output, title=args.title, smooth_window=args.smooth_window,
                       token_threshold=args.token_threshold, exp_loss=args.exp)
    print(path)
    return 0
