"""``effzoo train VARIANT``: train a variant (torchrun-aware; the embedded corpus when --data is omitted).

    effzoo train gqa --size tiny --steps 20 --out runs/t
    torchrun --nproc-per-node 8 -m effzoo train gqa --size 1.5B --data tokens/ --tokens 1e9 --fsdp
    torchrun --nproc-per-node 8 -m effzoo train gqa --size 0.5B --tp 2 --pp 2 --grad-accum 4 --steps 100
"""
from __future__ import annotations

import argparse

from effzoo.cli.overrides import add_set_argument, parse_overrides


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("variant", nargs="?", help="registered variant (see `effzoo list`); or set it in --config")
    parser.add_argument("--config", metavar="FILE", help="YAML or TOML file of settings; flags override it")
    parser.add_argument("--size", help="tiny, small, 0.5B, 1.5B, 3B, MoE 0.5Bx8 (default tiny)")
    parser.add_argument("--data", help="token directory from `effzoo data tokenize` or a Megatron PREFIX "
                                       "(default: the embedded corpus)")
    parser.add_argument("--data-mode", choices=("random", "packed"), help="window sampling (default random)")
    parser.add_argument("--seq-len", type=int, help="tokens per sequence (default min(2048, model max))")
    parser.add_argument("--batch-size", type=int, help="global batch in sequences per optimizer step (default 8)")
    parser.add_argument("--grad-accum", type=int, help="micro-steps per optimizer step (default 1)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimizer steps to train")
    length.add_argument("--tokens", type=float, help="tokens to train (e.g. 1e9); sets the step count")
    parser.add_argument("--lr", type=float, help="peak learning rate (default 1e-4)")
    parser.add_argument("--min-lr", type=float, help="cosine floor (default 1e-5)")
    parser.add_argument("--warmup-steps", type=int, help="linear warmup steps (default 1%% of the steps)")
    parser.add_argument("--weight-decay", type=float, help="AdamW weight decay (default 0.1)")
    parser.add_argument("--grad-clip", type=float, help="global gradient-norm clip, 0 = off (default 1.0)")
    parser.add_argument("--seed", type=int, help="random seed (default 1234)")
    parser.add_argument("--dtype", choices=("auto", "bf16", "fp16", "fp32"),
                        help="autocast dtype; weights stay fp32 (default auto: bf16 on GPU/NPU, fp32 on CPU)")
    parser.add_argument("--backend", choices=("auto", "cuda", "npu", "cpu"), help="device backend (default auto)")
    parser.add_argument("--kernel", help="the model's kernel setting: auto (fastest path), reference (pure PyTorch) "
                                         "or a value the variant's components declare (default auto)")
    compile_ = parser.add_mutually_exclusive_group()
    compile_.add_argument("--compile", action="store_true", default=None,
                          help="torch.compile each block (the default on CUDA; eager elsewhere)")
    compile_.add_argument("--no-compile", dest="compile", action="store_false", default=None,
                          help="run eagerly, also on CUDA")
    parser.add_argument("--fsdp", action="store_true", default=None, help="shard with FSDP2 under torchrun")
    parser.add_argument("--tp", type=int, help="tensor-parallel degree: heads and channels split over N ranks (default 1)")
    parser.add_argument("--pp", type=int, help="pipeline stages: layers split over N ranks, micro-batches from "
                                               "--grad-accum (default 1)")
    parser.add_argument("--cp", type=int, help="context-parallel degree: the sequence split over N ranks "
                                               "(CUDA SDPA attention only; default 1)")
    parser.add_argument("--pp-schedule", choices=("1f1b", "gpipe"), help="pipeline schedule (default 1f1b)")
    parser.add_argument("--activation-checkpointing", action="store_true", default=None,
                        help="recompute block activations in backward to save memory")
    parser.add_argument("--no-fused-loss", dest="fused_loss", action="store_false", default=None,
                        help="materialise the full logits (plain cross-entropy)")
    parser.add_argument("--out", help="run folder: logs, checkpoints, metrics.json (default runs/VARIANT-SIZE)")
    parser.add_argument("--resume", nargs="?", const="latest", metavar="latest|STEP",
                        help="continue from the latest checkpoint in --out, or from a given step")
    parser.add_argument("--allow-model-change", action="store_true", default=None,
                        help="resume although the model settings differ from the checkpoint's")
    parser.add_argument("--eval-every", type=int, help="validation every N steps, 0 = only at the end (default 200)")
    parser.add_argument("--eval-batches", type=int, help="validation batches per evaluation (default 8)")
    parser.add_argument("--ckpt-every", type=int, help="checkpoint every N steps, 0 = only at the end (default 1000)")
    parser.add_argument("--keep-checkpoints", type=int, help="checkpoints to keep (default 3)")
    parser.add_argument("--log-every", type=int, help="progress line every N steps (default 10)")
    parser.add_argument("--peak-tflops", type=float, help="per-device peak TFLOP/s for MFU (default: backend table)")
    parser.add_argument("--no-tensorboard", dest="tensorboard", action="store_false", default=None,
                        help="do not write TensorBoard scalars (metrics.jsonl is always written)")
    parser.add_argument("--quiet", action="store_true", default=None, help="no progress bar or lines; warnings only")
    add_set_argument(parser)


_SKIP = {"config", "set", "kernel"}  # flags that are not TrainConfig keys (every other destination is one)


def config_from_args(args: argparse.Namespace):  # type: ignore[no-untyped-def]
    """Defaults < --config file < command-line flags."""
    from effzoo.errors import ConfigError
    from effzoo.train import TrainConfig

    flags = {k: v for k, v in vars(args).items() if k not in _SKIP and v is not None}
    model = parse_overrides(args.set)
    if args.kernel is not None:
        model["kernel"] = args.kernel
    if model:
        flags["model"] = model
    if args.config:
        config = TrainConfig.from_file(args.config, **flags)
    else:
        config = TrainConfig.from_dict(flags)
    if not args.config and args.variant is None:
        raise ConfigError("name a variant (e.g. `effzoo train gqa --size tiny --steps 20`) or give --config FILE")
    return config


def run(args: argparse.Namespace) -> int:
    import os
    import sys

    from effzoo.train import TrainingError, train

    config = config_from_args(args)
    try:
        result = train(config)
    except TrainingError as exc:  # the run itself failed (non-finite losses, out of memory): exit code 1
        print(f"effzoo train: error: {exc}", file=sys.stderr)
        return 1
    if int(os.environ.get("RANK", 0)) != 0:  # under torchrun only rank 0 reports
        return 0
    metrics = result.metrics
    mfu = metrics.get("mfu")
    print(f"done: {metrics['steps']} steps, {metrics['tokens']:,} tokens, {(metrics['tokens_per_s'] or 0):,.0f} tok/s, "
          f"mfu {'-' if mfu is None else f'{mfu * 100:.2f}%'} -> {result.out / 'metrics.json'}")
    return 0
