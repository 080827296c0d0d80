"""``effzoo report RUNS --paper``: the EfficientLLM paper's reported values beside the measured ones.

Per group, one table with a "paper" and a "measured" column per metric; per group and metric, the rank
agreement of the methods present in both (Kendall's tau-b, and whether the best and the worst method
agree); and a sentence on how the measured setting differs from the paper's. The paper values live in
``paper_efficientllm.json`` with their source. Measured rows are matched to paper rows by group and
method; when a method appears several times (the MoE group's sizes), the k-th measured row by parameter
count is matched to the k-th paper row in the file's order (smallest first).
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any

from effzoo.atomic import write_json, write_text

from .tables import MISSING, params_label

Row = dict[str, Any]
PAPER_FILE = "paper_efficientllm.json"


@lru_cache(maxsize=1)
def paper_data() -> dict[str, Any]:
    """The packaged paper values, their source and setting."""
    return json.loads(resources.files("effzoo.bench").joinpath(PAPER_FILE).read_text(encoding="utf-8"))


def kendall_tau(xs: Sequence[float], ys: Sequence[float]) -> float | None:
    """Kendall's tau-b of two equally long sequences (None with fewer than 2 items or no variation)."""
    if len(xs) != len(ys):
        raise ValueError("kendall_tau needs two sequences of the same length")
    concordant = discordant = ties_x = ties_y = 0
    for i in range(len(xs)):
        for j in range(i + 1, len(xs)):
            dx, dy = xs[i] - xs[j], ys[i] - ys[j]
            if dx == 0 and dy == 0:
                continue
            if dx == 0:
                ties_x += 1
            elif dy == 0:
                ties_y += 1
            elif (dx > 0) == (dy > 0):
                concordant += 1
            else:
                discordant += 1
    denominator = math.sqrt((concordant + discordant + ties_x) * (concordant + discordant + ties_y))
    return None if denominator == 0 else (concordant - discordant) / denominator


def _present(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def match_rows(group: str, measured: Sequence[Row]) -> list[tuple[Row | None, Row | None]]:
    """(paper row, measured row) pairs of one group, paper order first, then unmatched measured rows."""
    paper = paper_data()["groups"].get(group, [])
    ours: dict[str, list[Row]] = {}
    for row in sorted((r for r in measured if r.get("status", "ok") == "ok"), key=lambda r: r.get("params") or 0):
        ours.setdefault(row["method"], []).append(row)
    pairs: list[tuple[Row | None, Row | None]] = []
    for entry in paper:
        mine = ours.get(entry["method"], [])
        pairs.append((entry, mine.pop(0) if mine else None))
    pairs += [(None, row) for rows in ours.values() for row in rows]
    return pairs


def agreement(pairs: Sequence[tuple[Row | None, Row | None]], metric: str, lower_is_better: bool) -> dict[str, Any]:
    """Kendall's tau over the methods with both values, and whether the best and the worst agree."""
    both = [(p, m) for p, m in pairs if p and m and _present(p.get(metric)) and _present(m.get(metric))]
    paper = [float(p[metric]) for p, _ in both]
    ours = [float(m[metric]) for _, m in both]
    result: dict[str, Any] = {"metric": metric, "methods": len(both), "tau": None, "best_agrees": None,
                              "worst_agrees": None}
    if len(both) < 2:
        return result
    best, worst = (min, max) if lower_is_better else (max, min)
    pick = lambda values, f: values.index(f(values))  # noqa: E731
    result.update(tau=kendall_tau(paper, ours),
                  best_agrees=pick(paper, best) == pick(ours, best),
                  worst_agrees=pick(paper, worst) == pick(ours, worst),
                  best=(both[pick(paper, best)][0]["method"], both[pick(ours, best)][1]["method"]),
                  worst=(both[pick(paper, worst)][0]["method"], both[pick(ours, worst)][1]["method"]))
    return result


def _span(values: Sequence[float], fmt: Any) -> str:
    low, high = fmt(min(values)), fmt(max(values))
    return low if low == high else f"{low}–{high}"


def setting_note(rows: Sequence[Row]) -> str:
    """Where the measured setting differs from the paper's (size, context, tokens, hardware)."""
    setting = paper_data()["setting"]
    params = [r["params"] for r in rows if _present(r.get("params"))]
    contexts = sorted({int(r["context_length"]) for r in rows if _present(r.get("context_length"))})
    tokens = [r["tokens"] for r in rows if _present(r.get("tokens"))]
    devices = sorted({str(r["device"]) for r in rows if r.get("device")})
    size = f"{_span(params, params_label)} parameters" if params else "unknown size"
    trained = f"{_span(tokens, lambda n: f'{n:,.0f}')} training tokens" if tokens else "an unknown number of tokens"
    context = "context " + "/".join(map(str, contexts)) if contexts else "unknown context"
    hardware = ", ".join(devices) if devices else "unknown hardware"
    return (f"Setting: measured runs have {size}, {context}, {trained}, on {hardware}; the paper trains "
            f"{setting['params']} models with context {setting['context_length']} on {setting['data']} with "
            f"{setting['hardware']}. Read the rank agreement as a comparison of orderings, not a reproduction: "
            "at this size, data and hardware the measured ranks need not follow the paper's.")


def _fmt(value: Any) -> str:
    if not _present(value):
        return MISSING
    return f"{value:.4f}" if abs(value) < 1 else f"{value:.2f}"


def compare(rows: Sequence[Row]) -> list[dict[str, Any]]:
    """Per group: the matched pairs and the agreement of every metric."""
    data = paper_data()
    out = []
    for group in dict.fromkeys(r["group"] for r in rows):
        if group not in data["groups"]:
            continue
        pairs = match_rows(group, [r for r in rows if r["group"] == group])
        metrics = [agreement(pairs, key, spec["lower_is_better"]) for key, spec in data["metrics"].items()]
        out.append({"group": group, "pairs": pairs, "agreement": metrics})
    return out


def to_markdown(rows: Sequence[Row]) -> str:
    """One table per group (paper and measured column per metric), its agreement lines, and the note."""
    data = paper_data()
    metrics = data["metrics"]
    lines = [f"# Measured vs. paper: {data['paper']}", "", setting_note(rows), "", f"Paper values: {data['source']}", ""]
    for block in compare(rows):
        lines += [f"## {block['group']}", ""]
        header = ["Method", "paper size", "measured size"]
        for spec in metrics.values():
            header += [f"{spec['label']} paper", f"{spec['label']} measured"]
        lines += ["| " + " | ".join(header) + " |", "|---|---|---|" + "---:|" * (2 * len(metrics))]
        for paper, mine in block["pairs"]:
            cells = [(paper or mine)["method"], paper["size"] if paper else MISSING,
                     params_label(mine.get("params")) if mine else MISSING]
            for key in metrics:
                cells += [_fmt(paper.get(key)) if paper else MISSING, _fmt(mine.get(key)) if mine else MISSING]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
        for a in block["agreement"]:
            label = metrics[a["metric"]]["label"]
            if a["tau"] is None:
                lines.append(f"- {label}: {a['methods']} method(s) with both values, no rank agreement")
                continue
            lines.append(f"- {label}: Kendall τ = {a['tau']:+.2f} over {a['methods']} methods; best "
                         f"{'agrees' if a['best_agrees'] else 'differs'} (paper {a['best'][0]}, measured "
                         f"{a['best'][1]}), worst {'agrees' if a['worst_agrees'] else 'differs'} "
                         f"(paper {a['worst'][0]}, measured {a['worst'][1]})")
        lines.append("")
    return "\n".join(lines)


def write_paper_report(rows: Sequence[Row], out: str | Path) -> list[Path]:
    """``paper.md`` and ``paper.json`` (the pairs and agreement per group) in ``out``."""
    out = Path(out)
    blocks = [{"group": b["group"], "agreement": b["agreement"],
               "rows": [{"method": (p or m)["method"], "paper": p,
                         "measured": None if m is None else {k: m.get(k) for k in ("size", "params", *paper_data()["metrics"])}}
                        for p, m in b["pairs"]]} for b in compare(rows)]
    return [write_text(out / "paper.md", to_markdown(rows)),
            write_json(out / "paper.json", {"source": paper_data()["source"], "setting_note": setting_note(rows),
                                            "groups": blocks})]
