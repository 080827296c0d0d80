"""EfficientLLM tables from benchmark rows: CSV (every field), JSON, Markdown and LaTeX (paper layout).

Markdown and LaTeX tables carry a caption built from the rows (device, torch, steps, tokens, sequence
length, sizes, date, MFU's peak) and notes that give the reason of each cell left empty."""
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
# AMU (GB) | AL (s/iter) | TT | AEC (W) | GPU Hours), then the measurements effzoo adds. "GPU Hours" is
# "Device Hours (KIND)": a CPU run's hours are CPU hours.
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
    ("Device Hours", "device_hours", _num(".4f")),
]
EXTRA_COLUMNS: list[Column] = [
    ("MFU", "mfu", _num(".3f")),
    ("Train tok/s", "tokens_per_s", _num(".0f")),
    ("Decode tok/s (IT)", "decode_tokens_per_s", _num(".1f")),
    ("KV B/token", "kv_cache_bytes_per_token", _num(",d")),
    ("Peak GB", "peak_memory_gb", _num(".2f")),
]


DEVICE_KINDS = {"cpu": "CPU", "cuda": "GPU", "npu": "NPU"}
TINY_PARAMS = 1e8  # below this, a table shows the pipeline, not the architectures' ranking


def _cells(row: Row, columns: Sequence[Column]) -> list[str]:
    return [fmt(row.get(key)) for _, key, fmt in columns]


def _ok(rows: Sequence[Row]) -> list[Row]:
    return [r for r in rows if r.get("status", "ok") == "ok"]


def _distinct(rows: Sequence[Row], key: str) -> list[Any]:
    return list(dict.fromkeys(r.get(key) for r in rows if r.get(key) is not None))


def _joined(values: Sequence[Any], fmt: str = "") -> str:
    return " / ".join(format(v, fmt) for v in values)


def headers(rows: Sequence[Row], columns: Sequence[Column]) -> list[str]:
    """Column headers; device hours name the device kind of the rows (``Device Hours (CPU)``)."""
    kinds = [DEVICE_KINDS.get(k, str(k).upper()) for k in _distinct(_ok(rows), "device_kind")]
    return [f"{h} ({'/'.join(kinds)})" if key == "device_hours" and kinds else h for h, key, _ in columns]


def caption(rows: Sequence[Row]) -> str:
    """What the numbers were measured on: device, torch, dtype, steps, tokens, length, sizes, date, peak
    (each part the rows record; several values are joined with ' / ')."""
    ok = _ok(rows)
    if not ok:
        return "No entry finished; the errors are in the notes."

    def field(key: str, text: str, fmt: str = "") -> str | None:
        values = _distinct(ok, key)
        return text.format(_joined(values, fmt)) if values else None

    params = [r["params"] for r in ok if r.get("params")]
    sizes = field("size", "sizes {}")
    if sizes and params:
        sizes += f" ({params_label(min(params))}–{params_label(max(params))} parameters)"
    shape = [field("steps", "{} steps"), field("batch_size", "batch {}"), field("context_length", "{} tokens")]
    training = " × ".join(p for p in shape if p)
    tokens = field("tokens", "{} training tokens per model", ",")
    if tokens:
        training = f"{training} = {tokens}" if training else tokens
    setup = ", ".join(p for p in (field("device", "{}"), field("torch_version", "torch {}"), field("dtype", "{}")) if p)
    parts = [setup, training, sizes, field("date", "measured {}")]
    peaks = [(r["peak_tflops"], r.get("peak_source")) for r in ok if r.get("peak_tflops")]
    if peaks:
        sources = _joined(list(dict.fromkeys(source for _, source in peaks if source)))
        parts.append(f"MFU against a peak of {_joined(list(dict.fromkeys(p for p, _ in peaks)), '.3g')} "
                     f"TFLOP/s per device" + (f" ({sources})" if sources else ""))
    text = "; ".join(p for p in parts if p) + "."
    if params and max(params) < TINY_PARAMS:
        text += " Tiny models: this shows the pipeline, not the architectures' ranking."
    return text


def _missing_reason(row: Row, key: str) -> str | None:
    if key == "aec_w":
        if row.get("device_kind") == "cpu":
            return "no energy counter on CPU (RAPL is not readable on this machine)"
        return f"no power or energy counter on {row.get('device') or 'this device'} (energy source: " \
               f"{row.get('energy_source') or 'none'})"
    if key == "decode_tokens_per_s":
        return "no checkpoint to decode from"
    if key == "mfu":
        return "no peak FLOP/s known for this device (pass --peak-tflops)"
    return None


def notes(rows: Sequence[Row], columns: Sequence[Column]) -> list[str]:
    """One line per column with empty cells, giving the reason (``AEC (W) –: no energy counter on CPU``)."""
    out = []
    for header, key, fmt in columns:
        reasons = [_missing_reason(r, key) for r in _ok(rows) if fmt(r.get(key)) == MISSING]
        known = list(dict.fromkeys(r for r in reasons if r))
        if known:
            out.append(f"{header} {MISSING}: {'; '.join(known)}.")
    failed = [f"{r.get('method')}: {r.get('error')}" for r in rows if r.get("status") == "failed"]
    return out + [f"Failed — {line}" for line in failed]


def to_markdown(rows: Sequence[Row], extras: bool = True) -> str:
    """One Markdown table per group, paper columns first, each with its caption and notes."""
    columns = PAPER_COLUMNS + (EXTRA_COLUMNS if extras else [])
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        members = [r for r in rows if r["group"] == group]
        out.append(f"### {group}\n")
        out.append(f"*{caption(members)}*\n")
        out.append("| " + " | ".join(headers(members, columns)) + " |")
        out.append("|" + "---|" * len(columns))
        for row in members:
            cells = _cells(row, columns)
            if row.get("status") == "failed":
                cells[0] += " (failed)"
            out.append("| " + " | ".join(cells) + " |")
        out.append("")
        out += [f"- {line}" for line in notes(members, columns)]
        out.append("")
    return "\n".join(out)


def _latex_escape(text: str) -> str:
    for char, repl in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"),
                       ("×", r"$\times$"), ("–", "--"), ("—", "---")):
        text = text.replace(char, repl)
    return text


def to_latex(rows: Sequence[Row]) -> str:
    """A booktabs table in the paper's column layout, one block per group, with its caption."""
    names = headers(rows, PAPER_COLUMNS)
    lines = [r"\begin{table}", r"\centering", r"\begin{tabular}{l" + "r" * (len(names) - 1) + "}", r"\toprule",
             " & ".join(_latex_escape(h) for h in names) + r" \\", r"\midrule"]
    groups = list(dict.fromkeys(r["group"] for r in rows))
    for index, group in enumerate(groups):
        lines.append(rf"\multicolumn{{{len(names)}}}{{l}}{{\textit{{{_latex_escape(group)}}}}} \\")
        for row in (r for r in rows if r["group"] == group):
            cells = [c.replace(MISSING, "--") for c in _cells(row, PAPER_COLUMNS)]
            lines.append(" & ".join(_latex_escape(c) for c in cells) + r" \\")
        if index < len(groups) - 1:
            lines.append(r"\midrule")
    text = " ".join([caption(rows), *notes(rows, PAPER_COLUMNS)])
    lines += [r"\bottomrule", r"\end{tabular}", rf"\caption{{{_latex_escape(text)}}}", r"\end{table}", ""]
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
