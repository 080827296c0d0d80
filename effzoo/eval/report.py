"""Evaluation results as JSON and as a Markdown table."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from effzoo.atomic import write_json, write_text


def markdown_table(result: dict[str, Any]) -> str:
    """Perplexity: one row of numbers. MMLU/CMMLU: one row per subject, then the overall rows."""
    if result["task"] == "ppl":
        return ("| model | data | split | tokens | loss | perplexity |\n|---|---|---|---:|---:|---:|\n"
                f"| {result['model']} | {result['data']} | {result.get('split', '')} | {result['tokens']:,} | "
                f"{result['loss']:.4f} | {result['ppl']:.3f} |\n")
    lines = [f"**{result['task'].upper()}** — {result['model']}, {result['shots']}-shot, split `{result.get('split', 'test')}`", "",
             "| subject | correct | total | accuracy |", "|---|---:|---:|---:|"]
    for subject, s in sorted(result["subjects"].items()):
        lines.append(f"| {subject} | {s['correct']} | {s['total']} | {100 * s['accuracy']:.2f}% |")
    lines.append(f"| **overall (questions)** | {result['correct']} | {result['questions']} | "
                 f"**{100 * result['accuracy']:.2f}%** |")
    lines.append(f"| **mean over subjects** | | {len(result['subjects'])} subjects | "
                 f"{100 * result['macro_accuracy']:.2f}% |")
    return "\n".join(lines) + "\n"


def write_report(result: dict[str, Any], prefix: str | os.PathLike[str]) -> tuple[Path, Path]:
    """Write ``PREFIX.json`` and ``PREFIX.md`` atomically; returns both paths."""
    prefix = Path(prefix)
    json_path = write_json(prefix.with_name(prefix.name + ".json"), result)
    md_path = write_text(prefix.with_name(prefix.name + ".md"), markdown_table(result))
    return json_path, md_path
