"""Backend adapters: one object per device kind (cuda, npu, cpu) that hides every device detail
from the trainer. ``get_backend("auto")`` picks CUDA, then an Ascend NPU, then the CPU."""
from __future__ import annotations

from ..errors import ConfigError, UnknownNameError
from .base import BackendAdapter, NoPowerMeter, PowerMeter, PowerReading

NAMES = ("auto", "cuda", "npu", "cpu")


def detect() -> str:
    """The best available backend name: cuda, npu or cpu."""
    import torch

    if torch.cuda.is_available():
        return "cuda"
    from .npu import npu_available

    return "npu" if npu_available() else "cpu"


def get_backend(name: str = "auto", index: int = 0, peak_tflops: float | None = None) -> BackendAdapter:
    """The adapter for ``name`` ('auto' detects) on local device ``index``."""
    import torch

    if name not in NAMES:
        raise UnknownNameError("backend", name, NAMES)
    resolved = detect() if name == "auto" else name
    if resolved == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError("--backend cuda: no CUDA device is visible to PyTorch")
        from .cuda import CudaBackend

        return CudaBackend(index, peak_tflops)
    if resolved == "npu":
        from .npu import NpuBackend, npu_available

        if not npu_available():
            raise ConfigError("--backend npu: torch_npu is not importable or no NPU is visible "
                              "(pip install 'effzoo[npu]' with the CANN runtime)")
        return NpuBackend(index, peak_tflops)
    from .cpu import CpuBackend

    return CpuBackend(index, peak_tflops)


__all__ = ["BackendAdapter", "NAMES", "NoPowerMeter", "PowerMeter", "PowerReading", "detect", "get_backend"]
