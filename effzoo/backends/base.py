"""The backend adapter: everything the trainer needs to know about one kind of device.

The trainer never branches on the device type; it asks its adapter for the device, the autocast
dtype, whether a gradient scaler is needed, memory and power readings, the peak FLOP/s used for
MFU, the ``torch.distributed`` backend name, and lets it install the platform's fused kernels.
"""
from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from dataclasses import dataclass

import torch
from torch import nn

from ..build import parse_dtype
from ..errors import ConfigError


@dataclass
class PowerReading:
    """One power/energy observation of a device: ``energy_j`` is a monotonic counter when available."""

    power_w: float | None = None
    energy_j: float | None = None


class PowerMeter(ABC):
    """Reads the power (W) and, where the hardware has one, the energy counter (J) of one device."""

    source: str = "none"

    @abstractmethod
    def read(self) -> PowerReading:
        """The current reading; fields the device cannot report are None."""

    def close(self) -> None:
        """Release handles (NVML)."""


class NoPowerMeter(PowerMeter):
    """For devices without a readable power sensor: AEC is reported as null."""

    def read(self) -> PowerReading:
        return PowerReading()


class BackendAdapter(ABC):
    """Device-specific behaviour behind one interface (subclasses: cuda, npu, cpu)."""

    name: str = "base"
    dist_backend: str = "gloo"
    compile_supported: bool = False
    attention_backend: str | None = None  # passed to EffzooModel.forward(backend=...) when set
    default_seq_len: int = 2048  # used when --seq-len is not given (capped by the model's max_seq_len)

    def __init__(self, index: int = 0, peak_tflops: float | None = None) -> None:
        self.index = index
        self._peak_override = peak_tflops * 1e12 if peak_tflops else None

    # -- device and precision -------------------------------------------------------------
    @property
    @abstractmethod
    def device(self) -> torch.device:
        """The device this process trains on."""

    def device_name(self) -> str:
        return self.name

    def supports_bf16(self) -> bool:
        return True

    def default_dtype(self) -> str:
        """The mixed-precision mode used when the user asks for 'auto'."""
        return "bf16" if self.supports_bf16() else "fp16"

    def resolve_dtype(self, dtype: str) -> torch.dtype:
        """'auto' | 'bf16' | 'fp16' | 'fp32' -> the autocast dtype (fp32 = no autocast)."""
        resolved = parse_dtype(self.default_dtype() if dtype == "auto" else dtype)
        if resolved == torch.bfloat16 and not self.supports_bf16():
            raise ConfigError(
                f"{self.device_name()} has no bfloat16 support; use --dtype fp16 (with loss scaling) or fp32"
            )
        return resolved

    def autocast(self, dtype: torch.dtype) -> contextlib.AbstractContextManager:
        """Mixed-precision context for forward passes (weights stay fp32)."""
        if dtype == torch.float32:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=dtype)

    def grad_scaler(self, dtype: torch.dtype) -> torch.amp.GradScaler | None:
        """A loss scaler for fp16 training, None otherwise."""
        if dtype != torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)

    def set_device(self) -> None:
        """Make ``device`` the current device of this process (no-op on CPU)."""

    # -- synchronisation and memory -------------------------------------------------------
    def synchronize(self) -> None:
        """Wait for queued device work (for timing)."""

    @abstractmethod
    def memory_in_use(self) -> int:
        """Bytes of device memory this process holds right now."""

    def peak_memory(self) -> int:
        """Peak bytes allocated since the last ``reset_peak_memory``."""
        return self.memory_in_use()

    def reset_peak_memory(self) -> None:
        """Start a new peak-memory window."""

    def utilization(self) -> float | None:
        """Instantaneous busy fraction of the device in [0, 1], or None when not readable."""
        return None

    def power_meter(self) -> PowerMeter:
        """A meter for this process's device (never the sum over the node)."""
        return NoPowerMeter()

    # -- FLOPs ----------------------------------------------------------------------------
    def peak_flops(self, dtype: torch.dtype) -> tuple[float | None, str]:
        """Peak dense FLOP/s per device for ``dtype`` and where the number came from."""
        if self._peak_override:
            return self._peak_override, "override"
        return self._table_peak(dtype)

    def _table_peak(self, dtype: torch.dtype) -> tuple[float | None, str]:
        return None, "unknown"

    # -- kernels and compilation ----------------------------------------------------------
    def prepare_model(self, model: nn.Module) -> list[str]:
        """Install this platform's fused kernels on ``model``; returns what was installed."""
        return []

    def compile(self, model: nn.Module) -> nn.Module:
        if not self.compile_supported:
            raise ConfigError(f"torch.compile is not enabled on the {self.name} backend; drop --compile")
        return torch.compile(model)

    def manual_seed(self, seed: int) -> None:
        """Seed this device's generator (CPU generator is seeded by the trainer)."""

    def rng_state(self) -> torch.Tensor | None:
        """This device's RNG state for checkpoints (None on CPU)."""
        return None

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        """Restore what ``rng_state`` returned."""

    def describe(self) -> str:
        return f"{self.name} ({self.device_name()}, {self.device})"
