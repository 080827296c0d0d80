"""Measurements a benchmark row needs besides training: decode throughput (IT) and a training
throughput sweep over sequence lengths."""
from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch

from ..build import build, parse_dtype
from .timing import synchronize, timed


def decode_throughput(
    model: torch.nn.Module, *, prompt_len: int = 128, new_tokens: int = 256, batch: int = 1, repeat: int = 3,
) -> float:
    """Greedy generation tokens/s (new tokens only, prefill included in the time) through the fast decoder
    (CUDA graphs where every block supports static decoding, the eager cached loop otherwise)."""
    device = next(model.parameters()).device
    vocab = model.config.vocab_size
    limit = model.config.max_seq_len
    prompt_len = min(prompt_len, max(1, limit // 4))
    new_tokens = min(new_tokens, limit - prompt_len)
    prompt = torch.randint(0, vocab, (batch, prompt_len), device=device,
                           generator=torch.Generator(device=device).manual_seed(0))
    seconds = timed(lambda: model.generate(prompt, new_tokens, fast=True), device, warmup=1, repeat=repeat)
    return batch * new_tokens / seconds


def train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, ids: torch.Tensor,
               autocast_dtype: torch.dtype | None) -> Callable[[], None]:
    """One optimizer step (forward with the chunked loss, backward, update) on ``ids`` (B, T + 1),
    synchronised with the device so a timer around it measures the whole step."""
    device = ids.device

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            loss = model(ids[:, :-1], targets=ids[:, 1:], return_logits=False).loss
        loss.backward()
        optimizer.step()
        synchronize(device)

    return step


def fwd_bwd(inputs: list[torch.Tensor], fn: Callable[..., torch.Tensor]) -> Callable[[], None]:
    """A benchmark step: ``fn(*inputs)``, a backward of its sum into fresh gradients, device synchronised."""
    device = inputs[0].device

    def step() -> None:
        for tensor in inputs:
            tensor.grad = None
        fn(*inputs).float().sum().backward()
        synchronize(device)

    return step


def training_throughput(
    variant: str, size: str, seq_lens: list[int], *, tokens_per_batch: int, device: str = "cpu",
    dtype: str | None = None, steps: int = 3, **overrides: Any,
) -> list[tuple[int, float]]:
    """(seq_len, tokens/s) of forward+backward+AdamW steps at a fixed number of tokens per batch.

    ``dtype`` is the autocast dtype on CUDA (weights stay float32); on CPU the step runs in float32.
    """
    target = torch.device(device)
    max_len = max(seq_lens)
    model = build(variant, size, device=target, max_seq_len=max(max_len, 16), **overrides)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    autocast_dtype = parse_dtype(dtype) if target.type != "cpu" else None
    results = []
    for seq_len in seq_lens:
        batch = max(1, tokens_per_batch // seq_len)
        ids = torch.randint(0, model.config.vocab_size, (batch, seq_len + 1), device=target)
        seconds = timed(train_step(model, optimizer, ids, autocast_dtype), target, warmup=1, repeat=steps)
        results.append((seq_len, batch * seq_len / seconds))
    synchronize(target)
    return results


def matmul_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, *, size: int = 1024,
                      repeats: int = 30) -> tuple[float, str]:
    """FLOP/s of the fastest of ``repeats`` square matmuls (after two warm-ups) and how it was measured.

    The best run, not the median: a shared machine only ever makes a run slower, so the best is the
    estimate of the peak that moves least between runs (MFU's denominator)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    best = float("inf")
    for index in range(repeats + 2):
        synchronize(device)
        start = time.perf_counter()
        a @ b
        synchronize(device)
        if index >= 2:
            best = min(best, time.perf_counter() - start)
    name = str(dtype).removeprefix("torch.")
    return 2.0 * size**3 / max(best, 1e-9), f"best of {repeats} {size}x{size} {name} matmuls"


def dense_causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """The dense baseline of the speed goals: causal SDPA on its fastest CUDA kernels (cuDNN, else flash);
    the default SDPA choice elsewhere."""
    if not q.is_cuda:
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
    from torch.nn.attention import SDPBackend, sdpa_kernel

    with sdpa_kernel([SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION]):
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
