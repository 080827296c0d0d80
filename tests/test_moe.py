"""MoE: routers, capacity, sorted grouped dispatch against the per-expert loop, the layer, the variant."""
from __future__ import annotations

import math

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError, UnknownNameError
from effzoo.interfaces import MixContext, Routing
from effzoo_plugins.feedforward import SwiGLU
from effzoo_plugins.moe.dispatch import grouped_mm_supported, moe_reference, moe_swiglu, resolve_backend
from effzoo_plugins.moe.layer import MoEFeedForward
from effzoo_plugins.moe.routers import NoisyTopKRouter, TopKRouter, capacity_keep, expert_capacity, load_balance_loss

FAST_BACKENDS = ["grouped_mm", "bmm"]


def _rel_err(actual: torch.Tensor, expected: torch.Tensor) -> float:
    return ((actual.float() - expected.float()).norm() / expected.float().norm().clamp_min(1e-12)).item()


def _experts(n_experts: int, d: int, hidden: int, dtype: torch.dtype = torch.float32) -> tuple[torch.Tensor, torch.Tensor]:
    gate_up = (torch.randn(n_experts, 2 * hidden, d) / math.sqrt(d)).to(dtype).requires_grad_()
    down = (torch.randn(n_experts, d, hidden) / math.sqrt(hidden)).to(dtype).requires_grad_()
    return gate_up, down


def _run(backend: str, router: TopKRouter, x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor,
         upstream: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    torch.manual_seed(7)  # same jitter/noise draws for every backend
    routing = router(x)
    out = moe_swiglu(x, routing, gate_up, down, backend)
    inputs = [x, gate_up, down, router.gate.weight]
    return out, list(torch.autograd.grad((out * upstream).sum() + routing.aux_loss, inputs))


# -- dispatch -------------------------------------------------------------------------------------
@pytest.mark.parametrize("capacity_factor", [None, 0.6], ids=["nodrop", "cap0.6"])
@pytest.mark.parametrize("backend", FAST_BACKENDS)
@pytest.mark.parametrize("n_tokens,n_experts,top_k", [(37, 5, 2), (6, 8, 2), (29, 4, 1), (16, 4, 3)],
                         ids=lambda v: str(v))
def test_sorted_dispatch_matches_per_expert_loop(backend, capacity_factor, n_tokens, n_experts, top_k) -> None:
    """Outputs and gradients (tokens, expert weights, router) equal the loop, including dropped tokens."""
    d, hidden = 32, 24
    router = TopKRouter(d, n_experts, top_k, capacity_factor=capacity_factor, jitter=0.1).train()
    x = torch.randn(n_tokens, d, requires_grad=True)
    gate_up, down = _experts(n_experts, d, hidden)
    upstream = torch.randn(n_tokens, d)
    expected, expected_grads = _run("reference", router, x, gate_up, down, upstream)
    actual, grads = _run(backend, router, x, gate_up, down, upstream)
    if capacity_factor is not None and n_tokens > n_experts:
        assert not router(x).keep.all(), "the case must actually drop assignments"
    assert _rel_err(actual, expected) < 1e-5
    for name, got, want in zip(["x", "gate_up", "down"], grads, expected_grads):
        assert _rel_err(got, want) < 1e-5, name
    # the router gradient is a small sum of cancelling terms (exactly 0 from the output when top_k=1)
    assert _rel_err(grads[3], expected_grads[3]) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
def test_grouped_mm_equals_padded_bmm_on_cpu(dtype) -> None:
    """torch._grouped_mm (forward + backward) against the bmm fallback, both on CPU."""
    if not hasattr(torch, "_grouped_mm"):
        pytest.skip("torch._grouped_mm needs torch >= 2.8")
    d, hidden, n_experts = 64, 48, 6
    router = TopKRouter(d, n_experts, 2).to(dtype)
    x = torch.randn(50, d, dtype=dtype, requires_grad=True)
    gate_up, down = _experts(n_experts, d, hidden, dtype)
    assert grouped_mm_supported(x, gate_up, down)
    upstream = torch.randn(50, d, dtype=dtype)
    a, grads_a = _run("grouped_mm", router, x, gate_up, down, upstream)
    b, grads_b = _run("bmm", router, x, gate_up, down, upstream)
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert a.dtype == dtype and _rel_err(a, b) < tol
    assert all(_rel_err(ga, gb) < tol for ga, gb in zip(grads_a, grads_b))


def test_backend_choice() -> None:
    x = torch.randn(4, 32)
    gate_up, down = _experts(4, 32, 24)
    assert resolve_backend("auto", x, gate_up, down) == "bmm"  # grouped_mm is fast only on CUDA bf16 SM90+
    assert grouped_mm_supported(x, gate_up, down) == hasattr(torch, "_grouped_mm")
    odd_x = torch.randn(4, 30)  # 120-byte rows are not 16-byte aligned
    odd_gate_up, odd_down = _experts(4, 30, 24)
    assert not grouped_mm_supported(odd_x, odd_gate_up, odd_down)
    with pytest.raises(ConfigError, match="kernel='grouped_mm' cannot run here"):
        resolve_backend("grouped_mm", odd_x, odd_gate_up, odd_down)
    with pytest.raises(ConfigError, match="unknown kernel 'fast' for MoE experts"):
        resolve_backend("fast", x, gate_up, down)


def test_autocast_runs_experts_in_autocast_dtype() -> None:
    layer = _layer(n_experts=4, top_k=2, kernel="bmm")
    x = torch.randn(2, 7, 128)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = layer(x)
        assert layer.router.logits(x.reshape(-1, 128)).dtype == torch.float32
    assert mixed.dtype == torch.bfloat16
    assert _rel_err(mixed, layer(x)) < 2e-2


def test_reference_skips_dropped_assignments() -> None:
    """A token with both slots dropped gets exactly zero output and zero input gradient."""
    x = torch.randn(3, 16, requires_grad=True)
    gate_up, down = _experts(2, 16, 8)
    keep = torch.tensor([[True, True], [False, False], [True, False]])
    routing = Routing(weights=torch.full((3, 2), 0.5) * keep, experts=torch.tensor([[0, 1], [1, 0], [0, 1]]),
                      keep=keep, aux_loss=torch.zeros(()))
    for backend in ["reference", *FAST_BACKENDS]:
        out = moe_swiglu(x, routing, gate_up, down, backend)
        (grad,) = torch.autograd.grad(out.sum(), [x])
        assert torch.equal(out[1], torch.zeros(16)) and torch.equal(grad[1], torch.zeros(16)), backend
    torch.testing.assert_close(moe_reference(x, routing, gate_up, down), moe_swiglu(x, routing, gate_up, down, "bmm"))


# -- routers ----------------------------------------------------------------------------------------
def test_capacity_priority_is_slot_major_then_token_order() -> None:
    experts = torch.tensor([[0, 1], [0, 1], [0, 2], [1, 0]])
    # expert 0 serves first choices t0, t1 (t2's first choice and t3's second are past capacity 2);
    # expert 1 serves t3 (first choice) before t0's second choice, so t1's second choice drops.
    expected = torch.tensor([[True, True], [True, False], [False, True], [True, False]])
    assert torch.equal(capacity_keep(experts, 3, capacity=2), expected)
    assert capacity_keep(experts, 3, capacity=4).all()
    assert expert_capacity(n_tokens=4, top_k=2, n_experts=3, capacity_factor=1.25) == 4  # ceil(3.33)
    assert expert_capacity(n_tokens=16, top_k=2, n_experts=8, capacity_factor=1.0) == 4


def test_router_capacity_in_training_only() -> None:
    router = TopKRouter(16, 4, 2, capacity_factor=1.0)
    x = torch.randn(40, 16)
    with torch.no_grad():
        router.gate.weight[0] += 1.0  # skew towards expert 0 so that capacity binds
        x[:, :] = x.abs()
    routing = router.train()(x)
    capacity = expert_capacity(40, 2, 4, 1.0)
    assert torch.equal(routing.keep, capacity_keep(routing.experts, 4, capacity))
    assert not routing.keep.all()
    assert torch.equal(routing.weights == 0, ~routing.keep)
    assert torch.bincount(routing.experts[routing.keep], minlength=4).max() <= capacity
    assert routing.stats["dropped_fraction"].item() == pytest.approx(1 - routing.keep.float().mean().item())
    assert torch.equal(routing.stats["tokens_per_expert"], torch.bincount(routing.experts[routing.keep], minlength=4))
    assert router.eval()(x).keep.all()


def test_weights_are_top_k_renormalised() -> None:
    router = TopKRouter(16, 6, 2).eval()
    x = torch.randn(10, 16)
    routing = router(x)
    probs = router.logits(x).softmax(-1)
    top, idx = probs.topk(2, dim=-1)
    assert torch.equal(routing.experts, idx)
    torch.testing.assert_close(routing.weights, top / top.sum(-1, keepdim=True))
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(10))


def test_load_balance_loss_minimal_for_uniform_router() -> None:
    n_experts, top_k, d = 8, 2, 16
    x = torch.randn(256, d)
    uniform = TopKRouter(d, n_experts, top_k, aux_loss_coef=1.0, z_loss_coef=0.0)
    torch.nn.init.zeros_(uniform.gate.weight)
    balanced = uniform(x).stats["load_balance_loss"].item()
    assert balanced == pytest.approx(1.0, abs=1e-6)
    assert uniform(x).aux_loss.item() == pytest.approx(1.0, abs=1e-6)
    assert uniform(x).stats["z_loss"].item() == pytest.approx(math.log(n_experts) ** 2, rel=1e-5)
    for seed in range(3):  # random routers are less balanced
        torch.manual_seed(seed)
        assert TopKRouter(d, n_experts, top_k)(x).stats["load_balance_loss"].item() > balanced
    collapsed = TopKRouter(d, n_experts, top_k)
    with torch.no_grad():
        collapsed.gate.weight.zero_()
        collapsed.gate.weight[0] = 10.0
        collapsed.gate.weight[1] = 5.0
    routing = collapsed(x.abs())
    assert routing.stats["load_balance_loss"].item() > 3.5  # E / k = 4 when every token picks experts 0, 1
    assert routing.stats["router_entropy"].item() < uniform(x).stats["router_entropy"].item()
    assert uniform(x).stats["router_entropy"].item() == pytest.approx(math.log(n_experts), rel=1e-5)
    manual = n_experts * (torch.bincount(routing.experts.flatten(), minlength=8) / routing.experts.numel()
                          * collapsed.logits(x.abs()).softmax(-1).mean(0)).sum()
    torch.testing.assert_close(load_balance_loss(collapsed.logits(x.abs()).softmax(-1), routing.experts, 8), manual)


def test_noisy_router_is_noisy_only_in_training() -> None:
    router = NoisyTopKRouter(16, 4, 2)
    router.init_weights()
    x = torch.randn(32, 16)
    router.eval()
    torch.testing.assert_close(router.logits(x), router.logits(x), rtol=0, atol=0)
    router.train()
    assert not torch.equal(router.logits(x), router.logits(x))
    routing = router(x)
    (routing.weights * torch.randn_like(routing.weights)).sum().backward()
    assert router.noise.weight.grad is not None and router.noise.weight.grad.abs().sum() > 0


# -- the layer ---------------------------------------------------------------------------------------
def _layer(**options) -> MoEFeedForward:
    cfg = effzoo.make_config("moe", size="tiny", **options)
    layer = MoEFeedForward(cfg, layer=3)
    for module in layer.modules():
        if isinstance(module, effzoo.plugin.Component):
            module.init_weights()
    return layer


@pytest.mark.parametrize("top_k", [1, 2])
def test_identical_experts_equal_dense_swiglu(top_k) -> None:
    layer = _layer(n_experts=4, top_k=top_k)
    dense = SwiGLU(128, 384)
    with torch.no_grad():
        layer.experts.gate_up_proj.copy_(dense.gate_up_proj.weight.expand(4, -1, -1))
        layer.experts.down_proj.copy_(dense.down_proj.weight.expand(4, -1, -1))
    x = torch.randn(2, 9, 128)
    torch.testing.assert_close(layer(x), dense(x), rtol=1e-5, atol=1e-6)


def test_layer_reports_aux_loss_and_stats_per_layer() -> None:
    layer = _layer(n_experts=4, top_k=2, capacity_factor=1.0, aux_loss_coef=0.1, z_loss_coef=0.01)
    ctx = MixContext(positions=torch.arange(9), position=None)
    layer.train()(torch.randn(2, 9, 128), ctx)
    stats = {k.removeprefix("moe.layer3."): v for k, v in ctx.stats.items()}
    assert set(stats) == {"tokens_per_expert", "dropped_fraction", "router_entropy", "load_balance_loss", "z_loss"}
    assert stats["tokens_per_expert"].shape == (4,) and stats["tokens_per_expert"].sum() <= 36
    expected = 0.1 * stats["load_balance_loss"] + 0.01 * stats["z_loss"]
    assert len(ctx.aux_losses) == 1 and ctx.aux_losses[0].item() == pytest.approx(expected.item(), rel=1e-6)


def test_shared_expert_is_added_and_always_active() -> None:
    layer = _layer(n_experts=4, top_k=1, shared_expert_hidden=64)
    x = torch.randn(5, 128)
    routed = moe_swiglu(x, layer.router(x), layer.experts.gate_up_proj, layer.experts.down_proj)
    torch.testing.assert_close(layer(x), routed + layer.shared_expert(x))
    assert layer.inactive_params() == 3 * 3 * 128 * 384


# -- the model ---------------------------------------------------------------------------------------
def test_info_hand_checked_0_5Bx8() -> None:
    moe, dense = effzoo.info("moe", size="0.5Bx8"), effzoo.info("gqa", size="0.5B")
    d, hidden, layers, experts = 896, 4864, 24, 8
    expert, router = 3 * d * hidden, d * experts
    assert dense["params"] == 494_032_768
    assert moe["params"] == dense["params"] + layers * ((experts - 1) * expert + router) == 2_690_709_376
    assert moe["active_params"] == dense["params"] + layers * (expert + router) == 807_991_168
    assert moe["forward_flops_per_token"] == dense["forward_flops_per_token"] + 2 * layers * (expert + router)
    assert moe["train_flops_per_token"] == 3 * moe["forward_flops_per_token"]
    assert moe["kv_cache_bytes_per_token"] == dense["kv_cache_bytes_per_token"]
    big = effzoo.info("moe", size="1.5Bx8")
    dense15 = effzoo.info("gqa", size="1.5B")
    assert big["active_params"] == dense15["params"] + 28 * (3 * 1536 * 8960 + 1536 * 8)
    assert big["params"] - big["active_params"] == 28 * 6 * 3 * 1536 * 8960


def test_size_string_selects_moe_and_options_validate() -> None:
    cfg = effzoo.make_config("gqa", size="0.5Bx8")
    assert cfg.ffn == "moe" and cfg.opt("n_experts") == 8 and cfg.opt("top_k") == 2
    assert cfg.opt("moe_ffn_hidden") == 4864 and cfg.opt("router") == "topk" and cfg.opt("capacity_factor") is None
    assert effzoo.make_config("moe", size="tiny", router="noisy").opt("router") == "noisy_topk"
    with pytest.raises(ConfigError, match="router_jitter"):
        effzoo.make_config("moe", size="tiny", router="noisy_topk", router_jitter=0.1)
    with pytest.raises(UnknownNameError, match="Did you mean: topk"):
        effzoo.make_config("moe", size="tiny", router="topkk")
    with pytest.raises(ConfigError, match="top_k <= n_experts"):
        effzoo.build("moe", size="tiny", n_experts=2, top_k=3)
    with pytest.raises(ConfigError, match="capacity_factor"):
        effzoo.build("moe", size="tiny", capacity_factor=0)
    with pytest.raises(ConfigError, match="unknown kernel 'cuda' for variant 'moe'; choose one of auto, reference, sdpa"):
        effzoo.build("moe", size="tiny", kernel="cuda")
    with pytest.raises(ConfigError, match="unknown setting 'moe_backend'; use kernel='reference'"):
        effzoo.build("moe", size="tiny", moe_backend="loop")


@pytest.mark.parametrize("variant", ["gqa", "mqa", "nsa"])
def test_ffn_moe_on_any_variant(variant) -> None:
    if variant not in effzoo.REGISTRY.names("variant"):
        pytest.skip(f"variant {variant} is not registered")
    model = effzoo.build(variant, size="tiny", ffn="moe", n_experts=4, top_k=2, dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (2, 17))
    out = model(ids[:, :-1], targets=ids[:, 1:])
    assert out.aux_loss is not None and torch.isfinite(out.loss)
    out.loss.backward()
    assert model.blocks[0].ffn.router.gate.weight.grad.abs().sum() > 0
    assert {f"moe.layer{i}.router_entropy" for i in range(model.config.n_layers)} <= set(out.stats)


def test_tiny_moe_trains_with_capacity_and_checkpointing() -> None:
    model = effzoo.build("moe", size="tiny", n_layers=2, n_experts=4, capacity_factor=1.25, dtype="float32")
    ids = torch.randint(0, model.config.vocab_size, (4, 33))
    inputs, targets = ids[:, :-1], ids[:, 1:]
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(8):
        optimizer.zero_grad()
        out = model(inputs, targets=targets)
        torch.testing.assert_close(out.loss, out.lm_loss + out.aux_loss)
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    assert losses[-1] < losses[0] - 0.3, losses

    model.zero_grad()
    model.eval()  # no capacity, no jitter: checkpointed and plain backward agree
    model(inputs, targets=targets).loss.backward()
    plain = [p.grad.clone() for p in model.parameters()]
    model.zero_grad()
    model.gradient_checkpointing = True
    model.train()
    model.blocks.eval()
    model(inputs, targets=targets).loss.backward()
    for p, want in zip(model.parameters(), plain):
        torch.testing.assert_close(p.grad, want, rtol=1e-4, atol=1e-6)
