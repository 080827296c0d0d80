"""The EfficientLLM metrics: time-weighted sampling, energy from counters or sampled power, the
summary's consistency across ranks, the progress line, and the chunked linear + cross-entropy."""
from __future__ import annotations

import math
import time

import pytest
import torch
import torch.nn.functional as F

import effzoo
from effzoo.backends.base import BackendAdapter, PowerMeter, PowerReading
from effzoo.backends.cpu import CpuBackend
from effzoo.metrics import DeviceSampler, RunCounters, SampleSummary, mfu, progress_line, summarize
from effzoo.ops.linear_cross_entropy import linear_cross_entropy


class FakeAdapter(BackendAdapter):
    name = "fake"

    def __init__(self, memory: list[int], utilization: float = 0.5) -> None:
        super().__init__()
        self.memory, self.util = list(memory), utilization

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def memory_in_use(self) -> int:
        return self.memory.pop(0) if len(self.memory) > 1 else self.memory[0]

    def utilization(self) -> float | None:
        return self.util


class CounterMeter(PowerMeter):
    """An energy counter rising 300 J per second of wall time, plus a noisy power reading."""

    source = "fake"

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def read(self) -> PowerReading:
        return PowerReading(power_w=999.0, energy_j=1e6 + 300.0 * (time.perf_counter() - self.start))


class PowerOnlyMeter(PowerMeter):
    source = "fake"

    def read(self) -> PowerReading:
        return PowerReading(power_w=250.0)


def test_energy_counter_gives_aec():
    sampler = DeviceSampler(FakeAdapter([1 << 30]), interval=0.01, meter=CounterMeter()).start()
    time.sleep(0.15)
    summary = sampler.stop()
    assert summary.energy_source == "fake energy counter"
    assert summary.power_avg_w == pytest.approx(300.0, rel=0.02)  # the counter wins over sampled power
    assert summary.energy_j == pytest.approx(300.0 * summary.duration_s, rel=0.02)


def test_sampled_power_is_time_averaged_when_there_is_no_counter():
    sampler = DeviceSampler(FakeAdapter([2 << 30]), interval=0.01, meter=PowerOnlyMeter()).start()
    time.sleep(0.1)
    summary = sampler.stop()
    assert summary.energy_source == "fake sampled power"
    assert summary.power_avg_w == pytest.approx(250.0, rel=0.05)
    assert summary.memory_avg_bytes == 2 << 30 and summary.utilization_avg == 0.5


def test_memory_average_is_weighted_by_time():
    adapter = FakeAdapter([0])
    sampler = DeviceSampler(adapter, interval=3600, meter=PowerOnlyMeter())
    sampler.start()
    time.sleep(0.03)
    adapter.memory = [10]
    sampler.sample()  # stands for the 0.03 s before it
    time.sleep(0.09)
    adapter.memory = [2]
    summary = sampler.stop()  # the last sample stands for the 0.09 s before it
    assert summary.memory_avg_bytes == pytest.approx((10 * 0.03 + 2 * 0.09) / 0.12, rel=0.15)
    assert summary.memory_max_bytes == 10


def test_sampler_costs_under_one_percent_at_the_default_interval():
    from effzoo.train import TrainConfig

    sampler = DeviceSampler(CpuBackend(), interval=0.02).start()
    deadline = time.monotonic() + 30  # a loaded machine wakes the thread late: wait for samples, not a time
    while sampler._samples < 5 and time.monotonic() < deadline:
        time.sleep(0.02)
    summary = sampler.stop()
    assert summary.samples >= 5
    per_sample = summary.overhead_s / summary.samples
    assert per_sample / TrainConfig().sample_interval < 0.01


def _sample(memory_gb: float, util: float, power: float, duration: float = 10.0) -> SampleSummary:
    return SampleSummary(duration_s=duration, samples=10, memory_avg_bytes=memory_gb * 1e9, memory_max_bytes=None,
                         utilization_avg=util, power_avg_w=power, energy_j=power * duration,
                         energy_source="nvml-energy energy counter", overhead_s=0.001)


def test_summary_is_consistent_across_ranks():
    counters = RunCounters()
    for i in range(5):
        counters.add_step(0.5, tokens=8192, samples=4, comm_s=0.1, timed=i > 0)
    counters.val_loss = 2.0
    world = 4
    m = summarize(counters=counters, samples=[_sample(40, 0.9, 600), _sample(44, 0.7, 700)] * 2,
                  peak_memory=[int(50e9)] * world, run={"variant": "gqa"}, params=1_000_000,
                  flops_per_token=6e6, peak_flops=1e12, peak_flops_source="override", world_size=world,
                  wall_s=3600.0, previous_wall_s=1800.0)
    assert m["amu_gb"] == pytest.approx(42.0) and m["amu_gb_per_device"] == pytest.approx([40, 44, 40, 44])
    assert m["aec_w"] == pytest.approx(650.0) and m["energy_j"] == pytest.approx(2 * (6000 + 7000))
    assert m["pcu"] == pytest.approx(0.8)
    assert m["tokens_per_s"] == pytest.approx(4 * 8192 / 2.0)
    assert m["tt"] * m["params"] * m["train_time_s"] == pytest.approx(m["timed_tokens"])
    assert m["st"] * m["params"] * m["train_time_s"] == pytest.approx(16)
    assert m["al_s"] == pytest.approx(0.5) and m["al_comm_s"] == pytest.approx(0.1)
    assert m["al_compute_s"] == pytest.approx(0.4)
    assert m["gpu_hours"] == pytest.approx(1.5 * world)  # wall over both sessions x devices
    assert m["mfu"] == pytest.approx(m["tokens_per_s"] * 6e6 / (1e12 * world))
    assert m["ppl"] == pytest.approx(math.exp(2.0)) and m["peak_memory_gb"] == pytest.approx(50.0)


def test_mfu_and_progress_line():
    assert mfu(1000.0, 6e9, 989e12, 1) == pytest.approx(6e12 / 989e12)
    assert mfu(1000.0, 6e9, None, 1) is None
    record = {"step": 12, "loss": 5.12341, "lr": 1e-4, "dt_s": 0.0452, "tokens_per_s": 12345.6, "mfu": 0.0321}
    line = progress_line(record, 20, 65)
    assert line == "step 12/20 | loss 5.1234 | lr 1.00e-04 | dt 45.2ms | tok/s 12,346 | mfu 3.21% | eta 0:01:05"
    assert "mfu -" in progress_line({**record, "mfu": None}, 20, 0)


@pytest.mark.parametrize("rows", [5, 64, 1000])
def test_linear_cross_entropy_matches_the_plain_loss(rows):
    torch.manual_seed(0)
    hidden = torch.randn(37, 16, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(50, 16, dtype=torch.float64, requires_grad=True)
    targets = torch.randint(0, 50, (37,))
    targets[[3, 10, 11]] = -100
    want = F.cross_entropy(hidden @ weight.T, targets, ignore_index=-100)
    want.backward()
    expected = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    got = linear_cross_entropy(hidden, weight, targets, rows=rows)
    (got * 3.0).backward()  # the upstream gradient is applied in backward
    torch.testing.assert_close(got.double(), want)
    torch.testing.assert_close(hidden.grad, 3.0 * expected[0])
    torch.testing.assert_close(weight.grad, 3.0 * expected[1])


def test_linear_cross_entropy_under_bf16_autocast():
    torch.manual_seed(0)
    hidden = torch.randn(64, 32, requires_grad=True)
    weight = torch.randn(300, 32, requires_grad=True)
    targets = torch.randint(0, 300, (64,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        want = F.cross_entropy(F.linear(hidden, weight).float(), targets)
    want.backward()
    expected = (hidden.grad.clone(), weight.grad.clone())
    hidden.grad = weight.grad = None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        got = linear_cross_entropy(hidden, weight, targets, rows=16)
    got.backward()
    assert got.dtype == torch.float32 and weight.grad.dtype == torch.float32
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(hidden.grad, expected[0], rtol=2e-2, atol=2e-3)
    torch.testing.assert_close(weight.grad, expected[1], rtol=2e-2, atol=2e-3)


def test_model_fused_loss_matches_logits_loss():
    torch.manual_seed(0)
    model = effzoo.build("gqa", size="tiny", n_layers=2)
    ids = torch.randint(0, 512, (2, 16))
    targets = ids.roll(-1, 1)
    targets[:, -1] = -100
    plain = model(ids, targets)
    plain.loss.backward()
    grads = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    fused = model(ids, targets, return_logits=False)
    assert fused.logits is None
    fused.loss.backward()
    torch.testing.assert_close(fused.loss, plain.loss, rtol=1e-5, atol=1e-6)
    for a, b in zip(grads, model.parameters()):
        torch.testing.assert_close(b.grad, a, rtol=1e-4, atol=1e-6)


def _fp16_loss_and_grads(hidden, weight, targets, rows, scale):
    """Loss and unscaled gradients of the chunked loss under fp16 autocast with a GradScaler-like ``scale``."""
    hidden, weight = hidden.clone().requires_grad_(), weight.clone().requires_grad_()
    with torch.autocast("cpu", dtype=torch.float16):
        loss = linear_cross_entropy(hidden, weight, targets, rows=rows)
    (loss * scale).backward()
    return loss, hidden.grad / scale, weight.grad / scale


def test_linear_cross_entropy_fp16_gradients_do_not_underflow():
    """Softmax gradients divided by the token count are below fp16's range; they must survive the
    fp16 matmuls (the loss scale is only known in backward)."""
    torch.manual_seed(0)
    hidden, weight = torch.randn(8192, 8) * 0.1, torch.randn(512, 8) * 0.1
    targets = torch.randint(0, 512, (8192,))
    hidden64, weight64 = hidden.double().requires_grad_(), weight.double().requires_grad_()
    F.cross_entropy(hidden64 @ weight64.T, targets).backward()
    loss, grad_hidden, grad_weight = _fp16_loss_and_grads(hidden, weight, targets, rows=2048, scale=2.0**16)
    assert grad_hidden.dtype == torch.float32 and torch.isfinite(loss)
    torch.testing.assert_close(grad_hidden.double(), hidden64.grad, rtol=2e-2, atol=1e-7)
    torch.testing.assert_close(grad_weight.double(), weight64.grad, rtol=2e-2, atol=1e-5)


def test_linear_cross_entropy_fp16_weight_gradient_does_not_overflow():
    """One target for every row and large activations: a column of g.T @ h would exceed fp16's range."""
    torch.manual_seed(0)
    hidden, weight = torch.full((4096, 4), 40.0), torch.zeros(64, 4)
    targets = torch.zeros(4096, dtype=torch.long)
    loss, grad_hidden, grad_weight = _fp16_loss_and_grads(hidden, weight, targets, rows=4096, scale=1.0)
    want = torch.full((4,), -40.0 * 63 / 64)  # (p - 1) · h with p = 1/64, averaged over rows
    assert torch.isfinite(grad_weight).all() and torch.isfinite(grad_hidden).all()
    torch.testing.assert_close(grad_weight[0], want, rtol=1e-3, atol=1e-3)
