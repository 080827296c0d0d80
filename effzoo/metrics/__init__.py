"""The EfficientLLM efficiency metrics: background device sampling, MFU, per-step logs and the
``metrics.json`` summary (see docs/metrics.md for every key)."""
from __future__ import annotations

from .flops import mfu
from .logger import JSONL_NAME, StepLogger, progress_line, read_jsonl
from .sampler import DeviceSampler, SampleSummary
from .summary import SUMMARY_NAME, RunCounters, summarize, write_summary

__all__ = [
    "DeviceSampler", "JSONL_NAME", "RunCounters", "SUMMARY_NAME", "SampleSummary", "StepLogger", "mfu",
    "progress_line", "read_jsonl", "summarize", "write_summary",
]
