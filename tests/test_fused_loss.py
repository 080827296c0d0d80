"""The fused head + loss (effzoo.ops.linear_cross_entropy): which path runs, and both equal to the plain
``F.cross_entropy`` over the full logits in outputs and gradients (fp32 and fp16)."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from effzoo.ops import linear_cross_entropy as lce


def _inputs(dtype: torch.dtype, tokens: int = 300, width: int = 32, vocab: int = 1000):
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(tokens, width, generator=g).to(dtype).requires_grad_()
    weight = (torch.randn(vocab, width, generator=g) * 0.1).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (tokens,), generator=g)
    targets[::5] = lce.IGNORE_INDEX
    return hidden, weight, targets


def _loss_and_grads(fn, hidden, weight, targets):  # type: ignore[no-untyped-def]
    hidden.grad = weight.grad = None
    loss = fn(hidden, weight, targets)
    loss.backward()
    return loss.detach().float(), hidden.grad.float(), weight.grad.float()


def _plain(hidden, weight, targets):  # type: ignore[no-untyped-def]
    return F.cross_entropy((hidden.float() @ weight.float().T), targets, ignore_index=lce.IGNORE_INDEX)


@pytest.mark.parametrize("budget", [None, 4 * 300 * 1000 - 1], ids=["fits: plain path", "over budget: chunks"])
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float16, 2e-3)], ids=["fp32", "fp16"])
def test_both_paths_equal_the_plain_loss(dtype, tol, budget):
    hidden, weight, targets = _inputs(dtype)
    kwargs = {} if budget is None else {"budget_bytes": budget}
    got = _loss_and_grads(lambda *a: lce.linear_cross_entropy(*a, **kwargs), hidden, weight, targets)
    want = _loss_and_grads(_plain, hidden.detach().float().requires_grad_(), weight.detach().float().requires_grad_(),
                           targets)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_the_budget_picks_the_path_and_the_chunk_size(monkeypatch):
    assert not lce.uses_chunks(300, 1000) and lce.uses_chunks(8 * 2048, 151_936)
    calls = []
    real = lce._LinearCrossEntropy.apply
    monkeypatch.setattr(lce._LinearCrossEntropy, "apply", lambda *a: calls.append(a[3]) or real(*a))
    hidden, weight, targets = _inputs(torch.float32)
    lce.linear_cross_entropy(hidden, weight, targets)
    assert calls == []  # fp32 logits of 1.2 MB fit the 512 MB budget: the plain path
    lce.linear_cross_entropy(hidden, weight, targets, budget_bytes=4 * 128 * 1000)
    assert calls == [128]  # chunks of 128 rows hold the budget's 128 x 1000 logits
    lce.linear_cross_entropy(hidden.detach().half().requires_grad_(), weight.detach().half(), targets)
    assert calls == [128, lce.chunk_rows(1000)]  # fp16 always chunks (deferred 1/count)
