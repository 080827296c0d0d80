"""``train_step`` and ``parallelize`` as functions: one host readback per step, after the update when the
optimizer can skip on the device; non-finite steps skipped on either path; compile on CUDA by default."""
from __future__ import annotations

import itertools

import pytest
import torch

import effzoo
from effzoo.backends import get_backend
from effzoo.train import TrainConfig
from effzoo.train.distributed import DistInfo
from effzoo.train.optim import build_optimizer
from effzoo.train.parallel import parallelize
from effzoo.train.step import StepSettings, device_skips, train_step

MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64}
pytestmark = pytest.mark.usefixtures("one_thread")


def _setup(fused: bool):
    adapter = get_backend("cpu", 0, None)
    plan = parallelize(effzoo.build("gqa", size="tiny", **MODEL), DistInfo(), adapter.device)
    optimizer = build_optimizer(plan.model, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, eps=1e-8,
                                device_type="cuda" if fused else "cpu")  # "cuda" only picks fused=True
    ids = torch.randint(0, 257, (2, 17))
    return adapter, plan, optimizer, itertools.repeat((ids[:, :-1], ids[:, 1:]))


def _in_optimizer(event) -> bool:
    while event is not None:
        if event.name.startswith("Optimizer.step#"):
            return True
        event = event.cpu_parent
    return False


def _weights(model):
    return [p.detach().clone() for p in model.parameters()]


@pytest.mark.parametrize("fused", [False, True], ids=["host-decides", "device-skips"])
def test_a_non_finite_step_is_skipped_and_a_finite_one_updates(fused):
    adapter, plan, optimizer, batches = _setup(fused)
    assert device_skips(optimizer, None) is fused
    before = _weights(plan.model)
    first = plan.model.embed.weight
    hook = first.register_hook(lambda grad: grad * float("nan"))
    result = train_step(plan, optimizer, None, batches, adapter, DistInfo(), StepSettings())
    assert not result.stepped and result.loss == result.loss  # finite loss, NaN gradient norm
    assert all(torch.equal(a, b) for a, b in zip(before, _weights(plan.model)))
    steps = [int(s["step"]) for s in optimizer.state.values()] if optimizer.state else [0]
    assert set(steps) == {0}
    hook.remove()
    result = train_step(plan, optimizer, None, batches, adapter, DistInfo(), StepSettings())
    assert result.stepped and result.grad_norm > 0
    assert not torch.equal(before[0], first.detach())
    assert {int(s["step"]) for s in optimizer.state.values()} == {1}


@pytest.mark.parametrize("fused", [False, True], ids=["host-decides", "device-skips"])
def test_one_host_readback_per_step_and_after_the_update_when_the_device_skips(fused, monkeypatch):
    adapter, plan, optimizer, batches = _setup(fused)
    train_step(plan, optimizer, None, batches, adapter, DistInfo(), StepSettings())  # warm up lazy state
    order, step, tolist = [], optimizer.step, torch.Tensor.tolist
    monkeypatch.setattr(optimizer, "step", lambda *a, **k: (order.append("update"), step(*a, **k))[1])
    monkeypatch.setattr(torch.Tensor, "tolist", lambda self: (order.append("readback"), tolist(self))[1])
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        train_step(plan, optimizer, None, batches, adapter, DistInfo(), StepSettings(grad_accum=2))
    assert order == (["update", "readback"] if fused else ["readback", "update"])
    # no other readback in the step: the CPU optimizer kernels read their step counters with item() (host
    # memory, and absent from the CUDA kernels), nothing else may
    syncs = [e for e in prof.events() if e.name == "aten::_local_scalar_dense" and not _in_optimizer(e)]
    assert syncs == []


def test_compile_is_the_default_on_cuda_only():
    class Device:
        def __init__(self, kind):
            self.device, self.compile_supported = torch.device(kind), True

    assert TrainConfig().compile_on(Device("cuda")) and not TrainConfig().compile_on(Device("cpu"))
    assert not TrainConfig(compile=False).compile_on(Device("cuda"))  # --no-compile
    assert TrainConfig(compile=True).compile_on(Device("cpu"))


def test_parallelize_applies_checkpointing_and_compile_per_block():
    model = effzoo.build("gqa", size="tiny", **MODEL)
    plan = parallelize(model, DistInfo(), torch.device("cpu"), compile=True, activation_checkpointing=True)
    assert plan.model is model and plan.compiled and not (plan.ddp or plan.fsdp)
    assert model.gradient_checkpointing
    assert all(block._compiled_call_impl is not None for block in model.blocks)
