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


def test_every_builtin_plugin_module_is_an_entry_point():
    """The entry points are the one list of built-ins: each effzoo_plugins module with a hook is declared."""
    import configparser
    import pkgutil
    from pathlib import Path

    import effzoo_plugins

    parser = configparser.ConfigParser()
    parser.read(Path(__file__).parents[1] / "setup.cfg")
    declared = {v.strip() for v in (line.split("=", 1)[1] for line in
                                     parser["options.entry_points"]["effzoo"].strip().splitlines())}
    with_hook = set()
    for info in pkgutil.iter_modules(effzoo_plugins.__path__):
        path = Path(effzoo_plugins.__path__[0]) / (f"{info.name}/__init__.py" if info.ispkg else f"{info.name}.py")
        if "def effzoo_register" in path.read_text():
            with_hook.add(f"effzoo_plugins.{info.name}")
    assert declared == with_hook
    assert not hasattr(effzoo_plugins, "BUILTINS")


def test_missing_own_entry_points_say_how_to_install(monkeypatch):
    monkeypatch.setattr(plugins.metadata, "entry_points", lambda group: [])
    with pytest.raises(PluginError, match="pip install -e"):
        plugins._candidates()


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
    names = effzoo.list_variants(group="attention")
    assert [s.name for s in effzoo.list_variants(group="attention", specs=True)] == names
    assert {"gqa", "mqa", "mha"} <= set(names)
    assert effzoo.list_variants("m?a") == [n for n in ("mha", "mla", "mqa") if n in names]
    with pytest.raises(effzoo.ConfigError, match="kv_cache"):
        effzoo.list_variants(kv_cahce=True)


# -- issue 11, plugin items 16-19 ----------------------------------------------------------------
BAD_FAMILY = """
    import effzoo
    @effzoo.hookimpl
    def effzoo_register(register):
        register.add_variant("lost_variant", family="no_such_family", description="names a family nobody has")
"""


def test_variant_naming_an_unregistered_family_rejects_only_its_plugin(fake_plugins):
    fake_plugins("bad_family", BAD_FAMILY)
    fake_plugins("good_plugin", GOOD)
    registry = _load()
    report = {r.name: r for r in registry.reports}["bad_family"]
    assert not report.ok and "no_such_family" in report.error
    assert "lost_variant" not in registry.names() and "wide_gqa" in registry.names()
    for spec in registry.list_variants():  # what `effzoo list` does for every variant
        assert registry.size_table(registry.family(spec.name))


def test_strict_mode_raises_again_instead_of_returning_half_a_registry(fake_plugins, monkeypatch):
    fake_plugins("broken_plugin", "raise RuntimeError('kaboom')\n")
    monkeypatch.setenv("EFFZOO_STRICT_PLUGINS", "1")
    registry = Registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(2):
            with pytest.raises(PluginError, match="kaboom"):
                registry.ensure_loaded()
            assert not registry.variants and not registry._loaded


def test_override_of_a_builtin_is_recorded_and_shown(fake_plugins, monkeypatch, capsys):
    fake_plugins("override_plugin", """
        import effzoo
        @effzoo.hookimpl
        def effzoo_register(register):
            register.add_variant("gqa", family="qwen2.5", description="replacement", override=True,
                                 defaults={"block": "transformer", "position": "rope"})
    """, distribution="effzoo-override")
    registry = _load()
    (replacement,) = registry.replacements
    assert (replacement.kind, replacement.name) == ("variant", "gqa")
    assert "transformer (effzoo" in replacement.old and "override_plugin (effzoo-override 1.2.3)" in replacement.new
    from effzoo.cli import plugins as plugins_cli, variants as variants_cli

    monkeypatch.setattr(plugins_cli, "REGISTRY", registry)
    monkeypatch.setattr(variants_cli, "REGISTRY", registry)
    plugins_cli.run(type("Args", (), {"json": False})())
    assert "override: variant 'gqa' of transformer (effzoo" in capsys.readouterr().out
    variants_cli.run(type("Args", (), {"json": False, "pattern": "gqa", "group": None, "components": False})())
    assert "replaced: variant 'gqa' of transformer" in capsys.readouterr().out


@pytest.mark.parametrize("spelling", ["effzoo-fake", "Effzoo_Fake", "effzoo.fake", "EFFZOO__FAKE", "Good-Plugin"])
def test_blocklist_matches_pep503_normalised_names(fake_plugins, monkeypatch, spelling):
    fake_plugins("good_plugin", GOOD)
    monkeypatch.setenv("EFFZOO_BLOCK_PLUGINS", f" {spelling} ")
    registry = _load()
    assert "wide_gqa" not in registry.names()
    assert registry.blocked == ["good_plugin (effzoo-fake)"]


def test_blocking_a_family_owner_leaves_out_only_the_variants_that_need_it(monkeypatch):
    monkeypatch.setenv("EFFZOO_BLOCK_PLUGINS", "transformer")
    registry = _load()
    reports = {r.name: r for r in registry.reports}
    assert "transformer" not in reports and all(r.ok for r in reports.values())
    assert "mla" not in registry.names() and "mla" in registry.names("attention")  # the component stays
    assert any("variant 'mla'" in why and "blocked: transformer (effzoo)" in why for why in registry.withdrawn)
    with pytest.raises(UnknownNameError, match=r"Blocked by EFFZOO_BLOCK_PLUGINS: transformer \(effzoo\)"):
        registry.variant("gqa")
