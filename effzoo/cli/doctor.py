"""``effzoo doctor``: the torch build, the device, the optional kernels (and what a missing one costs),
the thread settings, and whether this machine runs ``effzoo bench --suite all --quick`` in its stated time."""
from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import os
import statistics
import time
from dataclasses import asdict, dataclass
from typing import Any

from effzoo.cli.machine import available_cpus, plan_threads

CPU_TORCH = "pip install torch --index-url https://download.pytorch.org/whl/cpu"
# The quick suite's stated time (README): 4 min 1 s for `effzoo bench --suite all --quick` (the four groups'
# models two at a time, one thread each, then the recall grid's cells likewise) on 2 idle cores of an AMD EPYC
# VM, torch 2.13.0 CPU, measured 2026-12-02, where the probe below gave a median of 204 GFLOP/s on one thread.
QUICK_SUITE_SECONDS = 241.0
QUICK_SUITE_CORES = 2
REFERENCE_PROBE_GFLOPS = 204.0
PROBE_SIZE = 512


@dataclass(frozen=True)
class Kernel:
    """An optional package: how to find it, what effzoo uses it for, and what its absence costs."""

    name: str
    module: str
    distribution: str
    gpu_only: bool
    cost: str
    install: str


KERNELS = (
    Kernel("Triton", "triton", "triton", True,
           "GPU Mamba-2 SSD and RWKV-7 chunk kernels fall back to the PyTorch reference (several times slower); "
           "the CPU Triton-interpreter tests are skipped",
           "comes with a CUDA torch; else pip install triton"),
    Kernel("fla", "fla", "flash-linear-attention", True,
           "RWKV-7 uses effzoo's own Triton chunk kernel instead of fla's chunk_rwkv7",
           "pip install 'effzoo[fla]'"),
    Kernel("mamba-ssm", "mamba_ssm", "mamba-ssm", True,
           "Mamba-2 uses effzoo's Triton SSD kernels on GPU; Mamba-1's selective scan runs in PyTorch",
           "pip install mamba-ssm --no-build-isolation (CUDA compile)"),
    Kernel("causal-conv1d", "causal_conv1d", "causal-conv1d", True,
           "Mamba's short convolution runs as a PyTorch conv1d",
           "pip install causal-conv1d --no-build-isolation (CUDA compile)"),
    Kernel("flash-attn", "flash_attn", "flash-attn", True,
           "none: effzoo's attention runs on torch scaled_dot_product_attention (its own flash kernels)",
           "pip install flash-attn --no-build-isolation (CUDA compile)"),
    Kernel("NVML", "pynvml", "nvidia-ml-py", True,
           "no GPU energy and power readings: the AEC column stays empty",
           "pip install 'effzoo[energy]'"),
    Kernel("torch_npu", "torch_npu", "torch-npu", False,
           "no Ascend NPU backend",
           "pip install 'effzoo[npu]' (needs the CANN runtime)"),
    Kernel("lm-eval", "lm_eval", "lm_eval", False,
           "no `effzoo eval lm-eval` (EleutherAI harness tasks); ppl and MMLU still work",
           "pip install lm_eval"),
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--no-probe", action="store_true",
                        help="skip the 1-second matmul probe (and the --quick time estimate)")
    parser.add_argument("--probe-seconds", type=float, default=1.0,
                        help="how long the matmul probe runs (default 1.0)")
    parser.add_argument("--json", action="store_true", help="machine-readable output")


def torch_build() -> dict[str, Any]:
    """torch's version and build kind (CUDA, ROCm or CPU), and the device effzoo would use."""
    import torch

    from effzoo.backends import detect

    if torch.version.hip:
        kind = f"ROCm {torch.version.hip}"
    elif torch.version.cuda:
        kind = f"CUDA {torch.version.cuda}"
    else:
        kind = "CPU"
    backend = detect()
    if backend == "cuda":
        device = f"cuda: {torch.cuda.get_device_name(0)} ({torch.cuda.device_count()} visible)"
    elif backend == "npu":
        device = "npu: Ascend NPU"
    else:
        device = f"cpu: {available_cpus()} cores available"
    return {"version": torch.__version__, "kind": kind, "backend": backend, "device": device}


def kernel_status(kernel: Kernel) -> dict[str, Any]:
    """Whether ``kernel`` is installed (found without importing it) and at which version."""
    found = importlib.util.find_spec(kernel.module) is not None
    version = None
    if found:
        try:
            version = importlib.metadata.version(kernel.distribution)
        except importlib.metadata.PackageNotFoundError:
            pass
    return {**asdict(kernel), "present": found, "version": version}


def matmul_probe(threads: int, seconds: float, size: int = PROBE_SIZE) -> dict[str, float]:
    """fp32 ``size``² matmuls for ``seconds`` on ``threads`` threads: best and median GFLOP/s."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        a @ b  # warm-up
        times: list[float] = []
        end = time.perf_counter() + seconds
        while time.perf_counter() < end or len(times) < 3:
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    flops = 2.0 * size**3
    return {"threads": threads, "runs": len(times), "best_gflops": flops / min(times) / 1e9,
            "median_gflops": flops / statistics.median(times) / 1e9}


def quick_suite_estimate(median_gflops: float, cores: int = QUICK_SUITE_CORES) -> float:
    """Seconds the CPU quick suite should take at this one-thread probe speed on ``cores`` idle cores (its
    one-thread children run one per idle core), scaled from the stated time."""
    parallel = min(max(int(cores), 1), QUICK_SUITE_CORES)
    return QUICK_SUITE_SECONDS * REFERENCE_PROBE_GFLOPS / max(median_gflops, 1e-9) * QUICK_SUITE_CORES / parallel


def diagnose(probe_seconds: float | None) -> dict[str, Any]:
    """Everything ``effzoo doctor`` reports, as a dictionary (``--json``)."""
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    plan = plan_threads(torch.get_num_threads(), available_cpus(), load)
    report: dict[str, Any] = {
        "torch": torch_build(), "kernels": [kernel_status(k) for k in KERNELS],
        "threads": {**asdict(plan), "cpu_count": os.cpu_count(), "oversubscribed": plan.oversubscribed},
        "quick_suite": {"stated_seconds": QUICK_SUITE_SECONDS},
    }
    if probe_seconds is not None and report["torch"]["backend"] == "cpu":
        probe = matmul_probe(1, probe_seconds)  # the quick suite's children run on one thread each
        idle_cores = plan.threads if plan.pinned_by is None else plan.cores
        estimate = quick_suite_estimate(probe["median_gflops"], idle_cores)
        report["quick_suite"].update(probe=probe, estimate_seconds=estimate,
                                     fits=estimate <= 1.5 * QUICK_SUITE_SECONDS)
    return report


def _minutes(seconds: float) -> str:
    return f"{seconds / 60:.0f} min" if seconds >= 600 else f"{int(seconds // 60)} min {int(seconds % 60)} s"


def render(report: dict[str, Any]) -> list[str]:
    """The human-readable report."""
    build, threads, quick = report["torch"], report["threads"], report["quick_suite"]
    lines = [f"torch {build['version']} ({build['kind']} build)", f"device: {build['device']}"]
    if build["backend"] == "cpu" and build["kind"] != "CPU":
        lines.append(f"  note: a {build['kind']} torch on a machine without a GPU: several GB for nothing; "
                     f"a CPU build computes the same ({CPU_TORCH})")
    lines += ["", "optional kernels:"]
    for kernel in report["kernels"]:
        if kernel["present"]:
            lines.append(f"  {kernel['name']:<14} present {kernel['version'] or ''}".rstrip())
            continue
        no_cost = kernel["gpu_only"] and build["backend"] == "cpu"
        cost = "no cost on this machine (GPU only)" if no_cost else kernel["cost"]
        lines.append(f"  {kernel['name']:<14} missing: {cost}; install: {kernel['install']}")
    lines += ["", f"threads: torch uses {threads['current']}; {threads['cores']} cores available "
                  f"(os.cpu_count {threads['cpu_count']}), 1-min load {threads['load']:.1f}"]
    if threads["pinned_by"]:
        lines.append(f"  {threads['pinned_by']} is set: the effzoo command keeps {threads['current']} thread(s)")
    elif threads["oversubscribed"]:
        lines.append(f"  oversubscribed: the effzoo command will use {threads['threads']} thread(s) "
                     "(set OMP_NUM_THREADS to choose)")
    else:
        lines.append("  no oversubscription")
    lines.append("")
    stated = f"stated {_minutes(quick['stated_seconds'])} on 2 idle CPU cores"
    if "estimate_seconds" in quick:
        probe = quick["probe"]
        verdict = "fits" if quick["fits"] else "will take longer than stated"
        lines.append(f"effzoo bench --suite all --quick: about {_minutes(quick['estimate_seconds'])} here ({stated}): "
                     f"{verdict}")
        lines.append(f"  probe: {PROBE_SIZE}x{PROBE_SIZE} fp32 matmul on {probe['threads']} thread(s), median "
                     f"{probe['median_gflops']:.1f} GFLOP/s, best {probe['best_gflops']:.1f} "
                     f"(reference {REFERENCE_PROBE_GFLOPS:.0f})")
    elif build["backend"] != "cpu":
        lines.append(f"effzoo bench --suite all --quick: runs on {build['backend']} ({stated})")
    else:
        lines.append(f"effzoo bench --suite all --quick: {stated} (probe skipped)")
    return lines


def run(args: argparse.Namespace) -> int:
    if args.probe_seconds <= 0:
        from effzoo.errors import ConfigError

        raise ConfigError(f"--probe-seconds must be > 0, got {args.probe_seconds}")
    report = diagnose(None if args.no_probe else args.probe_seconds)
    print(json.dumps(report, indent=2) if args.json else "\n".join(render(report)))
    return 0
