"""Every registered variant's mixer block (layer 0: attention block, Mamba, RWKV, Pythia's parallel
block, MoE block ...), forward and forward+backward at several sequence lengths.

Grouped as ``mixer-T{length}`` with ids ``{variant}-{mode}``, so

    pytest benchmarks/test_bench_mixers.py --benchmark-only --benchmark-autosave
    pytest benchmarks/test_bench_mixers.py --benchmark-only --benchmark-compare

tracks regressions of every block. On CUDA the blocks have the 0.5B shapes in bf16 (override with
EFFZOO_BENCH_SIZE / EFFZOO_BENCH_LENGTHS); on CPU tiny shapes in float32, so the file never fails there.
"""
from __future__ import annotations

import os

import pytest
import torch

import effzoo
from effzoo.bench.timing import synchronize
from effzoo.interfaces import MixContext

CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if CUDA else "cpu")
DTYPE = torch.bfloat16 if CUDA else torch.float32
SIZE = os.environ.get("EFFZOO_BENCH_SIZE", "0.5B" if CUDA else "tiny")
LENGTHS = [int(x) for x in os.environ.get("EFFZOO_BENCH_LENGTHS", "2048,8192,16384" if CUDA else "64,256").split(",")]
ROUNDS = dict(rounds=10, warmup_rounds=2, iterations=1) if CUDA else dict(rounds=2, warmup_rounds=1, iterations=1)
VARIANTS = [v.name for v in effzoo.list_variants(specs=True) if not v.capabilities.needs_cuda or CUDA]


def _block(variant: str, length: int):  # type: ignore[no-untyped-def]
    """Layer 0 of the variant, its width, and a MixContext factory for ``length`` tokens."""
    model = effzoo.build(variant, SIZE, device=DEVICE, n_layers=1, max_seq_len=max(length, 2048)).to(DTYPE)
    positions = torch.arange(length, device=DEVICE)
    return model.blocks[0], model.config.d_model, lambda: MixContext(positions=positions, position=model.position)


@pytest.mark.parametrize("mode", ["fwd", "fwd_bwd"])
@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("length", LENGTHS)
def test_mixer_block(benchmark, variant: str, length: int, mode: str) -> None:
    benchmark.group = f"mixer-T{length}"
    try:
        block, width, make_ctx = _block(variant, length)
    except effzoo.ConfigError as exc:
        pytest.skip(f"{variant} cannot be built at {SIZE}/T={length}: {exc}")
    x = torch.randn(1, length, width, device=DEVICE, dtype=DTYPE, requires_grad=mode == "fwd_bwd")

    def run() -> None:
        if mode == "fwd":
            with torch.no_grad():
                block(x, make_ctx())
        else:
            block.zero_grad(set_to_none=True)
            out, _ = block(x, make_ctx())
            out.float().square().mean().backward()
        synchronize(DEVICE)

    benchmark.pedantic(run, **ROUNDS)
    benchmark.extra_info.update(variant=variant, size=SIZE, tokens=length, dtype=str(DTYPE),
                                device=torch.cuda.get_device_name() if CUDA else "cpu",
                                tokens_per_s=length / benchmark.stats.stats.median)

