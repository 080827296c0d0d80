"""Host synchronisations of a training step, counted with the profiler on the CPU, for every registered
variant (plugins included): forward + backward reads no device value on the host, and a whole step
(forward, backward, gradient clipping, the loss / grad-norm readback, AdamW) at most once.

On a GPU each such read (``aten::_local_scalar_dense``: ``.item()``, ``int(t)``, ``bool(t)``; or a
data-dependent shape such as ``nonzero``) drains the queue and stalls the step. The CPU runs the code
paths CUDA selects where they differ only in the kernel: attention through SDPA (NSA's block-sparse
patterns, as FlexAttention gets them), MoE experts through ``grouped_mm`` (CUDA's bf16 choice; the
padded ``bmm`` fallback reads its block size once per layer, see effzoo_plugins/moe/dispatch.py), and
AdamW fused (the trainer's choice on CUDA: the step counters stay on the device).
"""
from __future__ import annotations

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

import effzoo
from effzoo.model.fast_decode import HOST_SYNC_OPS

VARIANTS = effzoo.REGISTRY.ensure_loaded().names("variant")
CUDA_KERNELS = ("grouped_mm", "sdpa")  # MoE experts' grouped GEMM (attention: auto = sdpa here), else sdpa


def cuda_path_overrides(variant: str) -> dict[str, str]:
    """``kernel=`` the first of ``CUDA_KERNELS`` the variant accepts (grouped_mm only where an MoE FFN is)."""
    for kernel in CUDA_KERNELS:
        try:
            effzoo.make_config(variant, "tiny", kernel=kernel)
        except effzoo.ConfigError:
            continue
        return {"kernel": kernel}
    return {}


# Kernels whose CPU implementation reads its index tensors with item() where the CUDA kernel reads them on
# the device: fused AdamW's step counters, grouped_mm's group offsets (CUTLASS on SM90). Not counted.
DEVICE_SIDE_ON_CUDA = frozenset({"aten::_fused_adamw_", "aten::_grouped_mm"})


def _inside(event, names: frozenset[str]) -> bool:  # type: ignore[no-untyped-def]
    while event is not None:
        if event.name in names:
            return True
        event = event.cpu_parent
    return False


def host_syncs(fn) -> dict[str, int]:  # type: ignore[no-untyped-def]
    """Outermost ATen ops of ``fn()`` that read device memory on the host (``item`` and the
    ``_local_scalar_dense`` under it count once), by name, from a CPU profile."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    counts: dict[str, int] = {}
    for event in prof.events():
        if (event.name in HOST_SYNC_OPS and not _inside(event.cpu_parent, HOST_SYNC_OPS)
                and not _inside(event, DEVICE_SIDE_ON_CUDA)):
            counts[event.name] = counts.get(event.name, 0) + 1
    return counts


def _model_and_step(variant: str):  # type: ignore[no-untyped-def]
    torch.manual_seed(0)
    model = effzoo.build(variant, "tiny", dtype="float32", max_seq_len=256, **cuda_path_overrides(variant))
    if variant == "moe":
        assert model.config.kernel == "grouped_mm"
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    ids = torch.randint(0, model.config.vocab_size, (2, 129))

    def forward_backward() -> torch.Tensor:
        loss = model(ids[:, :-1], targets=ids[:, 1:], return_logits=False).loss
        loss.backward()
        return loss

    def train_step() -> list[float]:
        loss = forward_backward()
        norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0, foreach=True)
        readback = torch.stack([loss.detach().float(), norm.float()]).tolist()  # the one allowed read
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return readback

    return forward_backward, train_step


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_step_reads_the_device_at_most_once(variant, one_thread):
    forward_backward, train_step = _model_and_step(variant)
    train_step()  # first step: lazy state (optimizer moments, cached masks) is created outside the count
    assert host_syncs(forward_backward) == {}, f"{variant}: forward+backward reads device values on the host"
    syncs = host_syncs(train_step)
    assert sum(syncs.values()) <= 1, f"{variant}: {syncs} host reads in one training step"


def test_the_counter_sees_a_host_sync():
    x = torch.randn(8)
    assert host_syncs(lambda: int(x.argmax())) == {"aten::item": 1}
    assert host_syncs(lambda: bool(x.sum() > 0)) == {"aten::is_nonzero": 1}
    assert host_syncs(lambda: x.nonzero()).get("aten::nonzero") == 1
