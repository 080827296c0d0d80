"""RWKV-7: the chunked form and the kernels against the per-token oracle (outputs and gradients),
odd lengths, causality, state-passing decoding, training, registry entries and clear errors."""
from __future__ import annotations

import importlib.util
import math

import pytest
import torch
import torch.nn.functional as F

import effzoo
from model_checks import train_losses
from effzoo.errors import ConfigError
from effzoo_plugins.rwkv import kernels
from effzoo_plugins.rwkv.block import RWKV7State, V_FIRST_KEY
from effzoo_plugins.rwkv.reference import wkv7_chunked, wkv7_sequential

HAS_TRITON = importlib.util.find_spec("triton") is not None
CUDA = torch.cuda.is_available()


def wkv_inputs(batch: int, length: int, heads: int, dim: int, device: str = "cpu", seed: int = 0):
    """Random r, log w, k, v, a, b shaped like the block makes them, plus an initial state; all leaf tensors."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, length, heads, dim)
    r, k, v = (torch.randn(shape, generator=g) for _ in range(3))
    log_w = kernels.LOG_DECAY_BOUND * torch.sigmoid(2 * torch.randn(shape, generator=g))
    removal = F.normalize(torch.randn(shape, generator=g), dim=-1)
    iclr = torch.sigmoid(torch.randn(shape, generator=g))
    state = torch.randn(batch, heads, dim, dim, generator=g)
    tensors = [r, log_w, 0.5 * k, v, -removal, removal * iclr, state]
    return [t.to(device).requires_grad_() for t in tensors]


def outputs_and_grads(fn, tensors, seed: int = 1):
    """Run ``fn(*inputs, state)``, backpropagate fixed random cotangents, return outputs + all gradients."""
    out, final = fn(*tensors[:6], tensors[6])
    g = torch.Generator().manual_seed(seed)
    loss = (out.float() * torch.randn(out.shape, generator=g).to(out.device)).sum()
    loss = loss + (final * torch.randn(final.shape, generator=g).to(final.device)).sum()
    grads = torch.autograd.grad(loss, tensors)
    return [out.float(), final] + list(grads)


def assert_all_close(got, want, rel: float) -> None:
    names = ["out", "state", "dr", "dw", "dk", "dv", "da", "db", "dstate"]
    for name, x, y in zip(names, got, want):
        err = (x.float() - y.float()).norm() / y.float().norm().clamp_min(1e-12)
        assert err < rel, f"{name}: relative error {err:.2e} >= {rel}"


@pytest.mark.parametrize("length,chunk", [(1, 16), (7, 4), (37, 16), (64, 32), (50, 64)], ids=lambda x: str(x))
def test_chunked_equals_sequential(length: int, chunk: int) -> None:
    tensors = wkv_inputs(2, length, 2, 16)
    want = outputs_and_grads(wkv7_sequential, tensors)
    got = outputs_and_grads(lambda *x: wkv7_chunked(*x, chunk_size=chunk), tensors)
    assert_all_close(got, want, 1e-5)


def test_chunked_is_stable_at_the_decay_bound() -> None:
    """Fastest decay on every channel for 64-token chunks: the centred factorisation must not overflow."""
    tensors = wkv_inputs(1, 128, 1, 16)
    with torch.no_grad():
        tensors[1].fill_(kernels.LOG_DECAY_BOUND)
    want = outputs_and_grads(wkv7_sequential, tensors)
    got = outputs_and_grads(lambda *x: wkv7_chunked(*x, chunk_size=64), tensors)
    assert all(torch.isfinite(t).all() for t in got)
    assert_all_close(got, want, 1e-4)


@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_triton_scan_in_interpreter_matches_sequential(monkeypatch) -> None:
    """The Triton kernels (forward scan and its adjoint) run on CPU under TRITON_INTERPRET=1."""
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    from effzoo_plugins.rwkv.triton_chunk import wkv7_triton

    tensors = wkv_inputs(2, 45, 2, 16)
    want = outputs_and_grads(wkv7_sequential, tensors)
    got = outputs_and_grads(lambda *x: wkv7_triton(*x, chunk_size=16), tensors)
    assert_all_close(got, want, 1e-5)


@pytest.mark.gpu
@pytest.mark.skipif(not (CUDA and HAS_TRITON), reason="needs a CUDA GPU and triton (compiled Triton kernels)")
@pytest.mark.parametrize("length", [63, 300])
def test_triton_on_gpu_matches_sequential(length: int) -> None:
    from effzoo_plugins.rwkv.triton_chunk import wkv7_triton

    tensors = wkv_inputs(2, length, 3, 64, device="cuda")
    want = outputs_and_grads(wkv7_sequential, tensors)
    got = outputs_and_grads(lambda *x: wkv7_triton(*x, chunk_size=64), tensors)
    assert_all_close(got, want, 1e-4)


@pytest.mark.gpu
@pytest.mark.skipif(not kernels.has_fla(), reason="flash-linear-attention is not installed (pip install 'effzoo[fla]')")
@pytest.mark.skipif(not CUDA, reason="flash-linear-attention's chunk_rwkv7 needs a CUDA GPU")
def test_fla_chunk_rwkv7_matches_sequential() -> None:
    tensors = wkv_inputs(2, 200, 3, 64, device="cuda")
    want = outputs_and_grads(wkv7_sequential, tensors)
    got = outputs_and_grads(lambda *x: kernels.wkv7(*x, kernel="fla"), tensors)
    assert_all_close(got, want, 5e-3)


def test_kernel_resolution_and_messages(monkeypatch) -> None:
    assert kernels.resolve_kernel("auto", "cpu", 100, 64, 64) == "torch"
    assert kernels.resolve_kernel("auto", "cpu", 1, 64, 64) == "sequential"
    with pytest.raises(ConfigError, match="needs CUDA"):
        kernels.resolve_kernel("fla", "cpu", 100, 64, 64)
    with pytest.raises(ConfigError, match="choose one of"):
        kernels.resolve_kernel("cuda", "cpu", 100, 64, 64)
    monkeypatch.setattr(kernels, "has_fla", lambda: False)
    with pytest.raises(ConfigError, match=r"pip install 'effzoo\[fla\]'"):
        kernels.resolve_kernel("fla", "cuda", 100, 64, 64)
    if HAS_TRITON:
        assert kernels.resolve_kernel("auto", "cuda", 100, 64, 64) == "triton"
        assert kernels.resolve_kernel("auto", "cuda", 100, 48, 48) == "torch"  # tl.dot needs powers of two



@pytest.mark.skipif(not HAS_TRITON, reason="triton is not installed")
def test_explicit_triton_kernel_is_checked_before_launch(monkeypatch) -> None:
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="needs CUDA tensors"):
        kernels.resolve_kernel("triton", "cpu", 100, 64, 64)
    with pytest.raises(ConfigError, match="head sizes"):
        kernels.resolve_kernel("triton", "cuda", 100, 48, 48)
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    assert kernels.resolve_kernel("triton", "cpu", 100, 64, 64) == "triton"

# -- the block and the model ----------------------------------------------------------------------

def tiny_model(**overrides):
    settings = dict(rwkv_head_size=32, n_layers=3)
    settings.update(overrides)
    return effzoo.build("rwkv", size="tiny", dtype="float32", **settings)


def randomise(model: torch.nn.Module, seed: int = 0) -> None:
    """Make every parameter non-trivial (init zeroes the low-rank up-projections and the bonus)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn(p.shape, generator=g))


def test_model_with_torch_kernel_equals_sequential_outputs_and_grads() -> None:
    ids = torch.randint(0, 512, (2, 26), generator=torch.Generator().manual_seed(3))
    model = tiny_model(rwkv_chunk_size=8)
    randomise(model)
    results = []
    for kernel in ("reference", "torch"):
        for block in model.blocks:
            block.time_mix.kernel = kernel
        model.zero_grad()
        out = model(ids[:, :-1], targets=ids[:, 1:])
        out.loss.backward()
        results.append((out.logits, {n: p.grad.clone() for n, p in model.named_parameters()}))
    (ref_logits, ref_grads), (logits, grads) = results
    torch.testing.assert_close(logits, ref_logits, rtol=1e-4, atol=1e-4)
    for name, grad in ref_grads.items():
        torch.testing.assert_close(grads[name], grad, rtol=1e-3, atol=1e-5, msg=name)


def test_causality() -> None:
    model = tiny_model()
    randomise(model)
    ids = torch.randint(0, 512, (1, 33), generator=torch.Generator().manual_seed(4))
    changed = ids.clone()
    changed[0, 20] = (ids[0, 20] + 1) % 512
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :20], b[:, :20], rtol=0, atol=0)
    assert (a[:, 20:] - b[:, 20:]).abs().max() > 1e-4


@pytest.mark.parametrize("prefill", [1, 19])
def test_state_passing_decoding_equals_full_forward(prefill: int) -> None:
    model = tiny_model()
    randomise(model)
    model.eval()
    ids = torch.randint(0, 512, (2, 30), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, 64)
        pieces = [model(ids[:, :prefill], cache=cache).logits]
        pieces.append(model(ids[:, prefill:prefill + 5], cache=cache).logits)  # a chunked step with a state
        pieces += [model(ids[:, t:t + 1], cache=cache).logits for t in range(prefill + 5, 30)]
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    state = cache.layers[0]
    assert isinstance(state, RWKV7State) and state.wkv.shape == (2, 4, 32, 32)


def test_state_bytes_match_the_allocated_state() -> None:
    model = tiny_model()
    block = model.blocks[0]
    state = block.init_state(3, 10_000, torch.device("cpu"), torch.bfloat16)
    allocated = sum(t.numel() * t.element_size() for t in (state.time_shift, state.channel_shift, state.wkv))
    assert block.state_bytes(2) * 3 == allocated
    assert block.cache_bytes_per_token() == 0


def test_loss_decreases_on_a_fixed_batch() -> None:
    model = effzoo.build("rwkv", size="tiny", dtype="float32", n_layers=2)
    ids = torch.randint(0, 512, (2, 49), generator=torch.Generator().manual_seed(6))
    losses = train_losses(model, ids, steps=6, lr=1e-2)
    assert losses[0] == pytest.approx(math.log(512), abs=0.3)
    assert losses[-1] < losses[0] - 2.0, losses


def test_value_residual_and_checkpointing() -> None:
    """Later layers read the first layer's values from ctx.carry, also when recomputed by checkpointing."""
    model = tiny_model()
    randomise(model)
    mixes = [block.time_mix for block in model.blocks]
    assert mixes[0].first and not hasattr(mixes[0], "value_base")
    assert all(not m.first and m.value_residual for m in mixes[1:])
    ids = torch.randint(0, 512, (2, 21), generator=torch.Generator().manual_seed(7))
    plain = model(ids[:, :-1], targets=ids[:, 1:])
    plain.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    model.gradient_checkpointing = True
    model(ids[:, :-1], targets=ids[:, 1:]).loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, grads[name], msg=name)
    assert grads["blocks.1.time_mix.value_up"].abs().sum() > 0
    without = tiny_model(rwkv_value_residual=False)
    assert not any(hasattr(b.time_mix, "value_base") for b in without.blocks)

    block = model.blocks[1]
    ctx = effzoo.interfaces.MixContext(positions=torch.arange(4), position=model.position)
    with pytest.raises(RuntimeError, match="no earlier RWKV-7 layer"):
        block(torch.randn(1, 4, 128), ctx)
    assert V_FIRST_KEY not in ctx.carry


def test_registry_sizes_and_info() -> None:
    spec = effzoo.REGISTRY.variant("rwkv")
    assert spec.group == "attention-free" and spec.capabilities.recurrent and not spec.capabilities.kv_cache
    assert effzoo.REGISTRY.variant("rwkv7").name == "rwkv"
    shapes = {"0.5B": (24, 1024), "1.5B": (32, 2048), "3B": (40, 2560)}
    for size, (layers, width) in shapes.items():
        info = effzoo.info("rwkv", size=size)
        assert (info["layers"], info["d_model"]) == (layers, width)
        assert info["config"]["vocab_size"] == 151_936 and not info["config"]["tie_embeddings"]
        assert info["kv_cache_bytes_per_token"] == 0 and info["state_bytes_per_sequence"] > 0
    assert effzoo.info("rwkv", size="0.5B")["params"] == 629_287_936
    assert effzoo.make_config("rwkv", size="tiny").vocab_size == 512


def test_bad_settings_are_rejected() -> None:
    with pytest.raises(ConfigError, match="does not support position"):
        effzoo.make_config("rwkv", size="tiny", position="rope")
    with pytest.raises(ConfigError, match="rwkv_head_size"):
        effzoo.build("rwkv", size="tiny", rwkv_head_size=48)
    with pytest.raises(ConfigError, match="unknown kernel 'cuda' for variant 'rwkv'; choose one of auto, reference, fla"):
        effzoo.build("rwkv", size="tiny", kernel="cuda")
    with pytest.raises(ConfigError, match=r"unknown setting 'rwkv_kernel'; use kernel='reference'"):
        effzoo.build("rwkv", size="tiny", rwkv_kernel="sequential")
    with pytest.raises(ConfigError, match="rwkv_head_sise"):
        effzoo.make_config("rwkv", size="tiny", rwkv_head_sise=32)


def test_bf16_autocast_keeps_the_recurrence_in_float32() -> None:
    model = tiny_model(n_layers=2)
    randomise(model)
    ids = torch.randint(0, 512, (2, 24), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        full = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed = model(ids).logits
    assert mixed.dtype == torch.bfloat16
    err = (mixed.float() - full).norm() / full.norm()
    assert err < 0.05, err
