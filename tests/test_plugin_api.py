"""The public plugin API (effzoo.plugin) and the composition it declares: built-ins use only the API,
core names no built-in, configs hold only what the model uses, blocked plugins leave the rest working."""
from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import effzoo
from effzoo import plugin
from effzoo.errors import ConfigError

ROOT = Path(__file__).parents[1]
SHARED_BUILTIN_MODULES = {"effzoo_plugins.common", "effzoo_plugins.feature_detection"}  # shared by design


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


@pytest.mark.parametrize("path", sorted((ROOT / "effzoo_plugins").rglob("*.py")), ids=lambda p: p.name)
def test_builtin_plugins_import_only_the_public_api(path):
    for module in _imports(path):
        if module.startswith("effzoo_plugins"):
            own_package = path.parent.name != "effzoo_plugins" and module.startswith(f"effzoo_plugins.{path.parent.name}")
            assert module in SHARED_BUILTIN_MODULES or own_package, f"{path} imports {module}"
        elif module.startswith("effzoo"):
            assert module in ("effzoo", "effzoo.plugin"), f"{path} imports {module}"


def _string_constants(path: Path) -> set[str]:
    """String literals of a module, docstrings and ``__all__`` (Python identifiers) left out."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr) and isinstance(node.body[0].value, ast.Constant)}
    exported = {id(c) for node in ast.walk(tree) if isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets) for c in ast.walk(node)}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and id(node) not in docstrings | exported}


CORE_MODULES = ["registry.py", "plugins.py", "plugin.py", "build.py", "config.py", "interfaces.py", "analysis.py",
                "model/parts.py", "model/decoder.py", "cli/info.py", "cli/variants.py", "cli/plugins.py",
                "bench/suites.py", "backends/npu.py", "hf/importers.py", "hf/checkpoint.py"]


@pytest.mark.parametrize("module", CORE_MODULES)
def test_core_names_no_builtin_variant_component_or_router(module):
    registry = effzoo.REGISTRY.ensure_loaded()
    names = set(registry.names("variant")) | {n for kind in registry.components for n in registry.names(kind)}
    names -= {"none", "attention"}  # the "not used" value and a kind's own name
    leaked = _string_constants(ROOT / "effzoo" / module) & names
    assert not leaked, f"effzoo/{module} names {sorted(leaked)}"


def test_config_holds_only_the_components_the_model_uses():
    rwkv = effzoo.make_config("rwkv")
    assert (rwkv.block, rwkv.attention, rwkv.ffn, rwkv.position, rwkv.norm) == ("rwkv7", None, None, None, "layernorm")
    assert "router" not in rwkv.options
    with pytest.raises(ConfigError, match="does not use attention='mla'"):
        effzoo.make_config("rwkv", attention="mla")
    moe = effzoo.make_config("moe")
    assert moe.options["router"] == "topk" and moe.provenance["router:topk"].startswith("effzoo ")
    assert "router" not in effzoo.make_config("gqa").options


def test_capabilities_and_hooks_are_declared_members():
    for cls in (plugin.Attention, plugin.MixerBlock):
        assert {"state_bytes", "supports_static_decode", "init_weights", "init_buffers", "install_kernels"} <= set(dir(cls))
    assert {"inactive_params", "supports_static_decode", "residual_projections"} <= set(dir(plugin.FeedForward))
    assert {"rotate_queries", "rotate_keys", "prepare"} <= set(dir(plugin.PositionalEncoding))


def test_residual_init_follows_the_declared_projections():
    class Wide(plugin.FeedForward):
        residual_projections = ("w_out",)

        def __init__(self, cfg, layer=0):
            super().__init__()
            self.w_in, self.w_out = nn.Linear(cfg.d_model, 512), nn.Linear(512, cfg.d_model)

        def forward(self, x, ctx=None):
            return self.w_out(torch.relu(self.w_in(x)))

    registry = effzoo.REGISTRY.ensure_loaded()
    registrar = plugin.Registrar(registry, "test_residual")
    registrar.add_ffn("wide_test", Wide, description="test")
    registrar.commit()
    try:
        torch.manual_seed(0)
        model = effzoo.build("gqa", ffn="wide_test", n_layers=8)
        ffn = model.blocks[0].ffn
        assert ffn.w_out.weight.std() < 0.5 * ffn.w_in.weight.std()  # 0.02 / sqrt(16) against 0.02
    finally:
        registry.remove_plugin("test_residual")


def test_rope_tables_are_prepared_once_per_forward_and_match(monkeypatch):
    model = effzoo.build("gqa", dtype="float32")
    calls = []
    original = type(model.position).prepare
    monkeypatch.setattr(type(model.position), "prepare", lambda self, p: calls.append(1) or original(self, p))
    model(torch.zeros(1, 9, dtype=torch.long))
    assert len(calls) == 1  # four layers, queries and keys: one table
    x, positions = torch.randn(2, 4, 9, model.config.head_dim), torch.arange(3, 12)
    tables = model.position.prepare(positions)
    assert torch.equal(model.position.rotate(x, positions, tables), model.position.rotate(x, positions))


def test_position_kind_is_declared_at_registration():
    assert [plugin.position_kind(n) for n in ("rope", "alibi", "absolute", "none")] == ["rotary", "bias", "embedding", "none"]
    assert plugin.position_kind(None) == "none"
    registrar = plugin.Registrar(effzoo.REGISTRY.ensure_loaded(), "t")
    with pytest.raises(effzoo.PluginError, match="position_kind"):
        registrar.add_component("position", "p", lambda cfg: None, description="no kind")


def test_baseline_variant_and_plugin_declared_suites():
    from effzoo.bench.suites import suites

    assert effzoo.REGISTRY.baseline() == "gqa"
    table = suites()
    assert list(table) == ["attention", "position", "moe", "attention-free"]
    assert [m for m, _, _ in table["attention"].methods] == ["MQA", "GQA", "MLA", "NSA"]
    assert [(e.method, e.size) for e in table["moe"].entries(["tiny"])] == [("Dense", "tiny"), ("MoE", "tinyx8")]


def _run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "ignore", "-c", code], capture_output=True, text=True,
                          timeout=300, env={**os.environ, **env}, cwd=ROOT)


BLOCK_ALL_BUT_RECURRENT = "transformer,feedforward,attention_gqa,attention_mla,attention_nsa,positions,moe,pythia"


@pytest.mark.slow
def test_recurrent_variants_build_and_train_with_every_other_plugin_blocked():
    code = (
        "import json, torch, effzoo\n"
        "out = {}\n"
        "for v in ('mamba', 'rwkv'):\n"
        "    torch.manual_seed(0)\n"
        "    m = effzoo.build(v, 'tiny', n_layers=2, dtype='float32')\n"
        "    opt = torch.optim.AdamW(m.parameters(), 3e-3)\n"
        "    ids = torch.randint(0, 512, (2, 17))\n"
        "    losses = []\n"
        "    for _ in range(4):\n"
        "        loss = m(ids[:, :-1], targets=ids[:, 1:]).loss; loss.backward(); opt.step(); opt.zero_grad()\n"
        "        losses.append(loss.item())\n"
        "    out[v] = losses\n"
        "try:\n"
        "    effzoo.build('gqa')\n"
        "except Exception as exc:\n"
        "    out['gqa'] = f'{type(exc).__name__}: {exc}'\n"
        "out['list'] = sorted(effzoo.REGISTRY.names())\n"
        "print(json.dumps(out))\n"
    )
    result = _run(code, {"EFFZOO_BLOCK_PLUGINS": BLOCK_ALL_BUT_RECURRENT})
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout.splitlines()[-1])
    for variant in ("mamba", "rwkv"):
        assert out[variant][-1] < out[variant][0]
    assert "UnknownNameError" in out["gqa"] and "transformer (effzoo)" in out["gqa"]
    assert out["list"] == ["mamba", "mamba1", "rwkv"]


def test_a_saved_model_names_the_distribution_to_install(tmp_path):
    model = effzoo.build("gqa")
    model.save_pretrained(str(tmp_path / "m"))
    document = json.loads((tmp_path / "m" / "config.json").read_text())
    saved = document["effzoo"]
    assert saved["provenance"]["attention:gqa"] == f"effzoo {effzoo.__version__}"
    saved["attention"] = "fancy"
    saved["provenance"]["attention:fancy"] = "effzoo-fancy-attention 2.0"
    (tmp_path / "m" / "config.json").write_text(json.dumps(document))
    with pytest.raises(ConfigError, match=r"effzoo-fancy-attention 2.0: install it \(pip install effzoo-fancy-attention\)"):
        effzoo.from_pretrained(str(tmp_path / "m"))
