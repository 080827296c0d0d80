"""The two third-party example plugins (examples/effzoo-xpos, examples/effzoo-diff-attention), each one
module written against effzoo.plugin only, pip-installed for real (into a private folder, not the
shared site-packages): build, train a few steps, decode with the cache (= the full forward),
save_pretrained / from_pretrained, and a clear error when the plugin is missing."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).parents[1] / "examples"
CASES = {
    "effzoo-xpos": [("gqa", {"position": "xpos"}), ("mla", {"position": "xpos"})],
    "effzoo-diff-attention": [("diff", {}), ("gqa", {"attention": "diff", "n_kv_heads": 4})],
}

CHECK = """
import json, sys, tempfile, torch, effzoo
variant, overrides = sys.argv[1], json.loads(sys.argv[2])
torch.manual_seed(0)
model = effzoo.build(variant, 'tiny', dtype='float32', n_layers=2, **overrides)
ids = torch.randint(0, model.config.vocab_size, (2, 20))
opt = torch.optim.AdamW(model.parameters(), 3e-3)
losses = []
for _ in range(5):
    loss = model(ids[:, :-1], targets=ids[:, 1:]).loss
    loss.backward(); opt.step(); opt.zero_grad(); losses.append(loss.item())
model.eval()
with torch.no_grad():
    full = model(ids).logits
    cache = model.new_cache(2, 24)
    steps = [model(ids[:, :7], cache=cache).logits] + [model(ids[:, i:i + 1], cache=cache).logits for i in range(7, 20)]
    decode_error = (torch.cat(steps, 1) - full).abs().max().item()
    folder = tempfile.mkdtemp()
    model.save_pretrained(folder)
    reloaded = effzoo.from_pretrained(folder)
    reload_error = (reloaded(ids).logits - full).abs().max().item()
print(json.dumps({"losses": losses, "decode": decode_error, "reload": reload_error, "folder": folder,
                  "provenance": model.config.provenance}))
"""


def _pip_install(project: Path, target: Path) -> None:
    result = subprocess.run([sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "install", "--no-deps",
                             "--no-build-isolation", "--target", str(target), str(project)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr


def _python(args: list[str], site: Path | None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(site) if site else ""}
    return subprocess.run([sys.executable, "-W", "ignore", *args], capture_output=True, text=True, timeout=300, env=env)


@pytest.mark.parametrize("project", sorted(CASES))
def test_example_is_one_module_importing_only_effzoo(project):
    modules = sorted(p.name for p in (EXAMPLES / project).glob("*.py"))
    assert len(modules) == 1 and (EXAMPLES / project / "pyproject.toml").is_file()
    tree = ast.parse((EXAMPLES / project / modules[0]).read_text())
    imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    imported |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    assert {m for m in imported if m.startswith("effzoo")} == {"effzoo"}  # `from effzoo import plugin`


@pytest.mark.slow
@pytest.mark.parametrize("project", sorted(CASES))
def test_installed_example_builds_trains_decodes_and_round_trips(project, tmp_path):
    site = tmp_path / "site"
    _pip_install(EXAMPLES / project, site)
    distribution = f"{project} 0.1.0"
    for variant, overrides in CASES[project]:
        result = _python(["-c", CHECK, variant, json.dumps(overrides)], site)
        assert result.returncode == 0, result.stderr
        out = json.loads(result.stdout.splitlines()[-1])
        assert out["losses"][-1] < out["losses"][0]
        assert out["decode"] < 1e-4 and out["reload"] == 0.0
        assert distribution in out["provenance"].values()
    missing = _python(["-c", f"import effzoo; effzoo.from_pretrained({out['folder']!r})"], None)
    assert missing.returncode != 0 and f"pip install {project}" in missing.stderr
