"""The device script (benchmarks/gpu_check.py) rehearsed on the CPU, so it cannot rot between GPU runs."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "benchmarks" / "gpu_check.py"
PHASES = ("correctness", "race", "decode", "kernels", "variants")
MAX_FILES = 8  # the device tool returns at most 8 files


def _run(out: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPT), "--out", str(out), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _sections(summary: str) -> dict[str, str]:
    parts = summary.split("\n## ")[1:]
    return {part.split("\n", 1)[0].split(". ", 1)[1]: part for part in parts}


@pytest.mark.slow
def test_dry_run_fills_every_phase_table(tmp_path):
    done = _run(tmp_path, "--dry-run", "--budget-s", "1500", timeout=1800)  # generous: CI machines vary
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    files = sorted(p.name for p in tmp_path.iterdir())
    assert len(files) <= MAX_FILES, files
    assert {"summary.md", "results.json", "gpu_check.log"} <= set(files)
    summary = (tmp_path / "summary.md").read_text()
    assert "dry run" in summary and "commit:" in summary and "torch " in summary
    sections = _sections(summary)
    assert list(sections) == list(PHASES)
    results = json.loads((tmp_path / "results.json").read_text())["phases"]
    for name in PHASES:
        assert "status: done" in sections[name], sections[name][:500]
        assert "\n| " in sections[name] and "|---|" in sections[name], f"{name} has no table"
        doc = json.loads((tmp_path / f"{name}.json").read_text())
        assert doc["rows"], f"{name} measured nothing"
        broken = [row for row in doc["rows"] if any(key.endswith("error") for key in row)]
        assert not broken, f"{name}: {broken}"
        assert results[name]["status"] == "done"
    assert all(row["outcome"] in ("SKIPPED", "PASSED") for row in results["correctness"]["rows"])
    decode = {row["case"]: row for row in results["decode"]["rows"]}
    assert decode["effzoo-fast"]["same_tokens_as_eager"] is True
    race = {row["case"]: row for row in results["race"]["rows"]}
    assert set(race) == {"transformers-eager", "effzoo-eager", "transformers-compiled", "effzoo-compiled"}
    assert race["effzoo-eager"]["vs_transformers_eager"] > 0


def test_a_spent_budget_marks_every_phase_not_run(tmp_path):
    done = _run(tmp_path, "--dry-run", "--budget-s", "0.5", timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    sections = _sections((tmp_path / "summary.md").read_text())
    assert list(sections) == list(PHASES)
    assert all("status: not run: budget" in text for text in sections.values())


def test_unknown_phase_is_a_usage_error(tmp_path):
    done = _run(tmp_path, "--phases", "race,speed", timeout=60)
    assert done.returncode == 2
    assert "unknown phase(s) speed" in done.stderr.splitlines()[-1]
