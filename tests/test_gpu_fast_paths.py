"""Every variant's CUDA fast paths in bf16 and fp16 against the float32 references, outputs and gradients.

The reference is the same model copied to the CPU in float32, where every block runs its PyTorch oracle
(reference attention / SDPA math, reference SSD, the PyTorch RWKV form, NSA's reference branches, the
padded MoE experts). On CUDA the same weights run under autocast through the fast paths that ``auto``
selects there: SDPA flash / cuDNN (MLA's padded V), FlexAttention NSA with its 128-key tiles, the Triton
SSD and RWKV kernels, grouped-GEMM MoE, and the fused linear + cross-entropy loss. Kernel-level
comparisons live beside each kernel (tests/test_mamba.py, test_rwkv.py, test_nsa.py, test_mla.py); this
file covers whole models, the loss, MoE dispatch and CUDA-graph decoding. Run with ``pytest -m gpu``
(benchmarks/gpu_check.py does); everything here skips without a CUDA device.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F

import effzoo
from effzoo.model.fast_decode import StaticDecoder
from effzoo.ops.linear_cross_entropy import linear_cross_entropy

CUDA = torch.cuda.is_available()
pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not CUDA, reason="needs a CUDA device")]
VARIANTS = effzoo.list_variants()
LENGTH = 300  # over two 128-key NSA tiles, several Triton chunks (64 RWKV, 256 SSD)
TOLERANCE = {torch.bfloat16: (3e-2, 8e-2), torch.float16: (1e-2, 4e-2)}  # (outputs, gradients) relative


def rel_error(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.detach().double().cpu(), want.detach().double().cpu()
    return float((got - want).norm() / want.norm().clamp(min=1e-12))


def _outputs_and_grads(model: torch.nn.Module, ids: torch.Tensor, dtype: torch.dtype | None):
    model.zero_grad(set_to_none=True)
    device = ids.device.type
    with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
        out = model(ids[:, :-1], targets=ids[:, 1:])
    out.loss.backward()
    grads = {name: p.grad.detach().float().cpu() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach().float().cpu(), out.loss.detach().float().cpu(), grads


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
@pytest.mark.parametrize("variant", VARIANTS)
def test_variant_fast_paths_match_the_float32_reference(variant, dtype):
    torch.manual_seed(0)
    reference = effzoo.build(variant, "tiny", dtype="float32", max_seq_len=1024)
    fast = copy.deepcopy(reference).cuda()
    ids = torch.randint(0, reference.config.vocab_size, (2, LENGTH + 1))
    want_logits, want_loss, want_grads = _outputs_and_grads(reference, ids, None)
    got_logits, got_loss, got_grads = _outputs_and_grads(fast, ids.cuda(), dtype)
    out_tol, grad_tol = TOLERANCE[dtype]
    assert rel_error(got_logits, want_logits) < out_tol
    assert abs(float(got_loss - want_loss)) < out_tol * float(want_loss)
    assert set(got_grads) == set(want_grads)
    bad = {name: rel_error(got_grads[name], want) for name, want in want_grads.items()
           if want.norm() > 1e-6 and rel_error(got_grads[name], want) >= grad_tol}
    assert not bad, f"{variant} {dtype}: gradients off: {bad}"


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_fused_loss_matches_the_unfused_head_and_loss(dtype):
    torch.manual_seed(0)
    hidden = torch.randn(1000, 256, device="cuda", requires_grad=True)
    weight = (torch.randn(32000, 256, device="cuda") * 0.05).requires_grad_()
    targets = torch.randint(0, 32000, (1000,), device="cuda")
    targets[::7] = -100
    results = []
    for fused in (True, False):
        hidden.grad = weight.grad = None
        with torch.autocast("cuda", dtype=dtype):
            if fused:
                loss = linear_cross_entropy(hidden, weight, targets, rows=256)
            else:
                loss = F.cross_entropy((hidden @ weight.T).float(), targets, ignore_index=-100)
        loss.backward()
        results.append((loss.detach(), hidden.grad.clone(), weight.grad.clone()))
    (loss_f, gh_f, gw_f), (loss_u, gh_u, gw_u) = results
    assert abs(float(loss_f - loss_u)) < 1e-3 * float(loss_u)
    assert rel_error(gh_f, gh_u) < 1e-2 and rel_error(gw_f, gw_u) < 1e-2


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_grouped_gemm_moe_matches_the_padded_experts(dtype):
    from effzoo_plugins.moe.dispatch import grouped_mm_supported

    torch.manual_seed(0)
    model = effzoo.build("moe", "tinyx8", dtype="float32").cuda()
    block = next(b for b in model.blocks if hasattr(getattr(b, "ffn", None), "experts"))
    experts = block.ffn.experts
    x = torch.randn(2, 64, model.config.d_model, device="cuda", dtype=dtype)
    if not grouped_mm_supported(x.flatten(0, 1), experts.gate_up_proj.to(dtype), experts.down_proj.to(dtype)):
        pytest.skip(f"torch._grouped_mm is not usable here for {dtype}")
    results = []
    for backend in ("grouped_mm", "bmm"):
        ffn = copy.deepcopy(block.ffn).to(dtype)
        ffn.backend = backend
        leaf = x.clone().requires_grad_()
        out = ffn(leaf)
        out.float().square().sum().backward()
        results.append((out.detach(), leaf.grad, {n: p.grad for n, p in ffn.named_parameters() if p.grad is not None}))
    (out_g, gx_g, gp_g), (out_b, gx_b, gp_b) = results
    assert rel_error(out_g, out_b) < 1e-2 and rel_error(gx_g, gx_b) < 2e-2
    for name, want in gp_b.items():
        assert rel_error(gp_g[name], want) < 2e-2, name


@pytest.mark.parametrize("variant", VARIANTS)
def test_cuda_graph_decode_equals_eager_decode(variant):
    torch.manual_seed(0)
    model = effzoo.build(variant, "tiny", dtype="float32", device="cuda").eval()
    decoder = StaticDecoder(model, mode="auto")
    if not decoder.supported:
        pytest.skip(f"{variant}: no static-shape decoding (the fast path is the eager loop)")
    assert decoder.path(torch.device("cuda")) == "graph"
    prompt = torch.randint(0, model.config.vocab_size, (2, 12), device="cuda")
    eager = StaticDecoder(model, mode="eager").generate(prompt, 24)
    assert torch.equal(decoder.generate(prompt, 24), eager)
    assert torch.equal(decoder.generate(prompt, 24), eager)  # replayed from the cached capture
