"""The README's Python tour runs as written (0.5B shrunk to tiny to keep CI fast)."""
from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).parents[1] / "README.md"


def test_readme_python_tour_runs(tmp_path, monkeypatch):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    monkeypatch.chdir(tmp_path)
    for block in blocks:
        exec(compile(block.replace('size="0.5B"', 'size="tiny"'), "README.md", "exec"), {})
    assert (tmp_path / "my-model" / "model.safetensors").exists()


def test_readme_starts_with_the_two_commands():
    lines = [line for line in README.read_text().splitlines() if line.startswith("pip install")]
    assert "effzoo bench --suite all --quick" in lines[0]
    assert "pytest" in lines[1]
    for line in lines[:2]:  # a CPU-only machine is told, on the command's own line, how to avoid CUDA torch
        assert "No GPU? Run first: pip install torch --index-url https://download.pytorch.org/whl/cpu" in line
    ci = (README.parent / ".ci" / "run").read_text()
    assert "python -m pip install -q -e \".[test]\"" in ci and '"$python" -m pytest -q' in ci
    assert "\nrun_pytest python || exit" in ci  # the whole suite, with the system python, as the README runs it
