"""The example third-party plugin, pip-installed for real, is found through its entry point."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).parents[1] / "examples" / "effzoo-example-plugin"


def _pip(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", *args],
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def installed_example():
    result = _pip("install", "--no-deps", "--no-build-isolation", str(EXAMPLE))
    assert result.returncode == 0, result.stderr
    yield
    _pip("uninstall", "-y", "effzoo-example-plugin")


def _run(code: str) -> str:
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.slow
def test_installed_plugin_builds_through_effzoo_build(installed_example):
    out = _run(
        "import effzoo, torch\n"
        "m = effzoo.build('gqa_relu2', size='tiny', relu2_expansion=2)\n"
        "print(type(m.blocks[0].ffn).__name__, m.blocks[0].ffn.up_proj.out_features)\n"
        "print(m(torch.zeros(1, 4, dtype=torch.long)).logits.shape)\n"
        "r = {p.name: p for p in effzoo.plugin_reports()}['relu2']\n"
        "print(r.distribution, r.version, r.builtin, r.ok)\n"
    )
    assert "SquaredReLU 256" in out
    assert "torch.Size([1, 4, 512])" in out
    assert "effzoo-example-plugin 0.1.0 False True" in out


@pytest.mark.slow
def test_installed_plugin_shows_in_cli_and_can_be_blocked(installed_example):
    listing = subprocess.run([sys.executable, "-W", "ignore", "-m", "effzoo", "plugins"],
                             capture_output=True, text=True, timeout=120)
    assert "relu2" in listing.stdout and "effzoo-example-plugin 0.1.0 (third-party" in listing.stdout
    blocked = _run(
        "import os; os.environ['EFFZOO_BLOCK_PLUGINS'] = 'effzoo-example-plugin'\n"
        "import effzoo\n"
        "print('gqa_relu2' in effzoo.REGISTRY.names())\n"
    )
    assert blocked.strip() == "False"
