"""Multi-query associative recall (Zoology, arXiv 2312.04927): data, training grid, tables and plot."""
from __future__ import annotations

from .data import MQARSplit, make_mqar
from .grid import RecallCell, RecallGrid, model_overrides
from .suite import RecallSettings, run_recall

__all__ = ["MQARSplit", "RecallCell", "RecallGrid", "RecallSettings", "make_mqar", "model_overrides", "run_recall"]
