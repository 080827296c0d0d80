"""RWKV-7: the wkv recurrence and the whole time-mix, forward+backward, against flash-linear-attention's
``chunk_rwkv7`` and dense causal attention; RWKV vs GQA whole-model training steps.

Goals (issue 4, H100, bf16): the RWKV-7 mixer fwd+bwd at 2k / 8k / 16k / 32k tokens at least as fast as
the best public kernel that runs correctly here (fla's ``chunk_rwkv7``, B=1, 16 heads, K=64), and faster
than dense causal SDPA at the 0.5B attention shape (14 heads, D=64) from 32k tokens up. Whole model:
0.5B RWKV training tokens/s within 1.2x of GQA 0.5B at seq 2048 and ahead at 8192. Timings and
``tokens_per_s`` are recorded in ``extra_info``; nothing is asserted. On CPU everything runs at tiny shapes.

    pytest benchmarks/test_bench_rwkv.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,rounds
"""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import effzoo
from effzoo.bench.speed import dense_causal_attention, fwd_bwd
from effzoo_plugins.rwkv import kernels

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
CUDA = DEVICE.type == "cuda"
DTYPE = torch.bfloat16 if CUDA else torch.float32
LENGTHS = [2048, 8192, 16384, 32768] if CUDA else [256]
HEADS, HEAD_DIM = (16, 64) if CUDA else (2, 16)  # the shape of the fla measurement in the issue
ATTN_HEADS, ATTN_DIM = (14, 64) if CUDA else (2, 16)  # Qwen2.5 0.5B attention shape
ROUNDS = dict(rounds=10, warmup_rounds=3, iterations=1) if CUDA else dict(rounds=3, warmup_rounds=1, iterations=1)


def _record(benchmark, length: int, **extra) -> None:  # type: ignore[no-untyped-def]
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if CUDA else "cpu", tokens=length,
                                dtype=str(DTYPE), **extra)


def _wkv_inputs(length: int) -> list[torch.Tensor]:
    """r, log w, k, v, a, b as the RWKV-7 block produces them (B=1)."""
    g = torch.Generator().manual_seed(0)
    shape = (1, length, HEADS, HEAD_DIM)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = kernels.LOG_DECAY_BOUND * torch.sigmoid(2 * torch.randn(shape, generator=g))
    removal = F.normalize(torch.randn(shape, generator=g), dim=-1)
    iclr = torch.sigmoid(torch.randn(shape, generator=g))
    tensors = [r, log_w, k / math.sqrt(HEAD_DIM), v, -removal, removal * iclr]
    return [t.to(DEVICE, DTYPE).requires_grad_() for t in tensors]


def _impls() -> list:
    no_cuda = None if CUDA else "needs CUDA (the Triton interpreter is for correctness, not timing)"
    fla_why = None if kernels.has_fla() else kernels.FLA_MISSING
    return [
        pytest.param("torch", id="effzoo-torch"),
        pytest.param("triton", id="effzoo-triton", marks=pytest.mark.skipif(
            no_cuda is not None or not kernels.has_triton(), reason=str(no_cuda or "triton is not installed"))),
        pytest.param("fla", id="fla-chunk_rwkv7", marks=pytest.mark.skipif(
            (no_cuda or fla_why) is not None, reason=str(no_cuda or fla_why))),
    ]


@pytest.mark.benchmark(group="rwkv7-wkv-fwd-bwd")
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("impl", _impls())
def test_wkv_fwd_bwd(benchmark, impl: str, length: int) -> None:
    """The recurrence alone (B=1, 16 heads, K=64 on CUDA), as fla's ``chunk_rwkv7`` was measured."""
    step = fwd_bwd(_wkv_inputs(length), lambda *x: kernels.wkv7(*x, None, kernel=impl)[0])
    benchmark.pedantic(step, **ROUNDS)
    _record(benchmark, length, heads=HEADS, head_dim=HEAD_DIM)


@pytest.mark.benchmark(group="rwkv7-wkv-fwd-bwd")
@pytest.mark.parametrize("length", LENGTHS)
def test_dense_causal_sdpa_fwd_bwd(benchmark, length: int) -> None:
    """The dense baseline: causal SDPA (cuDNN when available) at 14 heads, D=64."""
    g = torch.Generator().manual_seed(0)
    inputs = [torch.randn(1, ATTN_HEADS, length, ATTN_DIM, generator=g).to(DEVICE, DTYPE).requires_grad_()
              for _ in range(3)]

    benchmark.pedantic(fwd_bwd(inputs, dense_causal_attention), **ROUNDS)
    _record(benchmark, length, heads=ATTN_HEADS, head_dim=ATTN_DIM)


@pytest.mark.benchmark(group="rwkv7-time-mix-fwd-bwd")
@pytest.mark.parametrize("length", LENGTHS)
@pytest.mark.parametrize("kernel", ["auto", "torch"])
def test_time_mix_fwd_bwd(benchmark, kernel: str, length: int) -> None:
    """The whole time-mix of the 0.5B shape (d 1024, 16 heads): projections, LoRAs, wkv, norm, gate."""
    if kernel == "torch" and CUDA and length > 8192:
        pytest.skip("the PyTorch chunked form is timed up to 8k tokens on GPU")
    size = "0.5B" if CUDA else "tiny"
    model = effzoo.build("rwkv", size=size, n_layers=2, device=DEVICE, dtype=DTYPE, kernel=kernel)
    mix, d = model.blocks[1].time_mix, model.config.d_model
    x = torch.randn(1, length, d, device=DEVICE, dtype=DTYPE, requires_grad=True)
    v_first = torch.randn(1, length, d, device=DEVICE, dtype=DTYPE)
    ctx = effzoo.interfaces.MixContext(positions=torch.arange(length, device=DEVICE), position=model.position)

    def mixer(inp: torch.Tensor) -> torch.Tensor:
        ctx.carry["rwkv7_v_first"] = v_first
        return mix(inp, ctx, None, None)[0]

    benchmark.pedantic(fwd_bwd([x], mixer), **ROUNDS)
    _record(benchmark, length, d_model=d, kernel=kernel,
            resolved=kernels.resolve_kernel(kernel, DEVICE.type, length, mix.head_size, mix.head_size))
