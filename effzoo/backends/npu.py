"""The Ascend NPU backend (torch_npu): bf16 autocast (fp16 + loss scaling on 910A), HCCL,
npu-smi power sampling, and the fused kernels ``npu_fusion_attention``, ``npu_rms_norm`` and
``npu_rotary_mul`` installed on the model with the pure-PyTorch path as fallback.

Nothing here imports ``torch_npu`` at module import: it can fail in CPU-only containers.
"""
from __future__ import annotations

import functools
import math
import os
import re
import shutil
import subprocess
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..ops import attention as attention_ops
from .base import BackendAdapter, NoPowerMeter, PowerMeter, PowerReading
from .cuda import peak_from_table, physical_index

NPU_ATTENTION_BACKEND = "npu_fusion"
CAUSAL_MASK_SIZE = 2048  # npu_fusion_attention sparse_mode=2/3 wants a 2048x2048 upper-triangular mask

# Approximate dense peaks (bf16/fp16) per Ascend chip; override with --peak-tflops.
NPU_PEAK_FLOPS: list[tuple[str, dict[str, float]]] = [
    ("910B1", {"bf16": 376e12, "fp16": 376e12}),
    ("910B2", {"bf16": 353e12, "fp16": 353e12}),
    ("910B3", {"bf16": 313e12, "fp16": 313e12}),
    ("910B", {"bf16": 313e12, "fp16": 313e12}),
    ("910A", {"fp16": 256e12}),
    ("910", {"fp16": 256e12}),
]


def import_torch_npu() -> Any | None:
    """``torch_npu`` if it imports (it registers ``torch.npu``), else None."""
    try:
        import torch_npu
    except Exception:  # ImportError, or a missing CANN runtime raising at import
        return None
    return torch_npu


def npu_available() -> bool:
    return import_torch_npu() is not None and hasattr(torch, "npu") and torch.npu.is_available()


# -- fused kernels (each falls back to the pure-PyTorch path when it does not apply) ---------
@functools.lru_cache(maxsize=8)
def _causal_mask(device: str) -> Tensor:
    """The 2048x2048 bool mask npu_fusion_attention uses with sparse_mode=2 (True = masked)."""
    return torch.ones(CAUSAL_MASK_SIZE, CAUSAL_MASK_SIZE, dtype=torch.bool, device=device).triu(1)


def fusion_attention(q: Tensor, k: Tensor, v: Tensor, *, causal: bool = True, position: Any = None,
                     scale: float | None = None) -> Tensor:
    """``torch_npu.npu_fusion_attention`` for (B, H, T, D) inputs without a score bias or cache
    offset; grouped keys/values are passed as they are (the kernel takes N_kv dividing N_q)."""
    torch_npu = import_torch_npu()
    has_bias = position is not None and position.has_bias
    if torch_npu is None or has_bias or q.shape[2] != k.shape[2] or q.shape[-1] != v.shape[-1]:
        return attention_ops.sdpa_attention(q, k, v, causal=causal, position=position, scale=scale)
    scale = scale if scale is not None else 1.0 / math.sqrt(q.shape[-1])
    extra: dict[str, Any] = {}
    if causal:
        extra = {"atten_mask": _causal_mask(str(q.device)), "sparse_mode": 2}
    out = torch_npu.npu_fusion_attention(q, k, v, q.shape[1], "BNSD", scale=scale, keep_prob=1.0, **extra)
    return out[0]


def install_npu_kernels(model: nn.Module) -> list[str]:
    """Let the model's components switch to the NPU kernels they declare (``Component.install_kernels``:
    RMSNorm -> npu_rms_norm, RoPE -> npu_rotary_mul) and route attention through npu_fusion_attention."""
    installed = set(model.install_kernels("npu"))
    attention_ops.register_backend(NPU_ATTENTION_BACKEND, fusion_attention)
    installed.add("npu_fusion_attention")
    return sorted(installed)


# -- power ----------------------------------------------------------------------------------
_POWER = re.compile(r"power[^:\n]*:\s*([0-9]+(?:\.[0-9]+)?)", re.IGNORECASE)


def parse_npu_smi_power(text: str) -> float | None:
    """Watts from ``npu-smi info -t power -i ID`` output ("Power Dissipation(W) : 92.3")."""
    match = _POWER.search(text)
    return float(match.group(1)) if match else None


class NpuSmiPowerMeter(PowerMeter):
    """Samples ``npu-smi`` (physical NPU ids; no energy counter, so power is integrated)."""

    source = "npu-smi"

    def __init__(self, physical_id: int) -> None:
        self.physical_id = physical_id

    def read(self) -> PowerReading:
        try:
            result = subprocess.run(["npu-smi", "info", "-t", "power", "-i", str(self.physical_id)],
                                    capture_output=True, text=True, timeout=5, check=False)
        except (OSError, subprocess.TimeoutExpired):
            return PowerReading()
        return PowerReading(power_w=parse_npu_smi_power(result.stdout))


class NpuBackend(BackendAdapter):
    name = "npu"
    dist_backend = "hccl"
    compile_supported = False  # torch.compile is unreliable on NPU
    attention_backend = NPU_ATTENTION_BACKEND

    def __init__(self, index: int = 0, peak_tflops: float | None = None) -> None:
        super().__init__(index, peak_tflops)
        if import_torch_npu() is None or not hasattr(torch, "npu"):
            raise ConfigError("the npu backend needs torch_npu and the CANN runtime: pip install 'effzoo[npu]'")

    @property
    def device(self) -> torch.device:
        return torch.device("npu", self.index)

    def device_name(self) -> str:
        return str(torch.npu.get_device_name(self.index))

    def supports_bf16(self) -> bool:
        """910A (reported as "Ascend910A" or plain "Ascend910") has no bf16; 910B and later do."""
        name = self.device_name().replace(" ", "").lower()
        return not (name.endswith("910") or "910a" in name)

    def set_device(self) -> None:
        torch.npu.set_device(self.index)

    def synchronize(self) -> None:
        torch.npu.synchronize()

    def memory_in_use(self) -> int:
        return int(torch.npu.memory_reserved(self.index))

    def peak_memory(self) -> int:
        return int(torch.npu.max_memory_allocated(self.index))

    def reset_peak_memory(self) -> None:
        torch.npu.reset_peak_memory_stats(self.index)

    def power_meter(self) -> PowerMeter:
        if shutil.which("npu-smi") is None:
            return NoPowerMeter()
        return NpuSmiPowerMeter(int(physical_index(self.index, os.environ.get("ASCEND_RT_VISIBLE_DEVICES"))))

    def _table_peak(self, dtype: torch.dtype) -> tuple[float | None, str]:
        return peak_from_table(self.device_name(), dtype, NPU_PEAK_FLOPS)

    def prepare_model(self, model: nn.Module) -> list[str]:
        return install_npu_kernels(model)

    def manual_seed(self, seed: int) -> None:
        torch.npu.manual_seed(seed)

    def rng_state(self) -> torch.Tensor | None:
        return torch.npu.get_rng_state(self.index)

    def set_rng_state(self, state: torch.Tensor | None) -> None:
        if state is not None:
            torch.npu.set_rng_state(state, self.index)
