"""``effzoo bench``: train every variant of a group under identical settings and write the tables."""
from __future__ import annotations

import argparse
import logging

from effzoo.bench.runner import BenchSettings, run_suite
from effzoo.bench.suites import SUITES


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--suite", default="all",
                        help=f"{' | '.join(SUITES)} | recall | parallel | all (default all: every group, then recall)")
    parser.add_argument("--variants", help="recall suite: comma-separated variants (default: every registered one)")
    parser.add_argument("--sizes", help="comma-separated sizes, e.g. 0.5B,1.5B (default: the paper's per group)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny models on the embedded corpus (GPU if present, else CPU): minutes")
    parser.add_argument("--out", default="runs/bench", help="output folder (tables, plots, runs/)")
    parser.add_argument("--data", help="token directory or Megatron prefix (default: the embedded corpus)")
    parser.add_argument("--tokens", type=float, help="training tokens per variant, e.g. 1e7")
    parser.add_argument("--steps", type=int, help="training steps per variant (instead of --tokens)")
    parser.add_argument("--seq-len", type=int, help="context length (default 2048; 128 with --quick)")
    parser.add_argument("--batch-size", type=int, help="global batch in sequences (default 8)")
    parser.add_argument("--backend", help="auto | cuda | npu | cpu (default auto)")
    parser.add_argument("--dtype", help="auto | bf16 | fp16 | fp32 (default auto)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the models (CUDA)")
    parser.add_argument("--seed", type=int, help="seed shared by every variant (default 1234)")
    parser.add_argument("--eval-every", type=int, help="validation every N steps")
    parser.add_argument("--decode-tokens", type=int, help="new tokens for the decode-throughput measurement")
    parser.add_argument("--sweep", help="sequence lengths for the throughput sweep, e.g. 2048,4096,8192 ('' = off)")
    parser.add_argument("--peak-tflops", type=float,
                        help="per-device peak TFLOP/s for MFU (default: the GPU's table; on CPU measured once "
                             "per suite)")
    parser.add_argument("--threads", type=int,
                        help="CPU threads of each variant's process (default: the available cores that are idle "
                             "when the suite starts)")
    parser.add_argument("--layouts", help="parallel suite: comma-separated layouts, e.g. dp8,tp2dp4,tp4dp2,pp2dp4")
    parser.add_argument("--batch-sizes", help="parallel suite: comma-separated global batch sizes (default 8)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or progress lines")


def run(args: argparse.Namespace) -> int:
    from effzoo.errors import ConfigError

    for flag, value in (("--peak-tflops", args.peak_tflops), ("--threads", args.threads)):
        if value is not None and value <= 0:
            raise ConfigError(f"{flag} must be positive, got {value:g}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    changes = {
        "suite": args.suite, "sizes": args.sizes.split(",") if args.sizes else None, "out": args.out,
        "data": args.data, "tokens": args.tokens, "steps": args.steps, "seq_len": args.seq_len,
        "batch_size": args.batch_size, "backend": args.backend, "dtype": args.dtype,
        "compile": args.compile or None, "seed": args.seed, "eval_every": args.eval_every,
        "decode_tokens": args.decode_tokens, "peak_tflops": args.peak_tflops, "threads": args.threads,
        "quiet": args.quiet or None,
    }
    if args.sweep is not None:
        changes["sweep_seq_lens"] = [int(x) for x in args.sweep.split(",") if x.strip()]
    if args.quick:
        settings = BenchSettings.quick_defaults(**changes)
    else:
        if args.tokens is None and args.steps is None:
            changes["tokens"] = 1e7
        settings = BenchSettings(**{k: v for k, v in changes.items() if v is not None})
    if args.suite == "parallel":
        from effzoo.bench.parallel_suite import run_parallel_command

        return run_parallel_command(args)
    if args.suite == "recall":
        from effzoo.bench.recall.command import run_recall_command

        return run_recall_command(args)
    rows = run_suite(settings)
    failed = [r for r in rows if r.get("status") != "ok"]
    print(f"wrote {settings.out}/results.{{csv,json,md,tex}} and plots for {len(rows)} rows")
    for row in failed:
        print(f"FAILED {row['group']}/{row['method']}: {row.get('error')}")
    recall_failed = 0
    if args.suite == "all":
        from effzoo.bench.recall.command import run_recall_command

        recall_failed = run_recall_command(args)
    return 1 if failed or recall_failed else 0
