"""`effzoo report --paper`: paper values beside measured ones, rank agreement computed from the data."""
from __future__ import annotations

import itertools
import json

import pytest

from effzoo.bench import paper


def _brute_tau(xs, ys):
    """Kendall's tau-a by counting pairs (no ties in the data used with it)."""
    pairs = list(itertools.combinations(range(len(xs)), 2))
    signs = [(xs[i] - xs[j]) * (ys[i] - ys[j]) for i, j in pairs]
    return (sum(s > 0 for s in signs) - sum(s < 0 for s in signs)) / len(pairs)


def test_kendall_tau_on_constructed_orders():
    assert paper.kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == 1.0
    assert paper.kendall_tau([1, 2, 3, 4], [4, 3, 2, 1]) == -1.0
    xs, ys = [3.0, 1.0, 4.0, 1.5, 5.0], [2.0, 7.0, 1.0, 8.0, 2.5]
    assert paper.kendall_tau(xs, ys) == pytest.approx(_brute_tau(xs, ys))
    assert paper.kendall_tau([1, 1, 1], [1, 2, 3]) is None  # no variation in one of them
    assert paper.kendall_tau([1, 2, 2], [1, 2, 3]) == pytest.approx(2 / (3 * 2) ** 0.5)  # tau-b with a tie


def _rows(group, ppl_by_method, **extra):
    return [{"group": group, "method": method, "size": "tiny", "params": 1_000_000 + i, "ppl": value,
             "amu_gb": None, "status": "ok", **extra} for i, (method, value) in enumerate(ppl_by_method.items())]


def test_agreement_follows_the_measured_order():
    published = {e["method"]: e["ppl"] for e in paper.paper_data()["groups"]["attention"]}
    same = _rows("attention", {m: v * 2 for m, v in published.items()})  # same order, other scale
    block = paper.compare(same)[0]
    ppl = next(a for a in block["agreement"] if a["metric"] == "ppl")
    assert ppl["tau"] == pytest.approx(1.0) and ppl["best_agrees"] and ppl["worst_agrees"]
    reversed_rows = _rows("attention", {m: -v for m, v in published.items()})
    ppl = next(a for a in paper.compare(reversed_rows)[0]["agreement"] if a["metric"] == "ppl")
    assert ppl["tau"] == pytest.approx(-1.0) and not ppl["best_agrees"] and not ppl["worst_agrees"]
    methods = list(published)
    swapped = dict(published)
    swapped[methods[0]], swapped[methods[1]] = published[methods[1]], published[methods[0]]
    ppl = next(a for a in paper.compare(_rows("attention", swapped))[0]["agreement"] if a["metric"] == "ppl")
    assert ppl["tau"] == pytest.approx(_brute_tau(list(published.values()), list(swapped.values())))
    amu = next(a for a in block["agreement"] if a["metric"] == "amu_gb")
    assert amu["tau"] is None and amu["methods"] == 0  # nothing measured: no agreement claimed


def test_moe_methods_match_by_size_order():
    rows = [{"group": "moe", "method": "Dense", "size": "tiny", "params": 10, "ppl": 5.0, "status": "ok"},
            {"group": "moe", "method": "MoE", "size": "tinyx8", "params": 40, "ppl": 4.0, "status": "ok"}]
    pairs = paper.match_rows("moe", rows)
    matched = {(p["method"], p["size"]): m for p, m in pairs if p}
    assert matched[("Dense", "1.5B")]["params"] == 10 and matched[("Dense", "3B")] is None
    assert matched[("MoE", "0.5Bx8")]["params"] == 40


def test_report_files_and_setting_note(tmp_path):
    rows = _rows("attention", {"MQA": 9.0, "GQA": 8.0, "MLA": 7.0, "NSA": 7.5, "Extra": 6.0},
                 tokens=61_440, device="cpu", context_length=128)
    md, js = paper.write_paper_report(rows, tmp_path)
    text = md.read_text()
    assert "| MQA | 1.5B | 1.0M | 8.23 | 9.00 |" in text
    assert "Kendall τ" in text and "not a reproduction" in text
    assert "measured runs have 1.0M parameters" in text and "context 128" in text and "61,440" in text and "cpu" in text
    assert "48 NVIDIA GH200" in text and "8192" in text
    data = json.loads(js.read_text())
    assert [r["method"] for r in data["groups"][0]["rows"]][-1] == "Extra"  # unmatched rows are kept
    assert data["source"].startswith("Pretraining results")


def test_cli_report_paper(tmp_path, monkeypatch):
    import effzoo.cli.report as report_cli
    from effzoo.cli import main

    monkeypatch.setattr(report_cli, "write_report", lambda rows, out: [])  # the usual tables are tested elsewhere

    bench = tmp_path / "bench"
    bench.mkdir()
    rows = _rows("attention-free", {"Qwen2.5": 8.0, "Mamba": 9.0, "Pythia": 11.0, "RWKV": 10.0})
    (bench / "results.json").write_text(json.dumps(rows))
    assert main(["report", str(bench), "--paper", "--out", str(tmp_path / "report")]) == 0
    text = (tmp_path / "report" / "paper.md").read_text()
    assert "## attention-free" in text and "Kendall τ = +1.00 over 4 methods" in text
