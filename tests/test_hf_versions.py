"""The declared version floors, the CI's lowest-version venv, and the cache keyword per transformers release."""
from __future__ import annotations

import configparser
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
CI = ROOT / ".ci" / "run"
# what the lowest-version venv must pin: the packages whose releases change effzoo's behaviour
VARIED = {"transformers", "tokenizers", "pyarrow", "safetensors", "pluggy", "einops", "numpy", "huggingface_hub"}


def declared_floors() -> dict[str, str]:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    lines = cfg["options"]["install_requires"].splitlines()
    for extra in ("test", "data"):
        lines += cfg["options.extras_require"][extra].splitlines()
    floors = {}
    for line in lines:
        match = re.fullmatch(r"\s*([A-Za-z0-9_.-]+)\s*>=\s*([0-9.]+)\s*", line)
        if match:
            floors[match[1].lower()] = match[2]
    return floors


def test_ci_lowest_venv_pins_every_declared_floor() -> None:
    function = re.search(r"^lowest_declared\(\) \{.*?^\}\n", CI.read_text(), flags=re.S | re.M)
    assert function, ".ci/run has no lowest_declared function"
    out = subprocess.run(["bash", "-c", function[0] + "lowest_declared"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    pins = dict(pin.lower().split("==") for pin in out)
    floors = declared_floors()
    assert VARIED <= set(pins)
    assert all(pins[name] == floors[name] for name in pins)
    assert "torch" not in pins  # torch stays the CPU wheel CI installs


def test_floors_are_the_tested_ones() -> None:
    floors = declared_floors()
    assert floors["transformers"] == "5.5"  # 5.0-5.4 reset GPT-NeoX partial_rotary_factor on load
    assert floors["tokenizers"] == "0.22.1"  # 0.22.0 needs huggingface_hub<1, which transformers 5 refuses


def test_test_extra_leaves_triton_to_torch() -> None:
    cfg = configparser.ConfigParser()
    cfg.read(ROOT / "setup.cfg")
    assert "triton" not in cfg["options.extras_require"]["test"]


def test_cache_keyword_matches_the_installed_transformers() -> None:
    pytest.importorskip("transformers")
    import inspect

    from transformers import GenerationMixin
    from transformers.modeling_outputs import CausalLMOutputWithPast

    from effzoo.hf.cache import CACHE_NAME

    assert CACHE_NAME in CausalLMOutputWithPast.__dataclass_fields__
    assert CACHE_NAME in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters
