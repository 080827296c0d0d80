"""Registry and plugin loading: isolation of broken plugins, duplicates, env switches, lookups."""
from __future__ import annotations

import sys
import textwrap
import warnings

import pytest

import effzoo
from effzoo import plugins
from effzoo.errors import PluginError, UnknownNameError
from effzoo.registry import Registry


def _write_plugin(tmp_path, name: str, body: str) -> str:
    (tmp_path / f"{name}.py").write_text(textwrap.dedent(body))
    return name


@pytest.fixture
def fake_plugins(tmp_path, monkeypatch):
    """Make ``plugins._candidates`` return the built-ins plus modules written by the test."""
    monkeypatch.syspath_prepend(str(tmp_path))
    builtins = plugins._candidates()
    extra: list[plugins._Candidate] = []

    def add(name: str, body: str, distribution: str = "effzoo-fake") -> None:
        _write_plugin(tmp_path, name, body)
        sys.modules.pop(name, None)
        extra.append(plugins._Candidate(name, name, distribution, "1.2.3"))

    monkeypatch.setattr(plugins, "_candidates", lambda: builtins + extra)
    return add


GOOD = """
    import effzoo
    @effzoo.hookimpl
    def effzoo_register(register):
        register.add_variant("wide_gqa", family="qwen2.5", group="attention", defaults={"ffn_hidden": 512},
                             description="test variant")
"""


def _load(strict: bool = False) -> Registry:
    registry = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        registry.reports = plugins.load_plugins(registry, strict=strict)
    registry._loaded = True
    return registry


def test_builtins_load_through_entry_points():
    reports = {r.name: r for r in effzoo.plugin_reports()}
    for name in ("positions", "attention_gqa", "feedforward", "transformer"):
        assert reports[name].ok and reports[name].builtin and reports[name].distribution == "effzoo"


def test_setup_cfg_entry_points_match_builtin_list():
    import configparser
    from pathlib import Path

    from effzoo_plugins import BUILTINS

    parser = configparser.ConfigParser()
    parser.read(Path(__file__).parents[1] / "setup.cfg")
    declared = dict(
        line.split("=", 1) for line in parser["options.entry_points"]["effzoo"].strip().splitlines()
    )
    assert {k.strip(): v.strip() for k, v in declared.items()} == BUILTINS


def test_third_party_plugin_registers_a_variant(fake_plugins):
    fake_plugins("good_plugin", GOOD)
    registry = _load()
    assert "wide_gqa" in registry.names()
    assert registry.variant("wide_gqa").plugin == "good_plugin"


def test_broken_plugin_is_reported_and_everything_else_works(fake_plugins):
    fake_plugins("broken_plugin", "raise RuntimeError('kaboom at import')\n", distribution="effzoo-broken")
    fake_plugins("good_plugin", GOOD)
    registry = _load()
    report = {r.name: r for r in registry.reports}["broken_plugin"]
    assert not report.ok and "kaboom" in report.error
    assert report.distribution == "effzoo-broken" and report.version == "1.2.3"
    assert {"gqa", "wide_gqa"} <= set(registry.names())


def test_strict_mode_raises_on_broken_plugin(fake_plugins):
    fake_plugins("broken_plugin", "raise RuntimeError('kaboom')\n")
    with pytest.raises(PluginError, match="broken_plugin.*kaboom"):
        _load(strict=True)


def test_plugin_failing_half_way_leaves_nothing_registered(fake_plugins):
    fake_plugins("half_plugin", """
        import effzoo
        @effzoo.hookimpl
        def effzoo_register(register):
            register.add_variant("half_one", family="qwen2.5", description="x")
            raise ValueError("second step failed")
    """)
    registry = _load()
    assert "half_one" not in registry.names()
    assert "second step failed" in {r.name: r for r in registry.reports}["half_plugin"].error


def test_duplicate_name_is_rejected_unless_override(fake_plugins):
    fake_plugins("dup_plugin", """
        import effzoo
        @effzoo.hookimpl
        def effzoo_register(register):
            register.add_variant("gqa", family="qwen2.5", description="impostor")
    """)
    registry = _load()
    report = {r.name: r for r in registry.reports}["dup_plugin"]
    assert "already registered" in report.error
    assert registry.variant("gqa").plugin == "transformer"


def test_explicit_override_replaces(fake_plugins):
    fake_plugins("override_plugin", """
        import effzoo
        @effzoo.hookimpl
        def effzoo_register(register):
            register.add_variant("gqa", family="qwen2.5", description="replacement", override=True)
    """)
    registry = _load()
    assert registry.variant("gqa").description == "replacement"


def test_misspelled_hook_is_reported(fake_plugins):
    fake_plugins("typo_plugin", """
        import effzoo
        @effzoo.hookimpl
        def effzoo_regster(register):
            pass
    """)
    registry = _load()
    assert "effzoo_regster" in {r.name: r for r in registry.reports}["typo_plugin"].error


def test_env_blocklist_and_autoload_switch(fake_plugins, monkeypatch):
    fake_plugins("good_plugin", GOOD)
    monkeypatch.setenv("EFFZOO_BLOCK_PLUGINS", "good_plugin")
    assert "wide_gqa" not in _load().names()
    monkeypatch.delenv("EFFZOO_BLOCK_PLUGINS")
    monkeypatch.setenv("EFFZOO_DISABLE_PLUGIN_AUTOLOAD", "1")
    registry = _load()
    assert "wide_gqa" not in registry.names() and "gqa" in registry.names()


def test_unknown_variant_is_keyerror_with_suggestions():
    with pytest.raises(KeyError) as err:
        effzoo.build("gqq")
    assert isinstance(err.value, UnknownNameError)
    assert "gqa" in err.value.suggestions
    assert "Loaded plugins" in str(err.value)


def test_aliases_resolve_to_canonical_names():
    cfg = effzoo.make_config("gqa", position="learnable_absolute")
    assert cfg.position == "learned"
    assert effzoo.make_config("gqa", position="Sinusoidal").position == "absolute"


def test_list_variants_filters_on_capabilities():
    names = [v.name for v in effzoo.list_variants(group="attention")]
    assert {"gqa", "mqa", "mha"} <= set(names)
    assert [v.name for v in effzoo.list_variants("m?a")] == [n for n in ("mha", "mla", "mqa") if n in names]
    with pytest.raises(effzoo.ConfigError, match="kv_cache"):
        effzoo.list_variants(kv_cahce=True)
