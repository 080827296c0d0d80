"""Run a suite: train every entry under identical settings, measure decoding, write tables and plots.

Each trained model gets a folder ``OUT/runs/RUN_ID`` (the trainer's checkpoints, metrics.jsonl and
metrics.json) and, once measured, ``bench_row.json``. A rerun skips entries whose row exists and resumes
interrupted ones from their latest checkpoint, so a suite can be split into parts of any length.
"""
from __future__ import annotations

import gc
import json
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..analysis import info
from ..atomic import write_json
from ..pretrained import from_pretrained
from .suites import Entry, suite_entries
from .tables import format_number, write_tables

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
        "quiet": True, **length, **settings.train_overrides,
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
    del model
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return {
        "variant": entry.variant, "size": entry.size, "overrides": dict(entry.overrides),
        "params": stats["params"], "active_params": stats["active_params"], "context_length": settings.seq_len,
        "ppl": _finite(metrics.get("ppl")), "val_loss": metrics.get("val_loss"), "amu_gb": metrics.get("amu_gb"),
        "al_s_per_iter": metrics.get("al_s"), "tt": metrics.get("tt"), "st": metrics.get("st"),
        "aec_w": metrics.get("aec_w"), "gpu_hours": metrics.get("gpu_hours"), "mfu": metrics.get("mfu"),
        "pcu": metrics.get("pcu"), "tokens_per_s": metrics.get("tokens_per_s"),
        "peak_memory_gb": metrics.get("peak_memory_gb"), "tokens": metrics.get("tokens"),
        "steps": metrics.get("steps"), "device": metrics.get("device"),
        "decode_tokens_per_s": decode, "kv_cache_bytes_per_token": stats["kv_cache_bytes_per_token"],
        "state_bytes_per_sequence": stats["state_bytes_per_sequence"],
        "throughput_sweep": [list(p) for p in sweep], "run_dir": str(run_dir), "status": "ok",
    }


def _summary_line(row: dict[str, Any]) -> str:
    def show(key: str, fmt: str) -> str:
        return format_number(row.get(key), fmt)

    return (f"ppl {show('ppl', '.2f')} | train {show('tokens_per_s', ',.0f')} tok/s | mfu {show('mfu', '.3f')} | "
            f"decode {show('decode_tokens_per_s', ',.1f')} tok/s | AMU {show('amu_gb', '.2f')} GB")


def run_suite(settings: BenchSettings) -> list[dict[str, Any]]:
    """Run (or continue) every entry of the suite and write tables and plots into ``settings.out``."""
    out = Path(settings.out)
    entries = suite_entries(settings.suite, settings.sizes, quick=settings.quick)
    rows_by_run: dict[str, dict[str, Any]] = {}
    pending = list(dict.fromkeys(e.run_id for e in entries))
    for entry in entries:
        if entry.run_id in rows_by_run:
            continue
        run_dir = out / "runs" / entry.run_id
        row_path = run_dir / ROW_NAME
        counter = f"[{pending.index(entry.run_id) + 1}/{len(pending)}] {entry.run_id}"
        if row_path.exists():
            print(f"{counter}: finished earlier, reusing {row_path}", flush=True)
            rows_by_run[entry.run_id] = json.loads(row_path.read_text())
            continue
        print(f"{counter}: training {entry.variant} at {entry.size} ...", flush=True)
        try:
            row = measure_entry(entry, settings, run_dir)
            write_json(row_path, row)
            print(f"{counter}: {_summary_line(row)}", flush=True)
        except Exception as exc:  # one broken variant must not lose the others' results
            print(f"effzoo bench: {entry.run_id} failed: {type(exc).__name__}: {exc}", file=sys.stderr)
            row = {"variant": entry.variant, "size": entry.size, "status": "failed",
                   "error": f"{type(exc).__name__}: {exc}", "run_dir": str(run_dir)}
        rows_by_run[entry.run_id] = row
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
        paths.append(plots.radar_chart(members, out / f"radar-{slug}.png", f"{group} (min–max normalised, outward = better)"))
        curves = {f"{r['method']} {r['size']}": read_loss_curve(r["run_dir"]) for r in members}
        paths.append(plots.loss_curves(curves, out / f"loss-{slug}.png", title=f"{group}: training loss"))
        sweeps = {f"{r['method']} {r['size']}": [tuple(p) for p in r.get("throughput_sweep", [])] for r in members}
        if any(sweeps.values()):
            paths.append(plots.throughput_chart(sweeps, out / f"throughput-{slug}.png"))
    return paths
