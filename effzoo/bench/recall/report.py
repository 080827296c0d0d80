"""The MQAR report: accuracy table (variant x d_model rows, one column per setting) as Markdown,
LaTeX and CSV, every row as JSON, and accuracy against state-or-cache bytes per token (one panel per
setting, one line per variant across d_model), the plot of Zoology's Figure 2."""
from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from effzoo.atomic import write_text

from ..tables import MISSING, to_csv

Row = dict[str, Any]


def _settings(rows: Sequence[Row]) -> list[str]:
    ordered = sorted({(r["seq_len"], r["kv_pairs"]) for r in rows})
    return [f"({length}, {pairs})" for length, pairs in ordered]


def accuracy_grid(rows: Sequence[Row]) -> tuple[list[str], list[tuple[str, int, list[float | None]]]]:
    """Column names (settings) and one (variant, d_model, accuracies) line per variant and d_model."""
    settings = _settings(rows)
    found = {(r["variant"], r["d_model"], r["setting"]): r.get("accuracy") for r in rows if r.get("status") == "ok"}
    lines = []
    for variant in dict.fromkeys(r["variant"] for r in rows):
        for d_model in sorted({r["d_model"] for r in rows if r["variant"] == variant}):
            lines.append((variant, d_model, [found.get((variant, d_model, s)) for s in settings]))
    return settings, lines


def _cell(value: float | None) -> str:
    return MISSING if value is None else f"{value:.3f}"


def to_markdown(rows: Sequence[Row]) -> str:
    """Accuracy per variant and d_model (rows) and (sequence length, kv pairs) setting (columns)."""
    settings, lines = accuracy_grid(rows)
    memory = {(r["variant"], r["d_model"]): r.get("memory_bytes_per_token") for r in rows if r.get("status") == "ok"
              and (r["seq_len"], r["kv_pairs"]) == max((x["seq_len"], x["kv_pairs"]) for x in rows)}
    out = ["| variant | d_model | " + " | ".join(settings) + " | bytes/token at the longest |",
           "|---|---:|" + "---:|" * len(settings) + "---:|"]
    for variant, d_model, accs in lines:
        held = memory.get((variant, d_model))
        out.append(f"| {variant} | {d_model} | " + " | ".join(_cell(a) for a in accs)
                   + f" | {MISSING if held is None else f'{held:,.0f}'} |")
    failed = [r for r in rows if r.get("status") != "ok"]
    out += [""] + [f"- failed: {r['variant']} {r['setting']} d_model {r['d_model']}: {r.get('error')}" for r in failed]
    return "\n".join(out).rstrip() + "\n"


def to_latex(rows: Sequence[Row]) -> str:
    """A booktabs table with the same layout as :func:`to_markdown` (accuracy only)."""
    settings, lines = accuracy_grid(rows)
    body = [r"\begin{tabular}{lr" + "r" * len(settings) + "}", r"\toprule",
            "variant & $d_{model}$ & " + " & ".join(settings) + r" \\", r"\midrule"]
    for variant, d_model, accs in lines:
        cells = [_cell(a).replace(MISSING, "--") for a in accs]
        body.append(variant.replace("_", r"\_") + f" & {d_model} & " + " & ".join(cells) + r" \\")
    return "\n".join(body + [r"\bottomrule", r"\end{tabular}", ""])


def memory_plot(rows: Sequence[Row], path: Path) -> Path:
    """Accuracy against state-or-cache bytes per token (log x), one panel per setting."""
    from ..plots import _pyplot, _save

    plt = _pyplot()
    ok = [r for r in rows if r.get("status") == "ok"]
    settings = _settings(ok)
    fig, axes = plt.subplots(1, len(settings), figsize=(4.2 * len(settings), 3.8), squeeze=False, sharey=True)
    for ax, setting in zip(axes[0], settings):
        for variant in dict.fromkeys(r["variant"] for r in ok):
            points = sorted((r["memory_bytes_per_token"], r["accuracy"]) for r in ok
                            if r["variant"] == variant and r["setting"] == setting)
            if points:
                ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=variant)
        ax.set_xscale("log")
        ax.set_title(f"MQAR {setting}")
        ax.set_xlabel("state or cache bytes / token")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("accuracy")
    axes[0][-1].legend(fontsize="small", loc="lower right")
    return _save(fig, plt, path)


def write_recall_report(rows: Sequence[Row], out: str | Path) -> list[Path]:
    """``recall.{md,tex,csv,json}`` and ``recall-accuracy-vs-memory.png`` (when matplotlib is there)."""
    from .. import plots

    out = Path(out)
    paths = [write_text(out / "recall.md", to_markdown(rows)), write_text(out / "recall.tex", to_latex(rows)),
             write_text(out / "recall.csv", to_csv(rows)),
             write_text(out / "recall.json", json.dumps(list(rows), indent=2))]
    if not any(r.get("status") == "ok" for r in rows):
        return paths
    if plots.available():
        paths.append(memory_plot(rows, out / "recall-accuracy-vs-memory.png"))
    else:
        print("effzoo bench: matplotlib is not installed, so the recall plot was not drawn "
              "(pip install 'effzoo[plots]')", file=sys.stderr)
    return paths
