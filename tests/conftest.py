"""Shared test settings: deterministic seeds, quiet plugin warnings for built-ins still being written."""
from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)
