"""Run a suite: train every entry under identical settings, measure decoding, write tables and plots.

Each entry runs in its own Python process (``effzoo.bench.worker``): a crash is one failed row and the
suite goes on, and memory (AMU, peak) is the entry's own, not what earlier entries left behind. Each
trained model gets a folder ``OUT/runs/RUN_ID`` (the trainer's checkpoints, metrics.jsonl and
metrics.json, the child's ``bench.log``) and, once measured, ``bench_row.json``. A rerun skips entries
whose row exists and resumes interrupted ones from their latest checkpoint, so a suite can be split into
parts of any length.
"""
from __future__ import annotations

import datetime
import json
import math
import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from ..analysis import info
from ..atomic import write_json
from ..errors import EffzooError
from ..pretrained import from_pretrained
from .progress import SuiteProgress, choose_mode
from .suites import Entry, suite_entries
from .tables import format_number, write_tables
from .worker import DEFAULT_MEASURE, ERROR_NAME, LOG_NAME, thread_env, worker_command, write_spec

ROW_NAME = "bench_row.json"


@dataclass
class BenchSettings:
    """Identical training settings for every entry of a suite."""

    suite: str = "all"
    sizes: list[str] | None = None
    quick: bool = False
    out: str = "runs/bench"
    data: str | None = None
    seq_len: int = 2048
    batch_size: int = 8
    tokens: float | None = None
    steps: int | None = None
    seed: int = 1234
    backend: str = "auto"
    dtype: str = "auto"
    compile: bool | None = None  # None: the trainer's default (per-block compile on CUDA, eager elsewhere)
    eval_every: int = 200
    decode_prompt: int = 128
    decode_tokens: int = 256
    sweep_seq_lens: list[int] = field(default_factory=list)
    sweep_tokens: int = 16384
    train_overrides: dict[str, Any] = field(default_factory=dict)
    peak_tflops: float | None = None  # MFU's per-device peak; None: measured once per suite on CPU
    peak_source: str | None = None  # where peak_tflops came from (filled by run_suite)
    threads: int | None = None  # CPU threads per child; None: the cores available to this process
    quiet: bool = False  # no progress output

    @classmethod
    def quick_defaults(cls, **changes: Any) -> "BenchSettings":
        """Tiny models on the embedded corpus (GPU when there is one, else CPU): the suite in minutes."""
        base = dict(quick=True, seq_len=128, batch_size=8, steps=60, eval_every=30, backend="auto",
                    decode_prompt=32, decode_tokens=32, sweep_seq_lens=[64, 128, 256], sweep_tokens=1024,
                    train_overrides={"lr": 2e-3, "min_lr": 2e-4, "warmup_steps": 5})
        base.update({k: v for k, v in changes.items() if v is not None})
        return cls(**base)


def _train_config(entry: Entry, settings: BenchSettings, run_dir: Path, resume: bool) -> dict[str, Any]:
    length = {"steps": settings.steps} if settings.steps is not None else {"tokens": settings.tokens}
    return {
        "variant": entry.variant, "size": entry.size, "model": dict(entry.overrides), "data": settings.data,
        "seq_len": settings.seq_len, "batch_size": settings.batch_size, "seed": settings.seed,
        "backend": settings.backend, "dtype": settings.dtype, "compile": settings.compile,
        "eval_every": settings.eval_every, "out": str(run_dir), "resume": "latest" if resume else None,
        "ckpt_every": max(1, (settings.steps or 10**9) // 2) if settings.quick else 1000,
        "peak_tflops": settings.peak_tflops, "quiet": True, **length, **settings.train_overrides,
    }


def _finite(value: Any) -> Any:
    return value if not isinstance(value, float) or math.isfinite(value) else None


def measure_entry(entry: Entry, settings: BenchSettings, run_dir: Path) -> dict[str, Any]:
    """Train (or resume) one entry, then measure decode throughput and cache size; returns its row."""
    from ..train import train
    from ..train.checkpoint import list_checkpoints
    from .speed import decode_throughput, training_throughput

    resume = bool(list_checkpoints(run_dir))
    result = train(_train_config(entry, settings, run_dir, resume))
    metrics = result.metrics
    device = metrics.get("backend", "cpu")
    model = from_pretrained(result.checkpoint, device=device, dtype=None if device == "cpu" else "bf16").eval() \
        if result.checkpoint is not None else None
    decode = decode_throughput(model, prompt_len=settings.decode_prompt, new_tokens=settings.decode_tokens) \
        if model is not None else None
    stats = info(entry.variant, entry.size, seq_len=settings.seq_len, **dict(entry.overrides),
                 vocab_size=model.config.vocab_size if model is not None else None)
    sweep = training_throughput(entry.variant, entry.size, settings.sweep_seq_lens,
                                tokens_per_batch=settings.sweep_tokens,
                                device=device,
                                dtype=None if settings.dtype in ("auto", "fp32") else settings.dtype,
                                vocab_size=model.config.vocab_size if model is not None else None,
                                **entry.overrides) if settings.sweep_seq_lens else []
    peak = metrics.get("peak_flops_per_device")
    return {
        "variant": entry.variant, "size": entry.size, "overrides": dict(entry.overrides),
        "params": stats["params"], "active_params": stats["active_params"], "context_length": settings.seq_len,
        "ppl": _finite(metrics.get("ppl")), "val_loss": metrics.get("val_loss"), "amu_gb": metrics.get("amu_gb"),
        "al_s_per_iter": metrics.get("al_s"), "tt": metrics.get("tt"), "st": metrics.get("st"),
        "aec_w": metrics.get("aec_w"), "energy_source": metrics.get("energy_source"),
        "device_hours": metrics.get("gpu_hours"), "mfu": metrics.get("mfu"),
        "pcu": metrics.get("pcu"), "tokens_per_s": metrics.get("tokens_per_s"),
        "peak_memory_gb": metrics.get("peak_memory_gb"), "tokens": metrics.get("tokens"),
        "steps": metrics.get("steps"), "batch_size": settings.batch_size, "device": metrics.get("device"),
        "device_kind": metrics.get("backend"), "dtype": metrics.get("dtype"), "threads": torch.get_num_threads(),
        "torch_version": torch.__version__, "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
        "peak_tflops": peak / 1e12 if peak else None,
        "peak_source": settings.peak_source or metrics.get("peak_flops_source"),
        "decode_tokens_per_s": decode, "kv_cache_bytes_per_token": stats["kv_cache_bytes_per_token"],
        "state_bytes_per_sequence": stats["state_bytes_per_sequence"],
        "throughput_sweep": [list(p) for p in sweep], "run_dir": str(run_dir), "status": "ok",
    }


def _summary_line(row: dict[str, Any]) -> str:
    def show(key: str, fmt: str) -> str:
        return format_number(row.get(key), fmt)

    return (f"ppl {show('ppl', '.2f')} | train {show('tokens_per_s', ',.0f')} tok/s | mfu {show('mfu', '.3f')} | "
            f"decode {show('decode_tokens_per_s', ',.1f')} tok/s | AMU {show('amu_gb', '.2f')} GB")


def with_peak(settings: BenchSettings, threads: int) -> BenchSettings:
    """The suite's MFU peak: ``--peak-tflops`` when given; on CPU measured here once (best of several
    matmuls on the children's thread count); elsewhere the backend's table (filled in by each child)."""
    from ..build import parse_dtype
    from .speed import matmul_peak_flops

    if settings.peak_tflops:
        return replace(settings, peak_source="--peak-tflops")
    if not _on_cpu(settings):
        return settings
    dtype = torch.float32 if settings.dtype in ("auto", "fp32") else parse_dtype(settings.dtype)
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        flops, how = matmul_peak_flops(torch.device("cpu"), dtype)
    finally:
        torch.set_num_threads(previous)
    return replace(settings, peak_tflops=flops / 1e12, peak_source=f"{how}, {threads} thread{'s' * (threads != 1)}")


def _idle_cores() -> int:
    """The available cores that other processes leave idle now (at least 1)."""
    from ..cli.machine import available_cpus, plan_threads

    cores = available_cpus()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    return plan_threads(cores, cores, load, environ={}).threads


def child_threads(requested: int | None) -> int:
    """Threads of every child: ``--threads``, else ``OMP_NUM_THREADS``, else the available cores that other
    processes leave idle when the suite starts (the same count for all)."""
    pinned = os.environ.get("OMP_NUM_THREADS", "")
    if requested:
        return requested
    if pinned.isdigit() and int(pinned) > 0:
        return int(pinned)
    return _idle_cores()


def _on_cpu(settings: BenchSettings) -> bool:
    from ..backends import detect

    return (detect() if settings.backend == "auto" else settings.backend) == "cpu"


def plan_children(settings: BenchSettings) -> tuple[int, int]:
    """(threads of every child, children running at once). A quick suite on CPU runs one child per idle
    core, one thread each (``--threads`` or ``OMP_NUM_THREADS`` sets the threads, the children share the
    idle cores): tiny models train as fast on one thread as on two. Otherwise one child at a time with
    :func:`child_threads`."""
    if settings.quick and _on_cpu(settings):
        pinned = os.environ.get("OMP_NUM_THREADS", "")
        threads = settings.threads or (int(pinned) if pinned.isdigit() and int(pinned) > 0 else 1)
        return threads, max(1, _idle_cores() // threads)
    return child_threads(settings.threads), 1


def planned_steps(settings: BenchSettings) -> int:
    """Training steps per entry (as the trainer computes them)."""
    if settings.steps is not None:
        return settings.steps
    return max(1, math.ceil(float(settings.tokens or 0) / (settings.batch_size * settings.seq_len)))


def _steps_done(run_dir: Path) -> int:
    """The last training step the child logged to its metrics.jsonl (0 before the first)."""
    from ..metrics.logger import JSONL_NAME

    try:
        lines = (run_dir / JSONL_NAME).read_text(encoding="utf-8").splitlines()
    except OSError:
        return 0
    for line in reversed(lines):
        try:
            record = json.loads(line)
        except ValueError:  # a line being written
            continue
        if record.get("kind") == "train":
            return int(record.get("step", 0))
    return 0


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"worker killed by {name}" + (" (out of memory?)" if -code == signal.SIGKILL else "")
    return f"worker exited with status {code}"


def run_isolated(entry: Entry, settings: BenchSettings, run_dir: Path, threads: int, on_step: Any = None,
                 poll_s: float = 0.5, measure: str = DEFAULT_MEASURE,
                 cancel: threading.Event | None = None) -> dict[str, Any]:
    """Measure ``entry`` with ``measure`` (``module:function``, default: train, then measure decoding) in a
    child process; its row, or a failed row naming why it failed. ``on_step(steps)`` reports training;
    ``cancel`` set kills the child (the suite was interrupted)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / ERROR_NAME).unlink(missing_ok=True)
    spec = write_spec(run_dir, entry, settings, threads, measure)
    log_path = run_dir / LOG_NAME
    start = time.perf_counter()
    with log_path.open("ab") as log:
        child = subprocess.Popen(worker_command(spec), stdout=log, stderr=subprocess.STDOUT, env=thread_env(threads))
        try:
            while True:
                pid, status, usage = os.wait4(child.pid, os.WNOHANG)  # this child's own CPU time
                if pid:
                    code = child.returncode = os.waitstatus_to_exitcode(status)
                    break
                time.sleep(poll_s)
                if cancel is not None and cancel.is_set():
                    raise KeyboardInterrupt
                if on_step is not None:
                    on_step(_steps_done(run_dir))
        except BaseException:  # Ctrl-C or a time limit: the child must not outlive the suite
            child.kill()
            child.wait()
            raise
    cost = {"worker_wall_s": time.perf_counter() - start, "worker_cpu_s": usage.ru_utime + usage.ru_stime}
    row_path = run_dir / ROW_NAME
    if code == 0 and row_path.exists():
        row = {**json.loads(row_path.read_text()), **cost}
        write_json(row_path, row)
        return row
    error_path = run_dir / ERROR_NAME
    error = json.loads(error_path.read_text())["error"] if error_path.exists() else _exit_reason(code)
    return {"variant": entry.variant, "size": entry.size, "overrides": dict(entry.overrides), "status": "failed",
            "error": f"{error} (log: {log_path})", "run_dir": str(run_dir), **cost}


def run_suite(settings: BenchSettings) -> list[dict[str, Any]]:
    """Run (or continue) every entry of the suite, each in its own process (several at once where
    :func:`plan_children` says so), and write tables and plots into ``settings.out``."""
    out = Path(settings.out)
    entries = suite_entries(settings.suite, settings.sizes, quick=settings.quick)
    first: dict[str, Entry] = {}
    for entry in entries:  # a model in several groups (GQA) is trained once
        first.setdefault(entry.run_id, entry)
    unique = list(first.values())
    threads, workers = plan_children(settings)
    pending = [e for e in unique if not (out / "runs" / e.run_id / ROW_NAME).exists()]
    settings = with_peak(settings, threads) if pending else settings
    progress = SuiteProgress(len(unique), mode=choose_mode(sys.stdout, settings.quiet), workers=workers)
    lock = threading.Lock()  # progress is reported from the threads that wait for the children
    cancel = threading.Event()
    rows_by_run: dict[str, dict[str, Any]] = {}

    def run_one(index: int, entry: Entry) -> None:
        counter = f"[{index}/{len(unique)}] {entry.run_id}"
        with lock:
            progress.begin(index, entry.run_id, planned_steps(settings))

        def on_step(steps: int) -> None:
            with lock:
                progress.step(steps, entry.run_id)

        row = run_isolated(entry, settings, out / "runs" / entry.run_id, threads, on_step, cancel=cancel)
        with lock:
            rows_by_run[entry.run_id] = row
            summary = _summary_line(row) if row["status"] == "ok" else f"failed: {row['error']}"
            progress.end(f"{counter}: {summary}", name=entry.run_id)

    try:
        pending = []
        for index, entry in enumerate(unique, 1):
            row_path = out / "runs" / entry.run_id / ROW_NAME
            if row_path.exists():
                rows_by_run[entry.run_id] = json.loads(row_path.read_text())
                progress.end(f"[{index}/{len(unique)}] {entry.run_id}: finished earlier, reusing {row_path}",
                             ran=False)
            else:
                pending.append((index, entry))
        if workers == 1:
            for index, entry in pending:
                run_one(index, entry)
        else:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                futures = [pool.submit(run_one, index, entry) for index, entry in pending]
                try:
                    for future in futures:
                        future.result()
                except BaseException:  # Ctrl-C: no new child starts, the running ones are killed
                    cancel.set()
                    pool.shutdown(cancel_futures=True)
                    raise
    finally:
        progress.close()
    rows = [{"group": e.group, "method": e.method, **rows_by_run[e.run_id]} for e in entries]
    write_report(rows, out)
    return rows


def write_report(rows: list[dict[str, Any]], out: Path) -> list[Path]:
    """Tables (CSV, JSON, Markdown, LaTeX) and figures (radar, loss curves, throughput) for ``rows``."""
    from . import plots
    from .curves import read_loss_curve

    paths = write_tables(rows, out)
    if not plots.available():
        print("effzoo bench: matplotlib is not installed, so no plots were drawn "
              "(pip install 'effzoo[plots]', then `effzoo report` redraws them)", file=sys.stderr)
        return paths
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group and r.get("status") == "ok"]
        if not members:
            continue
        slug = group.replace(" ", "-")
        paths.append(plots.radar_chart(members, out / f"radar-{slug}.png",
                                       f"{group}: each metric relative to the group's best (outward = better)"))
        curves, missing = {}, []
        for r in members:  # a copied results folder may come without its run folders
            try:
                curves[f"{r['method']} {r['size']}"] = read_loss_curve(r["run_dir"])
            except EffzooError:
                missing.append(r["method"])
        if missing:
            print(f"effzoo: {group}: no training log for {', '.join(missing)} (run folders not found), so their "
                  "loss curves are not drawn", file=sys.stderr)
        if curves:
            paths.append(plots.loss_curves(curves, out / f"loss-{slug}.png", title=f"{group}: training loss"))
        sweeps = {f"{r['method']} {r['size']}": [tuple(p) for p in r.get("throughput_sweep", [])] for r in members}
        if any(sweeps.values()):
            paths.append(plots.throughput_chart(sweeps, out / f"throughput-{slug}.png",
                                                title=f"{group}: training throughput vs sequence length"))
    return paths
