"""Core names no built-in plugin: no string constant in ``effzoo/`` (docstrings and ``__all__`` aside) is
the name or alias of a variant or component that effzoo's own plugins register."""
from __future__ import annotations

import ast
from pathlib import Path

import effzoo
from effzoo.registry import COMPONENT_KINDS, NOT_USED, POSITION_KINDS

CORE = Path(effzoo.__file__).parent
CORE_WORDS = {*COMPONENT_KINDS, *POSITION_KINDS, NOT_USED}  # core vocabulary that some alias repeats


def builtin_names() -> set[str]:
    registry = effzoo.REGISTRY.ensure_loaded()
    specs = [*registry.variants.values(), *(spec for table in registry.components.values() for spec in table.values())]
    return {name for spec in specs if spec.distribution == "effzoo" for name in (spec.name, *spec.aliases)} - CORE_WORDS


def _exempt(tree: ast.AST) -> set[int]:
    """ids of the docstring constants and of everything inside ``__all__ = [...]``."""
    exempt: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                exempt.add(id(first.value))
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "__all__" for t in node.targets):
            exempt |= {id(child) for child in ast.walk(node.value)}
    return exempt


def builtin_names_in(path: Path, names: set[str]) -> list[str]:
    """``path:line: 'name'`` for every non-docstring string constant of ``path`` that is in ``names``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    exempt = _exempt(tree)
    found = [node for node in ast.walk(tree) if isinstance(node, ast.Constant) and isinstance(node.value, str)
             and id(node) not in exempt and node.value.lower() in names]
    return [f"{path}:{node.lineno}: {node.value!r}" for node in sorted(found, key=lambda n: n.lineno)]


def test_the_scan_finds_a_builtin_name_outside_docstrings(tmp_path: Path) -> None:
    names = builtin_names()
    assert {"gqa", "mamba", "rwkv", "topk", "swiglu", "rmsnorm"} <= names
    sample = tmp_path / "sample.py"
    sample.write_text('"""Build "gqa" here."""\n__all__ = ["rmsnorm"]\n\n\ndef f():\n    """"mamba"."""\n'
                      '    return "Mamba"\n\n\nDEFAULT = "gqa"\n', encoding="utf-8")
    assert builtin_names_in(sample, names) == [f"{sample}:7: 'Mamba'", f"{sample}:10: 'gqa'"]


def test_core_has_no_builtin_variant_component_or_router_name() -> None:
    names = builtin_names()
    hits = [hit for path in sorted(CORE.rglob("*.py")) for hit in builtin_names_in(path, names)]
    assert not hits, "core names built-in plugins (declare it in the plugin instead):\n" + "\n".join(hits)


def test_defaults_that_were_names_come_from_the_plugins() -> None:
    """The trainer's default variant is the registry's baseline; the quick recall grid is the variants
    registered with ``Capabilities(quick_recall=True)`` (built-ins: gqa, mamba, rwkv, in that order)."""
    from effzoo.bench.recall import RecallSettings
    from effzoo.train.config import TrainConfig

    assert TrainConfig().variant == effzoo.REGISTRY.baseline() == "gqa"
    assert TrainConfig(variant="mamba").variant == "mamba"
    assert RecallSettings.quick().variants == ["gqa", "mamba", "rwkv"]
    assert RecallSettings.quick(variants=["mqa"]).variants == ["mqa"]
