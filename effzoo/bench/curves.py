"""Loss curves (tokens, loss) from effzoo runs and from Megatron / nanochat text logs."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import EffzooError
from ..metrics.logger import JSONL_NAME, read_jsonl

Curve = tuple[list[float], list[float]]

_ITERATION = re.compile(r"iteration\s+(\d+)\s*/\s*\d+")
_CONSUMED = re.compile(r"consumed samples:\s*(\d+)")
_LM_LOSS = re.compile(r"lm loss:\s*([0-9.eE+-]+)")
_NANOCHAT = re.compile(r"step\s+(\d+)(?:\s*/\s*\d+)?.*?\|\s*loss:?\s*([0-9.eE+-]+)")


def read_loss_curve(source: str | Path, *, tokens_per_step: float | None = None,
                    seq_len: int | None = None) -> Curve:
    """Training (tokens, loss) points from an effzoo run folder / metrics.jsonl, or a text log.

    Text logs: Megatron lines (``iteration N/M | consumed samples: S | ... | lm loss: X``; tokens =
    S × ``seq_len`` when given, else N × ``tokens_per_step``) and nanochat lines
    (``step N/M | loss: X``; tokens = N × ``tokens_per_step``).
    """
    path = Path(source)
    if path.is_dir():
        path = path / JSONL_NAME
    if not path.exists():
        raise EffzooError(f"no training log at {path}")
    if path.suffix == ".jsonl":
        records = read_jsonl(path, kind="train")
        return [float(r["tokens"]) for r in records], [float(r["loss"]) for r in records]
    return _parse_text_log(path, tokens_per_step, seq_len)


def _parse_text_log(path: Path, tokens_per_step: float | None, seq_len: int | None) -> Curve:
    tokens: list[float] = []
    losses: list[float] = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        iteration, loss = _ITERATION.search(line), _LM_LOSS.search(line)
        if iteration and loss:
            consumed = _CONSUMED.search(line)
            if consumed and seq_len:
                tokens.append(float(consumed.group(1)) * seq_len)
            else:
                tokens.append(float(iteration.group(1)) * _need(tokens_per_step, path))
            losses.append(float(loss.group(1)))
            continue
        nanochat = _NANOCHAT.search(line)
        if nanochat:
            tokens.append(float(nanochat.group(1)) * _need(tokens_per_step, path))
            losses.append(float(nanochat.group(2)))
    if not losses:
        raise EffzooError(f"{path}: no loss lines found (expected Megatron 'iteration N/M ... lm loss: X' "
                          "or nanochat 'step N/M | loss: X' lines, or an effzoo metrics.jsonl)")
    return tokens, losses


def _need(tokens_per_step: float | None, path: Path) -> float:
    if tokens_per_step is None:
        raise EffzooError(f"{path}: pass --tokens-per-step (or --seq-len for Megatron logs with consumed samples) "
                          "to put tokens on the x axis")
    return tokens_per_step
