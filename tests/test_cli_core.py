"""The core commands: effzoo list / info / plugins, and the dispatcher's errors."""
from __future__ import annotations

import json

from effzoo.cli import main


def test_list_shows_variants(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "gqa" in out and "mqa" in out and "sizes=" in out


def test_list_json_is_machine_readable(capsys):
    assert main(["list", "--json", "m*"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert "mqa" in {r["name"] for r in rows} and all(r["name"].startswith("m") for r in rows)


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "gqa", "--size", "0.5B"]) == 0
    out = capsys.readouterr().out
    assert "494,032,768" in out and "12,288" in out


def test_info_accepts_overrides(capsys):
    assert main(["info", "gqa", "--size", "0.5B", "--set", "n_kv_heads=1", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["kv_cache_bytes_per_token"] == 6144


def test_info_reports_bad_override_cleanly(capsys):
    assert main(["info", "gqa", "--set", "n_kv_head=1"]) == 2
    assert "n_kv_heads" in capsys.readouterr().err


def test_plugins_lists_builtins(capsys):
    assert main(["plugins"]) == 0
    assert "transformer" in capsys.readouterr().out


def test_unknown_command_suggests(capsys):
    assert main(["lst"]) == 2
    assert "did you mean 'list'" in capsys.readouterr().err


def test_unknown_variant_is_a_clean_error(capsys):
    assert main(["info", "gqx"]) == 2
    assert "Did you mean: gqa" in capsys.readouterr().err


def test_an_input_error_is_one_line_and_debug_shows_the_traceback(tmp_path, capsys, monkeypatch):
    import pytest

    missing = str(tmp_path / "missing.bin")
    assert main(["eval", "ppl", "--model", "gqa", "--tokens", missing, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("effzoo eval: error: ") and missing in err and len(err.strip().splitlines()) == 1
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "ppl", "--model", "gqa", "--tokens", missing, "--quiet"])
    with pytest.raises(FileNotFoundError):
        main(["eval", "ppl", "--model", "gqa", "--tokens", missing, "--quiet", "--debug"])
    monkeypatch.setenv("EFFZOO_DEBUG", "1")
    with pytest.raises(FileNotFoundError):
        main(["eval", "ppl", "--model", "gqa", "--tokens", missing, "--quiet"])
