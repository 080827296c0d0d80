"""The thin trainer: ``effzoo.train.train(TrainConfig(...))`` or ``effzoo train VARIANT ...``.

    >>> from effzoo.train import TrainConfig, train
    >>> result = train(TrainConfig(variant="gqa", size="tiny", steps=20, out="runs/t"))
    >>> result.metrics["tokens_per_s"]
"""
from __future__ import annotations

from .config import TrainConfig, load_config_file
from .loop import TrainingError, TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "TrainingError", "load_config_file", "train"]
