"""The CUDA backend: bf16 autocast, NVML energy counters, H100-class peak table, torch.compile."""
from __future__ import annotations

import contextlib
import os
from typing import Any

import torch

from .base import BackendAdapter, NoPowerMeter, PowerMeter, PowerReading

# Dense peak FLOP/s per GPU (tensor cores, no sparsity) by a substring of the device name.
# Order matters: the first match wins. Override with --peak-tflops.
CUDA_PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("GH200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H200", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H100 PCIe", {"bf16": 756e12, "fp16": 756e12, "fp32": 51e12}),
    ("H100", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("H800", {"bf16": 989e12, "fp16": 989e12, "fp32": 67e12}),
    ("B200", {"bf16": 2250e12, "fp16": 2250e12, "fp32": 80e12}),
    ("A100", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("A800", {"bf16": 312e12, "fp16": 312e12, "fp32": 19.5e12}),
    ("L40S", {"bf16": 362e12, "fp16": 362e12, "fp32": 91.6e12}),
    ("RTX 4090", {"bf16": 165e12, "fp16": 165e12, "fp32": 82.6e12}),
    ("A10", {"bf16": 125e12, "fp16": 125e12, "fp32": 31.2e12}),
    ("V100", {"fp16": 125e12, "fp32": 15.7e12}),
]

_DTYPE_KEY = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


def peak_from_table(device_name: str, dtype: torch.dtype,
                    table: list[tuple[str, dict[str, float]]]) -> tuple[float | None, str]:
    """Look ``device_name`` up in a (substring, {dtype: FLOP/s}) table."""
    for key, peaks in table:
        if key.lower() in device_name.lower():
            value = peaks.get(_DTYPE_KEY.get(dtype, "fp32"))
            return (value, f"table:{key}") if value else (None, "unknown")
    return None, "unknown"


def physical_index(index: int, visible: str | None) -> int | str:
    """The NVML index (or UUID) of logical CUDA device ``index`` under CUDA_VISIBLE_DEVICES."""
    if not visible:
        return index
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    if index >= len(entries):
        return index
    entry = entries[index]
    return int(entry) if entry.isdigit() else entry


class NvmlPowerMeter(PowerMeter):
    """NVML: total-energy counter (mJ, Volta and later) and instantaneous power (mW)."""

    source = "nvml"

    def __init__(self, pynvml: Any, handle: Any) -> None:
        self._nvml, self._handle = pynvml, handle
        try:
            pynvml.nvmlDeviceGetTotalEnergyConsumption(handle)
            self._has_energy = True
        except pynvml.NVMLError:
            self._has_energy = False
        self.source = "nvml-energy" if self._has_energy else "nvml-power"

    def read(self) -> PowerReading:
        nvml = self._nvml
        reading = PowerReading()
        with contextlib.suppress(nvml.NVMLError):  # a failed read leaves the fields None
            reading.power_w = nvml.nvmlDeviceGetPowerUsage(self._handle) / 1e3
            if self._has_energy:
                reading.energy_j = nvml.nvmlDeviceGetTotalEnergyConsumption(self._handle) / 1e3
        return reading

    def utilization(self) -> float | None:
        try:
            return self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu / 100.0
        except self._nvml.NVMLError:
            return None

    def close(self) -> None:
        with contextlib.suppress(self._nvml.NVMLError):
            self._nvml.nvmlShutdown()


def cuda_uuid(index: int) -> str | None:
    """NVML's UUID (``GPU-...``) of logical CUDA device ``index``, or None when CUDA cannot tell."""
    try:
        uuid = str(torch.cuda.get_device_properties(index).uuid)
    except (RuntimeError, AssertionError, AttributeError):
        return None
    return uuid if uuid.startswith(("GPU-", "MIG-")) else f"GPU-{uuid}"


def _nvml_handle(pynvml: Any, index: int) -> Any:
    """The device's NVML handle by its UUID (exact whatever CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER
    say), else by the CUDA_VISIBLE_DEVICES entry (an index in PCI order, or a full UUID)."""
    uuid = cuda_uuid(index)
    if uuid is not None:
        with contextlib.suppress(pynvml.NVMLError):
            return pynvml.nvmlDeviceGetHandleByUUID(uuid)
    target = physical_index(index, os.environ.get("CUDA_VISIBLE_DEVICES"))
    return (pynvml.nvmlDeviceGetHandleByUUID(target) if isinstance(target, str)
            else pynvml.nvmlDeviceGetHandleByIndex(target))


def open_nvml(index: int) -> NvmlPowerMeter | None:
    """An NVML meter for logical device ``index``, or None without nvidia-ml-py / a driver."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        handle = _nvml_handle(pynvml, index)
    except pynvml.NVMLError:
        return None
    return NvmlPowerMeter(pynvml, handle)


class CudaBackend(BackendAdapter):
    name = "cuda"
    dist_backend = "nccl"
    compile_supported = True

    def __init__(self, index: int = 0, peak_tflops: float | None = None) -> None:
        super().__init__(index, peak_tflops)
        self._nvml: NvmlPowerMeter | None | bool = False  # False = not opened yet

    @property
    def device(self) -> torch.device:
        return torch.device("cuda", self.index)

    def device_name(self) -> str:
        return torch.cuda.get_device_name(self.index)

    def supports_bf16(self) -> bool:
        return torch.cuda.is_bf16_supported()

    def set_device(self) -> None:
        torch.cuda.set_device(self.index)
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    def synchronize(self) -> None:
        torch.cuda.synchronize(self.index)

    def memory_in_use(self) -> int:
        return torch.cuda.memory_reserved(self.index)

    def peak_memory(self) -> int:
        return torch.cuda.max_memory_allocated(self.index)

    def reset_peak_memory(self) -> None:
        torch.cuda.reset_peak_memory_stats(self.index)

    def _meter(self) -> NvmlPowerMeter | None:
        if self._nvml is False:
            self._nvml = open_nvml(self.index)
        return self._nvml or None

    def utilization(self) -> float | None:
        meter = self._meter()
        return meter.utilization() if meter is not None else None

    def power_meter(self) -> PowerMeter:
        meter = self._meter()
        return meter if meter is not None else NoPowerMeter()

    def _table_peak(self, dtype: torch.dtype) -> tuple[float | None, str]:
        return peak_from_table(self.device_name(), dtype, CUDA_PEAK_FLOPS)

    def manual_seed(self, seed: int) -> None:
        torch.cuda.manual_seed(seed)

    def rng_state(self) -> torch.Tensor | None:
        return torch.cuda.get_rng_state(self.index)

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        if state is not None:
            torch.cuda.set_rng_state(state, self.index)
