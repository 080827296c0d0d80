"""Backend adapters: detection and overrides, the NPU adapter's kernel dispatch (with a fake
``torch_npu`` module: no Ascend hardware here), NVML / npu-smi power reading, peak-FLOPs tables."""
from __future__ import annotations

import os
import subprocess
import sys
import types

import pytest
import torch

import effzoo
from effzoo.backends import detect, get_backend
from effzoo.backends.cpu import CpuBackend
from effzoo.backends.cuda import NvmlPowerMeter, peak_from_table, physical_index, CUDA_PEAK_FLOPS
from effzoo.backends.npu import NPU_ATTENTION_BACKEND, NpuBackend, fusion_attention, install_npu_kernels, parse_npu_smi_power
from effzoo.errors import ConfigError, UnknownNameError
from effzoo.ops.attention import reference_attention


def _rotate_half(x):
    a, b = x.chunk(2, dim=-1)
    return torch.cat((-b, a), dim=-1)


def make_fake_torch_npu(calls: list[str]) -> types.ModuleType:
    """A stand-in for torch_npu whose kernels follow the documented semantics in plain PyTorch."""
    fake = types.ModuleType("torch_npu")

    def npu_fusion_attention(q, k, v, head_num, input_layout, *, pse=None, padding_mask=None, atten_mask=None,
                             scale=1.0, keep_prob=1.0, sparse_mode=0, **unused):
        calls.append("npu_fusion_attention")
        assert input_layout == "BNSD" and head_num == q.shape[1] and keep_prob == 1.0
        groups = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(groups, 1), v.repeat_interleave(groups, 1)
        scores = (q.float() @ k.float().transpose(-1, -2)) * scale
        if atten_mask is not None:
            assert sparse_mode == 2 and atten_mask.shape == (2048, 2048) and atten_mask.dtype == torch.bool
            scores = scores.masked_fill(atten_mask[: q.shape[2], : k.shape[2]], float("-inf"))
        out = (scores.softmax(-1) @ v.float()).to(q.dtype)
        return out, None, None, None, 0, 0, 0

    def npu_rms_norm(x, gamma, epsilon=1e-6):
        calls.append("npu_rms_norm")
        rstd = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + epsilon)
        return (x.float() * rstd).to(x.dtype) * gamma, rstd

    def npu_rotary_mul(x, r1, r2):
        calls.append("npu_rotary_mul")
        return x * r1 + _rotate_half(x) * r2

    fake.npu_fusion_attention, fake.npu_rms_norm, fake.npu_rotary_mul = npu_fusion_attention, npu_rms_norm, npu_rotary_mul
    return fake


def make_fake_npu_namespace(name: str) -> types.SimpleNamespace:
    return types.SimpleNamespace(
        is_available=lambda: True, get_device_name=lambda index=0: name, set_device=lambda index: None,
        synchronize=lambda: None, memory_reserved=lambda index=0: 3 << 30, max_memory_allocated=lambda index=0: 4 << 30,
        reset_peak_memory_stats=lambda index=0: None, manual_seed=lambda seed: None,
        manual_seed_all=lambda seed: None, _is_in_bad_fork=lambda: False,
    )


CHILD = os.environ.get("EFFZOO_FAKE_NPU_CHILD") == "1"


@pytest.fixture
def fake_npu(monkeypatch):
    """Importing torch_npu renames torch's private-use device to 'npu' for the rest of the process (torch
    then asks ``torch.npu`` whether an accelerator exists, e.g. in ``optimizer.step``), so the tests that
    fake it run in a child process of their own: see test_fake_npu_tests_in_a_clean_process."""
    if not CHILD:
        pytest.skip("runs in a separate process (test_fake_npu_tests_in_a_clean_process)")
    calls: list[str] = []
    torch.utils.rename_privateuse1_backend("npu")  # what importing the real torch_npu does (idempotent)
    monkeypatch.setitem(sys.modules, "torch_npu", make_fake_torch_npu(calls))
    monkeypatch.setattr(torch, "npu", make_fake_npu_namespace("Ascend910B3"), raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    return calls


def test_npu_kernels_dispatch_and_match_the_reference(fake_npu):
    torch.manual_seed(0)
    reference = effzoo.build("gqa", size="tiny", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    patched = effzoo.build("gqa", size="tiny", d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, ffn_hidden=96)
    patched.load_state_dict(reference.state_dict())
    installed = install_npu_kernels(patched)  # what NpuBackend.prepare_model does
    assert installed == ["npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul"]
    ids = torch.randint(0, 512, (2, 24))
    want = reference(ids, ids, backend="reference")
    got = patched(ids, ids, backend=NPU_ATTENTION_BACKEND)
    assert set(fake_npu) == {"npu_fusion_attention", "npu_rms_norm", "npu_rotary_mul"}
    assert fake_npu.count("npu_fusion_attention") == 2 and fake_npu.count("npu_rms_norm") == 5
    torch.testing.assert_close(got.logits, want.logits, rtol=1e-4, atol=1e-5)
    want.loss.backward()
    got.loss.backward()
    for (name, a), b in zip(reference.named_parameters(), patched.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-6, msg=name)


def test_npu_attention_falls_back_where_the_kernel_does_not_apply(fake_npu):
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    alibi = effzoo.build("gqa", size="tiny", position="alibi", n_layers=1).position
    out = fusion_attention(q, k, v, causal=True, position=alibi)
    assert fake_npu == []  # a score bias: the pure-PyTorch path
    torch.testing.assert_close(out, reference_attention(q, k, v, causal=True, position=alibi), rtol=1e-4, atol=1e-5)
    fusion_attention(q[:, :, -1:], k, v, causal=True)  # decoding with a cache offset
    assert fake_npu == []


def test_npu_fallback_without_torch_npu(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)  # import fails
    q, k, v = torch.randn(1, 4, 6, 8), torch.randn(1, 2, 6, 8), torch.randn(1, 2, 6, 8)
    torch.testing.assert_close(fusion_attention(q, k, v), reference_attention(q, k, v), rtol=1e-4, atol=1e-5)
    with pytest.raises(ConfigError, match="torch_npu"):
        get_backend("npu")


def test_npu_backend_facts(fake_npu, monkeypatch):
    assert detect() == "npu"
    adapter = get_backend("auto")
    assert isinstance(adapter, NpuBackend) and adapter.device == torch.device("npu", 0)
    assert adapter.dist_backend == "hccl" and not adapter.compile_supported
    assert adapter.attention_backend == NPU_ATTENTION_BACKEND
    assert adapter.resolve_dtype("auto") == torch.bfloat16 and adapter.grad_scaler(torch.bfloat16) is None
    assert adapter.peak_flops(torch.bfloat16) == (313e12, "table:910B3")
    assert adapter.memory_in_use() == 3 << 30
    with pytest.raises(ConfigError, match="not enabled on the npu backend"):
        adapter.compile(torch.nn.Linear(2, 2))
    # 910A: no bf16, so fp16 with loss scaling
    monkeypatch.setattr(torch, "npu", make_fake_npu_namespace("Ascend910A"))
    old = NpuBackend(0)
    assert old.default_dtype() == "fp16" and old.resolve_dtype("auto") == torch.float16
    assert old.peak_flops(torch.float16) == (256e12, "table:910A")
    with pytest.raises(ConfigError, match="no bfloat16"):
        old.resolve_dtype("bf16")
    assert NpuBackend(0, peak_tflops=300).peak_flops(torch.float16) == (300e12, "override")


def test_npu_smi_power_parsing_and_physical_ids(monkeypatch):
    text = "        NPU ID                         : 0\n        Chip Count                     : 1\n" \
           "        Power Dissipation(W)           : 92.3\n"
    assert parse_npu_smi_power(text) == 92.3
    assert parse_npu_smi_power("no reading") is None
    assert physical_index(1, "4,5,6") == 5 and physical_index(0, None) == 0
    assert physical_index(0, "GPU-1a2b") == "GPU-1a2b"


class _FakeNvmlError(Exception):
    pass


def _fake_pynvml(energy: bool) -> types.SimpleNamespace:
    state = {"mj": 1_000_000}

    def total_energy(handle):
        if not energy:
            raise _FakeNvmlError("not supported")
        state["mj"] += 50_000
        return state["mj"]

    return types.SimpleNamespace(
        NVMLError=_FakeNvmlError, nvmlDeviceGetTotalEnergyConsumption=total_energy,
        nvmlDeviceGetPowerUsage=lambda handle: 310_500, nvmlShutdown=lambda: None,
        nvmlDeviceGetUtilizationRates=lambda handle: types.SimpleNamespace(gpu=87),
    )


def test_nvml_meter_prefers_the_energy_counter():
    meter = NvmlPowerMeter(_fake_pynvml(energy=True), handle=object())
    first, second = meter.read(), meter.read()
    assert meter.source == "nvml-energy" and first.power_w == 310.5
    assert second.energy_j - first.energy_j == pytest.approx(50.0)
    assert meter.utilization() == 0.87
    fallback = NvmlPowerMeter(_fake_pynvml(energy=False), handle=object())
    assert fallback.source == "nvml-power" and fallback.read().energy_j is None and fallback.read().power_w == 310.5


def test_nvml_handle_follows_the_cuda_uuid(monkeypatch):
    """NVML is opened by the UUID CUDA reports (exact under any CUDA_VISIBLE_DEVICES / CUDA_DEVICE_ORDER),
    and by the CUDA_VISIBLE_DEVICES entry when CUDA cannot tell or NVML does not know the UUID."""
    from effzoo.backends import cuda as cuda_backend

    nvml = _fake_pynvml(energy=True)
    known = {"GPU-58e7d2e9-0000": "by-uuid"}

    def by_uuid(uuid):
        if uuid not in known:
            raise _FakeNvmlError(uuid)
        return known[uuid]

    nvml.nvmlDeviceGetHandleByUUID, nvml.nvmlDeviceGetHandleByIndex = by_uuid, lambda i: f"index-{i}"
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,1")
    props = types.SimpleNamespace(uuid="58e7d2e9-0000")
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda index: props)
    assert cuda_backend.cuda_uuid(0) == "GPU-58e7d2e9-0000"
    assert cuda_backend._nvml_handle(nvml, 1) == "by-uuid"
    props.uuid = "ffff"  # NVML does not know it: fall back to the visible-devices entry
    assert cuda_backend._nvml_handle(nvml, 1) == "index-1"

    def no_cuda(index):
        raise RuntimeError("no CUDA")

    monkeypatch.setattr(torch.cuda, "get_device_properties", no_cuda)
    assert cuda_backend.cuda_uuid(0) is None and cuda_backend._nvml_handle(nvml, 0) == "index-3"


def test_peak_tables():
    assert peak_from_table("NVIDIA H100 80GB HBM3", torch.bfloat16, CUDA_PEAK_FLOPS) == (989e12, "table:H100")
    assert peak_from_table("NVIDIA H100 PCIe", torch.bfloat16, CUDA_PEAK_FLOPS)[0] == 756e12
    assert peak_from_table("NVIDIA A100-SXM4-80GB", torch.float16, CUDA_PEAK_FLOPS)[0] == 312e12
    assert peak_from_table("Tesla V100", torch.bfloat16, CUDA_PEAK_FLOPS) == (None, "unknown")
    assert peak_from_table("Mystery GPU", torch.bfloat16, CUDA_PEAK_FLOPS) == (None, "unknown")


def test_cpu_backend_and_overrides(monkeypatch):
    adapter = get_backend("cpu")
    assert isinstance(adapter, CpuBackend) and adapter.dist_backend == "gloo"
    assert adapter.resolve_dtype("auto") == torch.float32 and adapter.memory_in_use() > 0
    flops, source = adapter.peak_flops(torch.float32)
    assert flops > 0 and source.startswith("best of") and source.endswith("thread" if torch.get_num_threads() == 1 else "threads")
    assert CpuBackend(peak_tflops=2.0).peak_flops(torch.float32) == (2e12, "override")
    with adapter.autocast(torch.bfloat16):
        assert (torch.randn(4, 4) @ torch.randn(4, 4)).dtype == torch.bfloat16
    with pytest.raises(UnknownNameError, match="Did you mean: cuda"):
        get_backend("cuda2")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="no CUDA device"):
        get_backend("cuda")


def test_backend_override_reaches_the_trainer(tmp_path):
    from effzoo.train import TrainConfig, train

    with pytest.raises(ConfigError, match="unknown backend"):
        train(TrainConfig(steps=1, backend="tpu", out=str(tmp_path / "x")))


@pytest.mark.skipif(CHILD, reason="the parent of the fake-NPU tests")
def test_fake_npu_tests_in_a_clean_process():
    env = {**os.environ, "EFFZOO_FAKE_NPU_CHILD": "1"}
    result = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore",
                             __file__, "-k", "npu"], capture_output=True, text=True, env=env, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failed" not in result.stdout
