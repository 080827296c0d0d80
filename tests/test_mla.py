"""Multi-head latent attention (effzoo_plugins.attention_mla): paths, positions, cache, options, accounting."""
from __future__ import annotations

import pytest
import torch

import effzoo
from model_checks import train_losses
from effzoo.errors import ConfigError
from effzoo.interfaces import MixContext
from effzoo_plugins.attention_mla import LatentCache, MultiHeadLatentAttention, equalise_head_dims

POSITIONS = ["rope", "alibi", "relative", "absolute", "learned", "none"]
VOCAB = 512


def small_mla(**overrides) -> torch.nn.Module:
    """A 2-layer tiny MLA in float32 with a fixed seed."""
    torch.manual_seed(0)
    return effzoo.build("mla", size="tiny", n_layers=2, **overrides)


def tokens(batch: int, length: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, VOCAB, (batch, length), generator=torch.Generator().manual_seed(seed))


def decode_stepwise(model, ids: torch.Tensor, chunks: list[int]) -> torch.Tensor:
    """Logits of ``ids`` fed through the cache in chunks of the given sizes."""
    cache = model.new_cache(ids.shape[0], ids.shape[1])
    outs, start = [], 0
    for size in chunks:
        outs.append(model(ids[:, start:start + size], cache=cache).logits)
        start += size
    assert start == ids.shape[1] and cache.layers[0].length == ids.shape[1]
    return torch.cat(outs, dim=1)


def grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm().clamp_min(1e-12))


# -- registration and presets ------------------------------------------------------------------
@pytest.mark.parametrize("size,d_model,heads,v_dim", [("0.5B", 896, 14, 64), ("1.5B", 1536, 12, 128), ("3B", 2048, 16, 128)])
def test_efficientllm_defaults(size, d_model, heads, v_dim):
    cfg = effzoo.make_config("mla", size)
    assert cfg.attention == "mla" and cfg.n_heads == heads and cfg.n_kv_heads == heads
    assert cfg.opt("kv_lora_rank") == d_model // 8
    assert cfg.opt("qk_nope_head_dim") + cfg.opt("qk_rope_head_dim") == 128
    assert cfg.opt("q_lora_rank") is None and cfg.opt("v_head_dim") == v_dim
    assert cfg.rotary_dim == cfg.opt("qk_rope_head_dim") == 64


def test_deepseek_v2_preset_and_overrides():
    cfg = effzoo.make_config("mla_dsv2", "0.5B")
    picked = {k: cfg.opt(k) for k in ("kv_lora_rank", "q_lora_rank", "qk_nope_head_dim", "qk_rope_head_dim", "v_head_dim")}
    assert picked == dict(kv_lora_rank=512, q_lora_rank=1536, qk_nope_head_dim=128, qk_rope_head_dim=64, v_head_dim=128)
    assert effzoo.info("mla_dsv2", "0.5B")["kv_cache_bytes_per_token"] == 24 * 576 * 2  # 576 values/token/layer
    cfg = effzoo.make_config("mla", "tiny", kv_lora_rank=24, qk_rope_head_dim=16)
    assert cfg.opt("kv_lora_rank") == 24 and cfg.rotary_dim == 16


# -- forward / backward with every position --------------------------------------------------
@pytest.mark.parametrize("position", POSITIONS)
def test_forward_backward_every_position(position):
    model = small_mla(position=position)
    ids = tokens(2, 11)
    out = model(ids, targets=tokens(2, 11, seed=2))
    assert out.logits.shape == (2, 11, VOCAB) and torch.isfinite(out.loss)
    out.loss.backward()
    mixer = model.blocks[0].mixer
    for name in ("q_proj", "kv_down", "kv_up", "out_proj"):
        grad = getattr(mixer, name).weight.grad
        assert grad is not None and torch.isfinite(grad).all() and grad.abs().sum() > 0, name


# -- cached decoding -----------------------------------------------------------------------------
@pytest.mark.parametrize("position", POSITIONS)
@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "materialised"])
def test_cached_decoding_equals_full_forward(position, absorb):
    model = small_mla(position=position, mla_absorb=absorb).eval()
    ids = tokens(2, 12)
    with torch.no_grad():
        full = model(ids).logits
        stepwise = decode_stepwise(model, ids, [5] + [1] * 7)
        chunked = decode_stepwise(model, ids, [3, 4, 1, 4])
    torch.testing.assert_close(stepwise, full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(chunked, full, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("absorb", [True, False], ids=["absorbed", "materialised"])
def test_static_shape_decoding_equals_full_forward(absorb):
    """Explicit device positions (the fast decoder's path): writes at slots, attends over the whole cache."""
    model = small_mla(position="alibi", mla_absorb=absorb).eval()
    ids = tokens(2, 9)
    cache = model.new_cache(2, 12)
    with torch.no_grad():
        full = model(ids).logits
        pieces = [model(ids[:, :5], cache=cache, positions=torch.arange(5)).logits]
        pieces += [model(ids[:, t:t + 1], cache=cache, positions=torch.tensor([t])).logits for t in range(5, 9)]
        no_cache = model(ids, positions=torch.arange(9)).logits
    torch.testing.assert_close(torch.cat(pieces, dim=1), full, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(no_cache, full, rtol=1e-4, atol=1e-4)


def test_cache_holds_only_latent_and_rope_key():
    model = small_mla(kv_lora_rank=24, qk_rope_head_dim=16)
    cache = model.new_cache(batch=3, max_len=10)
    assert all(isinstance(c, LatentCache) for c in cache.layers)
    assert cache.layers[0].entries.shape == (3, 1, 10, 24 + 16)
    with torch.no_grad():
        model(tokens(3, 10), cache=cache)
    with pytest.raises(RuntimeError, match="overflow"):
        cache.layers[0].append(torch.zeros(3, 1, 1, 40))


@pytest.mark.parametrize("position", ["rope", "alibi"])
@pytest.mark.parametrize("q_lora_rank", [None, 48])
def test_absorbed_path_equals_materialised_path(position, q_lora_rank):
    """The two decoding paths of one layer, on the same cached entries, give the same output."""
    model = small_mla(position=position, q_lora_rank=q_lora_rank)
    layer: MultiHeadLatentAttention = model.blocks[1].mixer
    x = torch.randn(2, 9, 128, generator=torch.Generator().manual_seed(3))
    ctx = MixContext(positions=torch.arange(9), position=model.position)
    q_nope, q_rope = layer._queries(x, ctx)
    entries = layer._compress(x, ctx)
    naive = layer.attend_materialised(q_nope, q_rope, entries, ctx)
    absorbed = layer.attend_absorbed(q_nope, q_rope, entries, ctx)
    assert naive.shape == (2, 4, 9, layer.dims.value)
    torch.testing.assert_close(absorbed, naive, rtol=1e-4, atol=1e-5)


def test_generate_runs_with_latent_cache():
    model = small_mla().eval()
    prompt = tokens(1, 4)
    out = model.generate(prompt, 6)
    with torch.no_grad():  # greedy decoding must agree with argmax of the full forward
        full = model(out[:, :-1]).logits.argmax(-1)
    assert torch.equal(full[:, 3:], out[:, 4:])


# -- causality and odd lengths -------------------------------------------------------------------
@pytest.mark.parametrize("position", ["rope", "relative"])
def test_future_tokens_never_change_past_outputs(position):
    model = small_mla(position=position).eval()
    ids = tokens(1, 13)
    changed = ids.clone()
    changed[:, 8:] = (changed[:, 8:] + 1) % VOCAB
    with torch.no_grad():
        a, b = model(ids).logits, model(changed).logits
    torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=1e-6)
    assert not torch.allclose(a[:, 8:], b[:, 8:])


@pytest.mark.parametrize("length", [1, 7, 13])
def test_odd_lengths_reference_vs_sdpa(length):
    model = small_mla(position="alibi").eval()
    ids = tokens(2, length)
    with torch.no_grad():
        ref, fast = model(ids, backend="reference").logits, model(ids, backend="sdpa").logits
    assert ref.shape == (2, length, VOCAB)
    torch.testing.assert_close(fast, ref, rtol=1e-4, atol=1e-4)


# -- backends and padding ------------------------------------------------------------------------
@pytest.mark.parametrize("position", ["rope", "alibi"])
def test_reference_vs_sdpa_outputs_and_gradients(position):
    model = small_mla(position=position, q_lora_rank=40)
    ids, targets = tokens(2, 10), tokens(2, 10, seed=4)
    results = {}
    for backend in ("reference", "sdpa"):
        model.zero_grad()
        out = model(ids, targets=targets, backend=backend)
        out.loss.backward()
        results[backend] = (out.logits.detach(), grads(model))
    torch.testing.assert_close(results["sdpa"][0], results["reference"][0], rtol=1e-4, atol=1e-4)
    assert results["sdpa"][1].keys() == results["reference"][1].keys()
    for name, ref_grad in results["reference"][1].items():
        assert rel_err(results["sdpa"][1][name], ref_grad) < 1e-4, name


def test_flex_forward_matches_reference_with_unequal_head_dims():
    model = small_mla(position="alibi", mla_pad_v=False).eval()  # qk 128, v 32: flex takes them unpadded
    ids = tokens(2, 9)
    with torch.no_grad():
        torch.testing.assert_close(model(ids, backend="flex").logits, model(ids, backend="reference").logits,
                                   rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("v_head_dim", [32, 160], ids=["v<qk", "v>qk"])
def test_padded_head_dims_give_same_outputs_and_gradients(v_head_dim):
    """Padding (what CUDA uses so flash/cuDNN apply to qk dim != v dim) changes nothing."""
    ids, targets = tokens(2, 8), tokens(2, 8, seed=5)
    results = []
    for pad in (False, True):
        model = small_mla(v_head_dim=v_head_dim, mla_pad_v=pad, position="alibi")
        out = model(ids, targets=targets, backend="sdpa")
        out.loss.backward()
        results.append((out.logits.detach(), grads(model)))
    torch.testing.assert_close(results[1][0], results[0][0], rtol=1e-5, atol=1e-5)
    for name, grad in results[0][1].items():
        assert rel_err(results[1][1][name], grad) < 1e-5, name


def test_equalise_head_dims_shapes():
    q, k, v = torch.ones(1, 2, 3, 8), torch.ones(1, 1, 3, 8), torch.ones(1, 1, 3, 5)
    assert [t.shape[-1] for t in equalise_head_dims(q, k, v)] == [8, 8, 8]
    assert [t.shape[-1] for t in equalise_head_dims(q[..., :4], k[..., :4], v)] == [5, 5, 5]


# -- training, save/load ------------------------------------------------------------------------
def test_loss_decreases_on_a_fixed_batch():
    model = small_mla()
    ids = tokens(4, 16)
    losses = train_losses(model, ids, steps=8)
    assert losses[-1] < losses[0] - 0.5, losses


def test_save_load_round_trip(tmp_path):
    model = small_mla(kv_lora_rank=20, q_lora_rank=36, qk_rope_head_dim=8, position="relative").eval()
    model.save_pretrained(str(tmp_path / "mla"))
    loaded = effzoo.from_pretrained(tmp_path / "mla").eval()
    assert loaded.config == model.config and loaded.config.opt("q_lora_rank") == 36
    ids = tokens(2, 7)
    with torch.no_grad():
        assert torch.equal(loaded(ids).logits, model(ids).logits)
        assert torch.equal(decode_stepwise(loaded, ids, [4, 1, 1, 1]), decode_stepwise(model, ids, [4, 1, 1, 1]))


# -- option validation ---------------------------------------------------------------------------
@pytest.mark.parametrize("overrides,message", [
    ({"kv_lora_rnak": 32}, "did you mean 'kv_lora_rank'"),
    ({"rotary_pct": 0.5}, "rotary_pct=0.5 does not apply to MLA"),
    ({"qk_rope_head_dim": 7}, "must be even"),
    ({"qk_rope_head_dim": 0}, "no dims to rotate"),
    ({"qk_rope_head_dim": 0, "qk_nope_head_dim": 0, "position": "none"}, "positive sum"),
    ({"rotary_dim": 32}, "must equal qk_rope_head_dim"),
    ({"n_kv_heads": 2}, "set n_kv_heads=4"),
    ({"kv_lora_rank": 0}, "kv_lora_rank must be positive"),
    ({"q_lora_rank": -1}, "q_lora_rank must be positive"),
    ({"mla_pad_v": "yes"}, "mla_pad_v must be one of"),
    ({"mla_absorb": "no"}, "mla_absorb must be true or false"),
])
def test_option_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        effzoo.build("mla", size="tiny", device="meta", **overrides)


def test_non_rotary_position_may_drop_the_rope_dims():
    model = small_mla(position="alibi", qk_rope_head_dim=0)
    assert model.blocks[0].mixer.cache_bytes_per_token() == 16 * 2
    model(tokens(1, 5), targets=tokens(1, 5)).loss.backward()


def test_mla_options_are_rejected_on_other_attention():
    with pytest.raises(ConfigError, match="kv_lora_rank"):
        effzoo.make_config("gqa", "tiny", kv_lora_rank=16)


# -- accounting ----------------------------------------------------------------------------------
def test_parameter_count_matches_hand_formula():
    # tiny: d=128, H=4, latent c=24, q rank 40, nope n=16, rope r=8, v=32, qkv_bias on, out_bias off, rmsnorm
    d, heads, c, qr, n, r, v = 128, 4, 24, 40, 16, 8, 32
    per_layer_attention = (
        d * qr + qr + qr + qr * heads * (n + r)      # q_down (+bias), q_norm, q_up
        + d * (c + r) + (c + r) + c                  # kv_down (+bias), kv_norm
        + c * heads * (n + v)                        # kv_up
        + heads * v * d                              # out_proj
    )
    per_layer_rest = 2 * d + 3 * d * 384             # two rmsnorms, SwiGLU (gate+up fused, down)
    expected = 4 * (per_layer_attention + per_layer_rest) + VOCAB * d + d  # tied embedding, final norm
    stats = effzoo.info("mla", "tiny", seq_len=256, kv_lora_rank=c, q_lora_rank=qr, qk_nope_head_dim=n, qk_rope_head_dim=r)
    assert stats["params"] == expected
    attention_flops = 4 * 2.0 * heads * (n + r + v) * 256
    assert stats["forward_flops_per_token"] == 2.0 * stats["compute_params"] + attention_flops


def test_cache_bytes_against_gqa_mqa_at_half_billion():
    mla, gqa, mqa = (effzoo.info(v, "0.5B")["kv_cache_bytes_per_token"] for v in ("mla", "gqa", "mqa"))
    assert gqa == 24 * 2 * 2 * 64 * 2 == 12_288 and mqa == 6_144
    assert mla == 24 * (896 // 8 + 64) * 2 == 8_448  # latent 112 + rope key 64 values per layer, bf16


# -- CUDA fast paths (run with `pytest -m gpu` on a GPU machine) --------------------------------
@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("backend,position", [("sdpa", "rope"), ("flex", "alibi"), ("auto", "relative")])
def test_cuda_fast_path_matches_reference_in_bf16(backend, position):
    """SDPA (V padded for flash/cuDNN) and FlexAttention against the reference: outputs and gradients."""
    torch.manual_seed(0)
    model = effzoo.build("mla", size="tiny", n_layers=2, position=position, device="cuda", dtype="bfloat16")
    ids, targets = tokens(2, 67).cuda(), tokens(2, 67, seed=6).cuda()
    results = {}
    for name in ("reference", backend):
        model.zero_grad()
        out = model(ids, targets=targets, backend=name)
        out.loss.backward()
        results[name] = (out.logits.detach().float(), {n: g.float() for n, g in grads(model).items()})
    assert rel_err(results[backend][0], results["reference"][0]) < 2e-2
    for name, ref_grad in results["reference"][1].items():
        assert rel_err(results[backend][1][name], ref_grad) < 5e-2, name
