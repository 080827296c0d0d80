"""The fused head + loss against the plain one (``F.linear`` + ``F.cross_entropy`` over the full logits),
forward + backward, measured in the same run.

Goal (issue 17): ``linear_cross_entropy`` (its default policy) is no slower than the plain head + loss
where memory is not the limit, and on CUDA at the 0.5B shape (8 x 2048 tokens, d 896, vocabulary 151,936,
bf16 autocast: 10 GB of fp32 logits) it chunks and saves that memory. The forced chunked path is timed too,
so the price of chunking is visible. CPU: 512 tokens, d 128, vocabulary 32,000, fp32.

    pytest benchmarks/test_bench_fused_loss.py --benchmark-only --benchmark-group-by=group -s
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effzoo.bench.speed import fwd_bwd
from effzoo.bench.timing import timed
from effzoo.ops.linear_cross_entropy import chunk_rows, linear_cross_entropy

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
TOKENS, WIDTH, VOCAB = (8 * 2048, 896, 151_936) if ON_GPU else (512, 128, 32_000)
AMP = torch.bfloat16 if ON_GPU else None
ROUNDS = dict(rounds=10, warmup_rounds=2, iterations=1) if ON_GPU else dict(rounds=3, warmup_rounds=1, iterations=1)


def _inputs() -> list[torch.Tensor]:
    hidden = torch.randn(TOKENS, WIDTH, device=DEVICE, requires_grad=True)
    weight = (torch.randn(VOCAB, WIDTH, device=DEVICE) * 0.02).requires_grad_()
    return [hidden, weight]


TARGETS = torch.randint(0, VOCAB, (TOKENS,), device=DEVICE)


def _loss(path: str):  # type: ignore[no-untyped-def]
    def loss(hidden: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        with torch.autocast(DEVICE.type, dtype=AMP, enabled=AMP is not None):
            if path == "plain":
                return F.cross_entropy(F.linear(hidden, weight).float(), TARGETS)
            if path == "chunked":
                return linear_cross_entropy(hidden, weight, TARGETS, rows=chunk_rows(VOCAB))
            return linear_cross_entropy(hidden, weight, TARGETS)

    return loss


@pytest.mark.benchmark(group="fused-loss")
@pytest.mark.parametrize("path", ["plain", "fused", "chunked"])
def test_head_and_loss(benchmark, path: str) -> None:
    if path == "plain" and ON_GPU and TOKENS * VOCAB * 4 > 0.5 * torch.cuda.get_device_properties(0).total_memory:
        pytest.skip("the full logits do not fit")
    benchmark.pedantic(fwd_bwd(_inputs(), _loss(path)), **ROUNDS)
    benchmark.extra_info.update(tokens=TOKENS, width=WIDTH, vocab=VOCAB, device=str(DEVICE),
                                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if ON_GPU else None)


@pytest.mark.benchmark(group="fused-loss-ratio")
def test_fused_is_no_slower_than_plain(benchmark) -> None:
    """plain / fused time ratio (>= 1 means the fused default is no slower), same run, same inputs."""
    inputs = _inputs()
    repeats = dict(warmup=ROUNDS["warmup_rounds"], repeat=ROUNDS["rounds"])
    plain_s = timed(fwd_bwd(inputs, _loss("plain")), DEVICE, **repeats)
    chunked_s = timed(fwd_bwd(inputs, _loss("chunked")), DEVICE, **repeats)
    benchmark.pedantic(fwd_bwd(inputs, _loss("fused")), **ROUNDS)
    fused_s = benchmark.stats.stats.median
    benchmark.extra_info.update(plain_ms=plain_s * 1e3, fused_ms=fused_s * 1e3, chunked_ms=chunked_s * 1e3,
                                ratio=plain_s / fused_s, chunked_ratio=plain_s / chunked_s)
    print(f"\nhead+loss {TOKENS}x{WIDTH}->{VOCAB}: plain {plain_s * 1e3:.1f} ms, fused {fused_s * 1e3:.1f} ms "
          f"({plain_s / fused_s:.2f}x), forced chunks {chunked_s * 1e3:.1f} ms ({plain_s / chunked_s:.2f}x)")
