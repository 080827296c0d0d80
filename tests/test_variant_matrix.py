"""Every registered variant × every position at tiny size on CPU: forward, backward, a falling loss,
save/load round trip, and cached decoding equal to the full forward."""
from __future__ import annotations

import pytest
import torch

import effzoo
from model_checks import cached_logits, train_losses
from effzoo.errors import ConfigError

REGISTRY = effzoo.REGISTRY.ensure_loaded()
VARIANTS = REGISTRY.names("variant")
POSITIONS = REGISTRY.names("position")


def _supported(variant: str, position: str) -> bool:
    allowed = REGISTRY.variant(variant).capabilities.positions
    return allowed is None or position in allowed


@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_with_position(variant: str, position: str, tmp_path) -> None:
    spec = REGISTRY.variant(variant)
    if spec.capabilities.needs_cuda and not torch.cuda.is_available():
        pytest.skip(f"{variant} needs CUDA")
    if not _supported(variant, position):
        with pytest.raises(ConfigError, match="does not support position"):
            effzoo.build(variant, size="tiny", position=position)
        return
    model = effzoo.build(variant, size="tiny", position=position, dtype="float32")
    vocab = model.config.vocab_size
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (2, 23), generator=generator)
    inputs, targets = ids[:, :-1], ids[:, 1:]

    out = model(inputs, targets=targets)
    assert out.logits.shape == (2, 22, vocab) and torch.isfinite(out.loss)
    out.loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)

    losses = train_losses(model, ids, steps=6)
    assert losses[-1] < losses[0] - 0.05, losses

    model.eval()
    with torch.no_grad():
        full = model(inputs).logits
        model.save_pretrained(tmp_path / "saved")
        again = effzoo.from_pretrained(tmp_path / "saved")
        torch.testing.assert_close(again(inputs).logits, full, rtol=0, atol=0)

        if spec.capabilities.kv_cache or spec.capabilities.recurrent:
            torch.testing.assert_close(cached_logits(model, inputs, prefill=13), full, rtol=1e-4, atol=1e-4)
