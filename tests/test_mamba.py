"""Mamba-2 (SSD) and Mamba-1 (selective scan): scans against their sequential oracles, effzoo's Triton
kernels against the reference (interpreter on CPU), the mamba-ssm path (CUDA only), causality,
state-passing decoding, state accounting and configuration errors."""
from __future__ import annotations

import importlib

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError
from effzoo_plugins.mamba import kernels
from effzoo_plugins.mamba.selective_scan_reference import selective_scan_parallel, selective_scan_sequential
from effzoo_plugins.mamba.ssd_reference import ssd_chunked, ssd_sequential

SMALL_SSD = dict(d_state=16, ssm_head_dim=16, chunk_size=16)


def _ssd_inputs(batch=2, length=37, heads=4, head_dim=8, groups=2, d_state=16, dtype=torch.float32):
    g = torch.Generator().manual_seed(3)
    x = torch.randn(batch, length, heads, head_dim, generator=g, dtype=dtype)
    dt = torch.rand(batch, length, heads, generator=g, dtype=dtype) * 0.5 + 0.01
    A = -torch.rand(heads, generator=g, dtype=dtype) * 3 - 0.1
    B = torch.randn(batch, length, groups, d_state, generator=g, dtype=dtype)
    C = torch.randn(batch, length, groups, d_state, generator=g, dtype=dtype)
    s0 = torch.randn(batch, heads, head_dim, d_state, generator=g, dtype=dtype)
    return [t.requires_grad_() for t in (x, dt, A, B, C, s0)]


def _grads(fn, inputs):
    """Outputs of ``fn(*inputs)`` and the gradients of a fixed random projection of them."""
    for t in inputs:
        t.grad = None
    y, final = fn(*inputs)
    g = torch.Generator().manual_seed(7)
    loss = (y * torch.randn(y.shape, generator=g)).sum() + (final * torch.randn(final.shape, generator=g)).sum()
    loss.backward()
    return y.detach(), final.detach(), [t.grad.clone() for t in inputs]


def _assert_close_rel(actual, expected, tol=1e-4):
    """Relative error against the largest reference magnitude (robust for values near zero)."""
    scale = expected.abs().max().clamp_min(1e-6)
    assert ((actual - expected).abs().max() / scale) < tol, float((actual - expected).abs().max() / scale)


@pytest.mark.parametrize("length,chunk", [(37, 8), (5, 16), (64, 16)], ids=["T37-L8", "T5-L16", "T64-L16"])
def test_ssd_chunked_matches_sequential(length, chunk):
    inputs = _ssd_inputs(length=length)
    y_c, s_c, g_c = _grads(lambda *a: ssd_chunked(*a[:5], chunk, a[5]), inputs)
    y_s, s_s, g_s = _grads(lambda *a: ssd_sequential(*a[:5], a[5]), inputs)
    _assert_close_rel(y_c, y_s)
    _assert_close_rel(s_c, s_s)
    for a, b in zip(g_c, g_s):
        _assert_close_rel(a, b)


def test_selective_scan_parallel_matches_sequential():
    g = torch.Generator().manual_seed(5)
    b, t, d, n = 2, 29, 12, 8
    x, dt = torch.randn(b, t, d, generator=g), torch.rand(b, t, d, generator=g)
    A = -torch.rand(d, n, generator=g) * 4
    B, C, s0 = torch.randn(b, t, n, generator=g), torch.randn(b, t, n, generator=g), torch.randn(b, d, n, generator=g)
    inputs = [z.requires_grad_() for z in (x, dt, A, B, C, s0)]
    y_p, s_p, g_p = _grads(lambda *a: selective_scan_parallel(*a, chunk_size=8), inputs)
    y_s, s_s, g_s = _grads(selective_scan_sequential, inputs)
    _assert_close_rel(y_p, y_s)
    _assert_close_rel(s_p, s_s)
    for a, b in zip(g_p, g_s):
        _assert_close_rel(a, b)


@pytest.fixture
def triton_ssd(monkeypatch):
    """effzoo's Triton SSD kernels compiled for the interpreter (CPU)."""
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    import effzoo_plugins.mamba.triton_ssd as module

    yield importlib.reload(module)
    monkeypatch.undo()
    importlib.reload(module)


@pytest.mark.parametrize("length,heads,groups,head_dim,d_state,chunk", [
    (45, 4, 2, 8, 16, 16), (16, 2, 1, 20, 24, 16), (70, 2, 2, 16, 16, 32),
], ids=["T45-H4-G2-P8-N16-L16", "T16-H2-G1-P20-N24-L16", "T70-H2-G2-P16-N16-L32"])
def test_triton_ssd_matches_reference(triton_ssd, length, heads, groups, head_dim, d_state, chunk):
    inputs = _ssd_inputs(batch=1, length=length, heads=heads, head_dim=head_dim, groups=groups, d_state=d_state)
    y_t, s_t, g_t = _grads(lambda *a: triton_ssd.ssd_chunked_triton(*a[:5], chunk, a[5]), inputs)
    y_r, s_r, g_r = _grads(lambda *a: ssd_chunked(*a[:5], chunk, a[5]), inputs)
    _assert_close_rel(y_t, y_r)
    _assert_close_rel(s_t, s_r)
    for name, a, b in zip(["x", "dt", "A", "B", "C", "initial_state"], g_t, g_r):
        assert a.shape == b.shape, name
        _assert_close_rel(a, b, tol=2e-4)


def test_triton_ssd_half_precision_matches_reference(triton_ssd):
    """float16 exercises the kernels' casts to the input dtype before each tl.dot (bfloat16 cannot be
    checked here: the Triton 3.9 interpreter's bfloat16 tl.dot returns garbage)."""
    inputs = [t.detach().half().requires_grad_() for t in _ssd_inputs(batch=1, length=40, head_dim=16)]
    inputs[5] = inputs[5].detach().float().requires_grad_()
    y_t, s_t, g_t = _grads(lambda *a: triton_ssd.ssd_chunked_triton(*a[:5], 16, a[5]), inputs)
    y_r, s_r, g_r = _grads(lambda *a: ssd_chunked(*a[:5], 16, a[5]), inputs)
    for a, b in zip([y_t, s_t, *g_t], [y_r, s_r, *g_r]):
        _assert_close_rel(a.float(), b.float(), tol=1e-2)


def _mixer(kind: str, **options):
    cfg = effzoo.make_config(kind, size="tiny", **options)
    block = effzoo.build_from_config(cfg).blocks[0]
    return block.mixer


def test_mamba2_mixer_triton_backend_matches_reference(triton_ssd):
    torch.manual_seed(0)
    mixer = _mixer("mamba", **{**SMALL_SSD, "ssm_head_dim": 32})
    x = torch.randn(1, 21, 128)
    outs, grads = [], []
    for backend in ("triton", "reference"):
        mixer.backend = backend
        mixer.zero_grad()
        y, _ = mixer(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in mixer.named_parameters()})
    _assert_close_rel(outs[0], outs[1])
    for name in grads[1]:
        _assert_close_rel(grads[0][name], grads[1][name], tol=5e-4)


@pytest.mark.parametrize("variant,options", [("mamba", SMALL_SSD), ("mamba1", {"chunk_size": 8})])
def test_causality_and_decoding_equal_full_forward(variant, options):
    model = effzoo.build(variant, size="tiny", **options).eval()
    ids = torch.randint(0, 512, (2, 27))
    with torch.no_grad():
        full = model(ids).logits
        changed = ids.clone()
        changed[:, 20] = (changed[:, 20] + 1) % 512
        after = model(changed).logits
        assert torch.equal(after[:, :20], full[:, :20])
        assert not torch.allclose(after[:, 20:], full[:, 20:])

        cache = model.new_cache(2, 64)
        sizes = [s.ssm.numel() + s.conv.numel() for s in cache.layers]
        pieces = [model(ids[:, :17], cache=cache).logits, model(ids[:, 17:19], cache=cache).logits]
        pieces += [model(ids[:, t:t + 1], cache=cache).logits for t in range(19, 27)]
        torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
        assert [s.ssm.numel() + s.conv.numel() for s in cache.layers] == sizes  # constant memory
        assert cache.layers[0].tokens == 27


@pytest.mark.parametrize("variant", ["mamba", "mamba1"])
def test_state_bytes_are_what_init_state_allocates(variant):
    model = effzoo.build(variant, size="tiny", dtype="bfloat16")
    block = model.blocks[0]
    state = block.init_state(3, 100, torch.device("cpu"), torch.bfloat16)
    allocated = sum(t.numel() * t.element_size() for t in (state.conv, state.ssm))
    assert allocated == 3 * block.state_bytes(2)
    assert block.cache_bytes_per_token(2) == 0


def test_real_sizes_report_parameter_counts():
    info = effzoo.info("mamba", size="0.5B")
    cfg = info["config"]
    assert (cfg["n_layers"], cfg["d_model"], cfg["vocab_size"]) == (24, 768, 151_936)
    assert info["params"] == 207_055_296 and info["non_embedding_params"] == 90_368_448
    assert info["kv_cache_bytes_per_token"] == 0 and info["state_bytes_per_sequence"] > 0
    three = effzoo.info("mamba1", size="3B")
    assert (three["config"]["n_layers"], three["config"]["d_model"]) == (64, 2560)
    assert effzoo.REGISTRY.variant("mamba").capabilities.recurrent


def test_configuration_errors_are_clear():
    with pytest.raises(ConfigError, match="d_state"):
        effzoo.make_config("mamba", size="tiny", dstate=16)
    with pytest.raises(ConfigError, match="does not support position"):
        effzoo.build("mamba", size="tiny", position="rope")
    with pytest.raises(ConfigError, match="every layer of this model is a Mamba"):
        effzoo.build("gqa", size="tiny", layers=["mamba"])
    with pytest.raises(ConfigError, match="not divisible by ssm_head_dim"):
        effzoo.build("mamba", size="tiny", ssm_head_dim=48)
    mixer = _mixer("mamba", **SMALL_SSD, kernel="triton")
    if kernels.triton_missing(torch.device("cpu")):
        with pytest.raises(ConfigError, match="TRITON_INTERPRET|triton is not installed"):
            mixer(torch.randn(1, 4, 128))
    mixer.backend = "turbo"
    with pytest.raises(ConfigError, match="unknown kernel 'turbo' for Mamba"):
        mixer(torch.randn(1, 4, 128))
    m1 = _mixer("mamba1", kernel="triton")
    with pytest.raises(ConfigError, match="Mamba-2"):
        m1(torch.randn(1, 4, 128))


def test_triton_backend_is_chosen_only_for_dims_its_kernel_holds(monkeypatch):
    """The SSD kernel keeps a whole head_dim / d_state row in one tile: larger sizes must not reach it."""
    pytest.importorskip("triton", reason="triton is not installed")
    monkeypatch.setattr(kernels, "mamba_ssm_missing", lambda: "not installed")
    cuda = torch.device("cuda")  # resolution only: nothing is allocated on the device
    limit = kernels.TRITON_MAX_DIM
    assert kernels.resolve_backend("auto", cuda, has_triton_kernel=True, dims=(64, limit)) == "triton"
    with pytest.warns(UserWarning, match="reference SSD"):
        assert kernels.resolve_backend("auto", cuda, has_triton_kernel=True, dims=(64, 2 * limit)) == "reference"
    with pytest.raises(ConfigError, match=f"<= {limit}"):
        kernels.resolve_backend("triton", cuda, has_triton_kernel=True, dims=(2 * limit, 16))
    from effzoo_plugins.mamba.triton_ssd import ssd_chunked_triton

    x, dt, A, B, C, _ = _ssd_inputs(length=4, head_dim=4, d_state=limit + 16)
    with pytest.raises(ValueError, match="d_state"):
        ssd_chunked_triton(x, dt, A, B, C, 16)


def test_explicit_mamba_ssm_kernel_explains_how_to_install():
    if kernels.mamba_ssm_missing() is None and torch.cuda.is_available():
        pytest.skip("mamba-ssm is usable here; covered by test_mamba_ssm_matches_reference")
    mixer = _mixer("mamba", **SMALL_SSD, kernel="mamba_ssm")
    with pytest.raises(ConfigError, match="mamba_ssm"):
        mixer(torch.randn(1, 4, 128))


_MAMBA_SSM_SKIP = (kernels.mamba_ssm_missing()
                   or (None if torch.cuda.is_available() else "mamba-ssm kernels need a CUDA device"))


@pytest.mark.gpu
@pytest.mark.skipif(_MAMBA_SSM_SKIP is not None, reason=str(_MAMBA_SSM_SKIP))
@pytest.mark.parametrize("variant,options", [("mamba", {}), ("mamba1", {})])
def test_mamba_ssm_matches_reference(variant, options):
    torch.manual_seed(0)
    mixer = _mixer(variant, **options).cuda()
    x = torch.randn(2, 300, 128, device="cuda")
    outs, grads = [], []
    for backend in ("mamba_ssm", "reference"):
        mixer.backend = backend
        mixer.zero_grad()
        y, _ = mixer(x)
        y.square().sum().backward()
        outs.append(y.detach())
        grads.append({n: p.grad.clone() for n, p in mixer.named_parameters()})
    _assert_close_rel(outs[0], outs[1], tol=2e-3)
    for name in grads[1]:
        _assert_close_rel(grads[0][name], grads[1][name], tol=5e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="the compiled Triton path needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_ssd_on_gpu_matches_reference(dtype):
    from effzoo_plugins.mamba.triton_ssd import ssd_chunked_triton

    inputs = [t.detach().cuda().to(dtype).requires_grad_()
              for t in _ssd_inputs(batch=2, length=1000, heads=4, head_dim=64, groups=1, d_state=128)]
    inputs[5] = inputs[5].detach().float().requires_grad_()
    y_t, s_t, g_t = _grads(lambda *a: ssd_chunked_triton(*a[:5], 256, a[5]), inputs)
    y_r, s_r, g_r = _grads(lambda *a: ssd_chunked(*a[:5], 256, a[5]), inputs)
    tol = 2e-3 if dtype == torch.float32 else 3e-2
    _assert_close_rel(y_t.float(), y_r.float(), tol)
    _assert_close_rel(s_t, s_r, tol)
    for a, b in zip(g_t, g_r):
        _assert_close_rel(a.float(), b.float(), tol)
