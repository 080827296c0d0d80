"""EfficientLLM tables from benchmark rows: CSV (every field), JSON, Markdown and LaTeX (paper layout)."""
from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_text

Row = dict[str, Any]
MISSING = "–"  # the cell of a value that was not measured


def format_number(value: Any, fmt: str) -> str:
    """``format(value, fmt)``, or an en dash for a missing or non-finite value."""
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return MISSING
    return format(value, fmt)


def _num(fmt: str) -> Callable[[Any], str]:
    return lambda value: format_number(value, fmt)


def params_label(n: Any) -> str:
    """494032768 -> '0.49B', 125000000 -> '125.0M'."""
    if not n:
        return MISSING
    return f"{n / 1e9:.2f}B" if n >= 1e8 else f"{n / 1e6:.1f}M"


# (header, row key, formatter): the paper's column layout (Method | Parameters | Context Length | PPL |
# AMU (GB) | AL (s/iter) | TT | AEC (W) | GPU Hours), then the measurements effzoo adds.
Column = tuple[str, str, Callable[[Any], str]]
PAPER_COLUMNS: list[Column] = [
    ("Method", "method", str),
    ("Parameters", "params", params_label),
    ("Context Length", "context_length", _num("d")),
    ("PPL", "ppl", _num(".2f")),
    ("AMU (GB)", "amu_gb", _num(".2f")),
    ("AL (s/iter)", "al_s_per_iter", _num(".4f")),
    ("TT (Tokens/param/s)", "tt", _num(".3e")),
    ("AEC (W)", "aec_w", _num(".1f")),
    ("GPU Hours", "gpu_hours", _num(".4f")),
]
EXTRA_COLUMNS: list[Column] = [
    ("MFU", "mfu", _num(".3f")),
    ("Train tok/s", "tokens_per_s", _num(".0f")),
    ("Decode tok/s (IT)", "decode_tokens_per_s", _num(".1f")),
    ("KV B/token", "kv_cache_bytes_per_token", _num(",d")),
    ("Peak GB", "peak_memory_gb", _num(".2f")),
]


def _cells(row: Row, columns: Sequence[Column]) -> list[str]:
    return [fmt(row.get(key)) for _, key, fmt in columns]


def to_markdown(rows: Sequence[Row], extras: bool = True) -> str:
    """One Markdown table per group, paper columns first."""
    columns = PAPER_COLUMNS + (EXTRA_COLUMNS if extras else [])
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        out.append(f"### {group}\n")
        out.append("| " + " | ".join(h for h, _, _ in columns) + " |")
        out.append("|" + "---|" * len(columns))
        for row in (r for r in rows if r["group"] == group):
            cells = _cells(row, columns)
            if row.get("status") == "failed":
                cells[0] += " (failed)"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#")):
        text = text.replace(char, repl)
    return text


def to_latex(rows: Sequence[Row]) -> str:
    """A booktabs table in the paper's column layout, one block per group."""
    headers = [h for h, _, _ in PAPER_COLUMNS]
    lines = [r"\begin{tabular}{l" + "r" * (len(headers) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in headers) + r" \\", r"\midrule"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for index, group in enumerate(groups):
        lines.append(rf"\multicolumn{{{len(headers)}}}{{l}}{{\textit{{{_latex_escape(group)}}}}} \\")
        for row in (r for r in rows if r["group"] == group):
            cells = [c.replace(MISSING, "--") for c in _cells(row, PAPER_COLUMNS)]
            lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
        if index < len(groups) - 1:
            lines.append(r"\midrule")
    lines += [r"\bottomrule", r"\end{tabular}", ""]
    return "\n".join(lines)


def to_csv(rows: Sequence[Row]) -> str:
    """Every field of every row (raw numbers, not formatted)."""
    keys = list(dict.fromkeys(k for row in rows for k in row if not isinstance(row[k], (dict, list))))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=keys, extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row.get(k) for k in keys})
    return buffer.getvalue()


def write_tables(rows: Sequence[Row], directory: str | Path, stem: str = "results") -> list[Path]:
    """Write ``stem``.csv / .json / .md / .tex into ``directory`` (each atomically)."""
    directory = Path(directory)
    outputs = {
        f"{stem}.csv": to_csv(rows),
        f"{stem}.json": json.dumps(list(rows), indent=2, default=str),
        f"{stem}.md": to_markdown(rows),
        f"{stem}.tex": to_latex(rows),
    }
    return [write_text(directory / name, text) for name, text in outputs.items()]
