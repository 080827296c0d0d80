"""The fast attention paths (SDPA, FlexAttention) against the pure-PyTorch reference."""
from __future__ import annotations

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError
from effzoo.model.parts import build_component
from effzoo.ops.attention import attend

POSITIONS = ["rope", "alibi", "relative", "absolute", "learned", "none"]


def _qkv(batch=2, heads=4, kv_heads=2, q_len=19, k_len=19, dim=16, requires_grad=True):
    g = torch.Generator().manual_seed(3)
    make = lambda h, t: torch.randn(batch, h, t, dim, generator=g).requires_grad_(requires_grad)  # noqa: E731
    return make(heads, q_len), make(kv_heads, k_len), make(kv_heads, k_len)


def _position(name: str, heads: int = 4):
    cfg = effzoo.make_config("gqa", "tiny", position=name, n_heads=heads, n_kv_heads=2)
    module = build_component("position", cfg.position, cfg)
    if isinstance(module, effzoo.plugin.Component):
        module.init_weights()
    return module


@pytest.mark.parametrize("position", POSITIONS)
def test_sdpa_matches_reference_outputs_and_gradients(position):
    pos = _position(position)
    q, k, v = _qkv()
    leaves = [q, k, v, *(pos.parameters() if pos.has_bias else ())]
    grads = []
    outs = []
    for backend in ("reference", "sdpa"):
        for t in leaves:
            t.grad = None
        out = attend(q, k, v, causal=True, position=pos, backend=backend)
        out.square().sum().backward()
        outs.append(out.detach())
        grads.append([t.grad.clone() for t in leaves])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("position", ["alibi", "relative", "none"])
def test_flex_matches_reference_forward_on_cpu(position):
    pos = _position(position)
    q, k, v = _qkv(requires_grad=False, q_len=37, k_len=37)
    expected = attend(q, k, v, position=pos, backend="reference")
    got = attend(q, k, v, position=pos, backend="flex")
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward and bf16 fused kernels need CUDA")
@pytest.mark.parametrize("position", ["rope", "alibi", "relative"])
@pytest.mark.parametrize("backend", ["sdpa", "flex"])
def test_cuda_fast_paths_match_reference_in_bf16(position, backend):
    pos = _position(position).cuda()
    q, k, v = (t.detach().cuda().bfloat16().requires_grad_() for t in _qkv(q_len=256, k_len=256, dim=64))
    ref = attend(q.float(), k.float(), v.float(), position=pos, backend="reference")
    out = attend(q, k, v, position=pos, backend=backend)
    torch.testing.assert_close(out.float(), ref, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("position", ["alibi", "relative", "none"])
def test_queries_at_an_offset_see_the_whole_cache(position):
    """Decoding: 3 new queries over 11 cached keys equal the last 3 rows of the full computation."""
    pos = _position(position)
    q, k, v = _qkv(q_len=11, k_len=11, requires_grad=False)
    full = attend(q, k, v, position=pos, backend="reference")
    for backend in ("reference", "sdpa"):
        tail = attend(q[:, :, -3:], k, v, position=pos, backend=backend)
        torch.testing.assert_close(tail, full[:, :, -3:], rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    q, k, v = _qkv(requires_grad=False)
    base = attend(q, k, v, backend="sdpa")
    k2, v2 = k.clone(), v.clone()
    k2[:, :, 12:] += 1.0
    v2[:, :, 12:] -= 1.0
    changed = attend(q, k2, v2, backend="sdpa")
    torch.testing.assert_close(changed[:, :, :12], base[:, :, :12])
    assert not torch.allclose(changed[:, :, 12:], base[:, :, 12:])


def test_unknown_backend_is_rejected():
    q, k, v = _qkv(requires_grad=False)
    with pytest.raises(ConfigError, match="reference"):
        attend(q, k, v, backend="fast")


def test_model_level_backends_agree():
    model = effzoo.build("gqa", "tiny", position="relative")
    ids = torch.randint(0, 512, (2, 21))
    torch.testing.assert_close(model(ids, backend="sdpa").logits, model(ids, backend="reference").logits,
                               rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("position", ["alibi", "relative"])
def test_score_mod_is_reused_but_never_stale(position):
    """Compiled FlexAttention re-traces on a new score_mod closure: reuse one, but it must always read the
    module's current tensors (buffers are replaced by .to()/.double(), parameters keep their identity)."""
    model = effzoo.build("gqa", "tiny", position=position)
    assert model.position.score_mod() is model.position.score_mod()
    model.double()
    fn, pos = model.position.score_mod(), torch.arange(5)
    bias = model.position.bias(pos, pos)
    for h, q, k in [(0, 4, 1), (3, 2, 0), (1, 3, 3)]:
        got = fn(torch.zeros((), dtype=torch.float64), 0, torch.tensor(h), torch.tensor(q), torch.tensor(k))
        assert got.dtype == torch.float64 and got.item() == bias[h, q, k].item()
