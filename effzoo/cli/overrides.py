"""``--set KEY=VALUE`` model-config overrides, shared by the commands that build a model (info, train)."""
from __future__ import annotations

import argparse
import json

from effzoo.errors import ConfigError


def add_set_argument(parser: argparse.ArgumentParser) -> None:
    """The repeatable ``--set KEY=VALUE`` flag (read it with :func:`parse_overrides`)."""
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="model config override, e.g. --set position=alibi --set n_kv_heads=1 (repeatable)")


def parse_overrides(pairs: list[str]) -> dict[str, object]:
    """``["a=1", "b=x"]`` -> ``{"a": 1, "b": "x"}`` (JSON values where they parse, else strings)."""
    out: dict[str, object] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"override {pair!r} is not KEY=VALUE; write e.g. --set n_kv_heads=1")
        try:
            out[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            out[key.strip()] = value
    return out
