"""Per-step records: a JSONL file, TensorBoard scalars (when installed), and the progress line
``step | loss | lr | dt | tok/s | mfu | eta``. Only rank 0 writes."""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from ..atomic import write_text

LOG = logging.getLogger("effzoo.train")
JSONL_NAME = "metrics.jsonl"


def format_eta(seconds: float) -> str:
    seconds = max(0, int(seconds))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


def progress_line(record: dict[str, Any], total_steps: int, eta_s: float) -> str:
    """``step 12/20 | loss 5.1234 | lr 1.00e-04 | dt 45.2ms | tok/s 12,345 | mfu 3.21% | eta 0:00:05``."""
    mfu = record.get("mfu")
    parts = [
        f"step {record['step']}/{total_steps}",
        f"loss {record['loss']:.4f}" + (" (skipped)" if record.get("skipped") else ""),
        f"lr {record['lr']:.2e}",
        f"dt {record['dt_s'] * 1e3:.1f}ms",
        f"tok/s {record['tokens_per_s']:,.0f}",
        f"mfu {mfu * 100:.2f}%" if mfu is not None else "mfu -",
        f"eta {format_eta(eta_s)}",
    ]
    return " | ".join(parts)


class StepLogger:
    """Appends JSON records to ``OUT/metrics.jsonl`` and mirrors scalars to TensorBoard."""

    def __init__(self, out: Path, *, enabled: bool, tensorboard: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = out / JSONL_NAME
        self._tb = None
        if not enabled:
            return
        out.mkdir(parents=True, exist_ok=True)
        if resume_step is not None:
            self._truncate_after(resume_step)
        elif self.path.exists():
            self.path.unlink()
        self._file = self.path.open("a", encoding="utf-8")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                LOG.info("tensorboard is not installed; per-step metrics go to %s only", self.path)
            else:
                self._tb = SummaryWriter(str(out / "tensorboard"))

    def _truncate_after(self, step: int) -> None:
        """Drop records a killed run wrote after the checkpoint being resumed, and a torn last line."""
        if not self.path.exists():
            return
        kept = [line for line in _lines(self.path) if json.loads(line).get("step", 0) <= step]
        write_text(self.path, "".join(line + "\n" for line in kept))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        if self._tb is not None:
            step = record["step"]
            for key, value in record.items():
                if key not in ("step", "kind") and isinstance(value, (int, float)) and not isinstance(value, bool):
                    self._tb.add_scalar(f"{record.get('kind', 'train')}/{key}", value, step)

    def close(self) -> None:
        if not self.enabled:
            return
        self._file.close()
        if self._tb is not None:
            self._tb.close()


def _lines(path: Path) -> list[str]:
    """The JSON lines of ``path``. A last line cut short by a kill is dropped; damage elsewhere is an error."""
    lines = [line for line in path.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    for number, line in enumerate(lines):
        try:
            json.loads(line)
        except json.JSONDecodeError as exc:
            if number == len(lines) - 1:
                LOG.warning("%s: dropped a torn last line (a run was interrupted while writing it)", path)
                return lines[:-1]
            from ..data.errors import DataError

            raise DataError(f"line {number + 1} is not valid JSON ({exc})", path=path) from exc
    return lines


def read_jsonl(path: str | Path, kind: str | None = "train") -> list[dict[str, Any]]:
    """Records of one kind ('train', 'val', or None for all) from a metrics.jsonl file."""
    records = [json.loads(line) for line in _lines(Path(path))]
    return [r for r in records if kind is None or r.get("kind") == kind]
