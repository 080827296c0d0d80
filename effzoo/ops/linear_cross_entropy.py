"""Output head + cross-entropy without materialising the full logits.

``linear_cross_entropy(hidden, weight, targets)`` equals
``F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)`` (mean over kept tokens)
but walks the tokens in chunks: each chunk's logits are computed, turned into the loss and its
gradients (softmax − one-hot) right away, and freed. The forward pass therefore stores only the
gradients of ``hidden`` and ``weight`` (no recomputation in backward), and peak memory holds one
chunk of logits instead of tokens × vocabulary floats (5 GB at batch 4 × 2048 × 151,936 in fp32).
Matmuls run in the autocast dtype when autocast is on, the softmax in fp32.

Chunking pays only when memory is the limit: when all the fp32 logits fit in ``budget_bytes``
(``LOGITS_BUDGET``, 512 MB) the plain head + ``F.cross_entropy`` runs instead (same function, no slower:
one large matmul, no per-chunk work; tiny and small models on CPU; not for fp16, whose gradients need
the chunked path's deferred 1/count), and otherwise chunks hold about
``budget_bytes`` of logits each, so the memory saved is everything above one budget.
"""
from __future__ import annotations

import torch
from torch import Tensor

IGNORE_INDEX = -100
CHUNK_ELEMENTS = 1 << 27  # fp32 logits per chunk: 512 MB
LOGITS_BUDGET = 4 * CHUNK_ELEMENTS  # bytes of fp32 logits below which the unfused head + loss runs


def chunk_rows(vocab_size: int, elements: int = CHUNK_ELEMENTS) -> int:
    """Tokens per chunk so a chunk of fp32 logits holds about ``elements`` values (multiple of 128)."""
    return max(128, (elements // vocab_size) // 128 * 128)


def uses_chunks(tokens: int, vocab_size: int, budget_bytes: int = LOGITS_BUDGET) -> bool:
    """Whether the fp32 logits of ``tokens`` rows exceed ``budget_bytes`` (then chunking saves memory)."""
    return 4 * tokens * vocab_size > budget_bytes


def _unfused(hidden: Tensor, weight: Tensor, targets: Tensor, compute_dtype: torch.dtype) -> Tensor:
    """The plain head + loss in the same precision as the chunked path: matmul in ``compute_dtype``,
    softmax in fp32 at least."""
    acc = torch.promote_types(compute_dtype, torch.float32)
    with torch.autocast(hidden.device.type, enabled=False):
        logits = (hidden.to(compute_dtype) @ weight.to(compute_dtype).T).to(acc)
    return torch.nn.functional.cross_entropy(logits, targets, ignore_index=IGNORE_INDEX)


def _overflow_guard(h: Tensor, rows: int, dtype: torch.dtype) -> Tensor | None:
    """For fp16, a device-side factor <= 1 keeping ``rows`` · max|h| (the bound of a column of
    g.T @ h with |g| <= 1) within half of fp16's range; None for wider-range dtypes. No host sync."""
    if dtype != torch.float16:
        return None
    limit = torch.finfo(torch.float16).max / 2
    return (limit / (h.abs().amax().float() * rows).clamp(min=1e-30)).clamp(max=1.0)


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden: Tensor, weight: Tensor, targets: Tensor, rows: int,  # type: ignore[override]
                compute_dtype: torch.dtype) -> Tensor:
        need_hidden, need_weight = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        acc = torch.promote_types(compute_dtype, torch.float32)  # softmax and sums: fp32 at least
        valid = targets != IGNORE_INDEX
        count = valid.sum().clamp(min=1).to(acc)
        safe_targets = targets.clamp(min=0)
        total = torch.zeros((), dtype=acc, device=hidden.device)
        # Gradients stay in fp32 until backward applies grad_output (an fp16 loss scale, say); the
        # 1/count of the mean is applied after the matmuls: probs/count underflows in fp16.
        grad_hidden = torch.empty(hidden.shape, dtype=acc, device=hidden.device) if need_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=acc, device=weight.device) if need_weight else None
        w = weight.to(compute_dtype)
        with torch.autocast(hidden.device.type, enabled=False):
            for start in range(0, hidden.shape[0], rows):
                stop = min(start + rows, hidden.shape[0])
                h = hidden[start:stop].to(compute_dtype)
                t = safe_targets[start:stop, None]
                keep = valid[start:stop]
                logits = (h @ w.T).to(acc)
                lse = torch.logsumexp(logits, dim=-1)
                total += ((lse - logits.gather(1, t)[:, 0]) * keep).sum()
                if not (need_hidden or need_weight):
                    continue
                probs = logits.sub_(lse[:, None]).exp_()  # softmax, in place of the logits
                probs.scatter_add_(1, t, torch.full_like(t, -1, dtype=probs.dtype))
                probs.mul_(keep[:, None])  # |g| <= 1: each row of g @ w stays within 2·max|w|
                g = probs.to(compute_dtype)
                if need_hidden:
                    grad_hidden[start:stop] = (g @ w).to(acc)
                if need_weight:
                    # a column of g.T @ h sums up to (stop - start) rows: shrink g where fp16 could overflow
                    shrink = _overflow_guard(h, stop - start, compute_dtype)
                    if shrink is None:
                        grad_weight += (g.T @ h).to(acc)
                    else:
                        grad_weight += ((probs * shrink).to(compute_dtype).T @ h).to(acc) / shrink
        if grad_hidden is not None:
            grad_hidden /= count
        if grad_weight is not None:
            grad_weight /= count
        ctx.save_for_backward(*(t for t in (grad_hidden, grad_weight) if t is not None))
        ctx.hidden_dtype, ctx.weight_dtype = hidden.dtype, weight.dtype
        return total / count

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # type: ignore[override]
        saved = list(ctx.saved_tensors)
        grad_hidden = (saved.pop(0) * grad_output).to(ctx.hidden_dtype) if ctx.needs_input_grad[0] else None
        grad_weight = (saved.pop(0) * grad_output).to(ctx.weight_dtype) if ctx.needs_input_grad[1] else None
        return grad_hidden, grad_weight, None, None, None


def linear_cross_entropy(hidden: Tensor, weight: Tensor, targets: Tensor, rows: int | None = None,
                         budget_bytes: int = LOGITS_BUDGET) -> Tensor:
    """Mean cross-entropy of ``hidden`` (N, d) @ ``weight`` (V, d).T against ``targets`` (N,).

    ``rows`` forces the chunked path with that many tokens per chunk; by default the plain path runs
    when the fp32 logits fit in ``budget_bytes`` (not in fp16), else chunks of about ``budget_bytes``."""
    device_type = hidden.device.type
    autocast_on = torch.is_autocast_enabled(device_type)
    compute_dtype = torch.get_autocast_dtype(device_type) if autocast_on else hidden.dtype
    vocab = weight.shape[0]
    if rows is None:
        # fp16 always chunks: its gradients need the deferred 1/count and the overflow guard below
        if compute_dtype != torch.float16 and not uses_chunks(hidden.shape[0], vocab, budget_bytes):
            return _unfused(hidden, weight, targets, compute_dtype)
        rows = chunk_rows(vocab, budget_bytes // 4)
    return _LinearCrossEntropy.apply(hidden, weight, targets, rows, compute_dtype)
