"""NSA plugin: reference oracle, FlexAttention/dense fast path, cache, options (tiny shapes, CPU)."""
from __future__ import annotations

import math

import pytest
import torch

import effzoo
from model_checks import train_losses
from effzoo.errors import ConfigError, UnknownNameError
from effzoo.interfaces import MixContext
from effzoo.ops.attention import reference_attention
from effzoo_plugins.attention_nsa import flex
from effzoo_plugins.attention_nsa.layer import NativeSparseAttention
from effzoo_plugins.attention_nsa.reference import (
    Selection, compressed_allowed, compressed_block_ends, key_positions, nsa_branches, overlap_matrix,
    select_blocks, selected_allowed, window_allowed,
)
from effzoo_plugins.attention_nsa.settings import NSASettings
from effzoo_plugins.positions import RotaryEncoding

SMALL = dict(nsa_compress_block=8, nsa_compress_stride=4, nsa_select_block=8, nsa_selected_blocks=3,
             nsa_initial_blocks=1, nsa_local_blocks=1, nsa_window=8)
SETTINGS = NSASettings(compress_block=8, compress_stride=4, select_block=8, selected_blocks=3,
                       initial_blocks=1, local_blocks=1, window=8, compress_hidden=16)


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.double() - b.double()).norm() / b.double().norm().clamp(min=1e-12))


def branch_inputs(batch=2, groups=2, ratio=2, length=37, dim=16, settings=SETTINGS, seed=0, dtype=torch.float64):
    """Random queries, raw keys/values and compressed keys/values (compressor = block mean)."""
    gen = torch.Generator().manual_seed(seed)
    rand = lambda *shape: torch.randn(*shape, generator=gen, dtype=dtype)  # noqa: E731
    q = rand(batch, groups, ratio, length, dim)
    k, v = rand(batch, groups, length, dim), rand(batch, groups, length, dim)
    n_cmp = settings.n_compressed(length)
    blocks = lambda x: x.unfold(2, settings.compress_block, settings.compress_stride).mean(-1)  # noqa: E731
    k_cmp, v_cmp = (blocks(x) if n_cmp else x[:, :, :0] for x in (k, v))
    return q, torch.arange(length), (k_cmp, v_cmp), (k, v), (k, v, 0)


def tiny_layer(dtype=torch.float64, **options):
    cfg = effzoo.make_config("nsa", "tiny", **{**SMALL, **options})
    torch.manual_seed(0)
    layer = NativeSparseAttention(cfg).to(dtype)
    for module in layer.modules():
        if isinstance(module, torch.nn.Linear):
            torch.nn.init.normal_(module.weight, 0.0, 0.2)
    for compressor in (layer.compress_k, layer.compress_v):
        torch.nn.init.normal_(compressor.position, 0.0, 0.2)
    return cfg, layer, RotaryEncoding(cfg)


def context(position, length, offset=0, backend="reference"):
    return MixContext(positions=torch.arange(offset, offset + length), position=position, backend=backend)


# -- selection ---------------------------------------------------------------------------------
def test_selection_is_causal_and_keeps_initial_and_local_blocks():
    q, q_pos, cmp, slc, win = branch_inputs(length=45)
    sel = nsa_branches(q, q_pos, cmp, slc, win, SETTINGS, 0.25).selection
    assert sel.blocks.shape == (2, 2, 45, 3)  # one selection per (batch, group, query): shared by the r heads
    current = (q_pos // 8)[None, None, :, None]
    chosen = torch.where(sel.valid, sel.blocks, -1)
    assert bool((chosen <= current).all()), "a query selected a block from its future"
    assert bool((chosen == 0).any(-1).all()) and bool((chosen == current).any(-1).all())
    visible = (q_pos // 8 + 1).clamp(max=3)
    assert torch.equal(sel.valid.sum(-1), visible.expand(2, 2, 45))


def test_top_n_follows_compressed_importance():
    settings = NSASettings(compress_block=4, compress_stride=4, select_block=4, selected_blocks=2,
                           initial_blocks=0, local_blocks=0, window=4, compress_hidden=4)
    importance = torch.tensor([[[[0.1, 0.7, 0.2, 0.0, 0.0]]]])  # one query at position 19 (block 4)
    sel = select_blocks(importance, torch.tensor([19]), settings)
    assert sorted(sel.blocks.flatten().tolist()) == [1, 2]


def test_overlap_matrix_spreads_compressed_blocks_over_selection_blocks():
    paper = NSASettings()
    overlap = overlap_matrix(6, 2, paper, torch.device("cpu"))  # blocks [16i, 16i + 32) vs [0, 64), [64, 128)
    assert overlap[:, 0].tolist() == [32, 32, 32, 16, 0, 0] and overlap[:, 1].tolist() == [0, 0, 0, 16, 32, 32]
    same = NSASettings(compress_block=8, compress_stride=8, select_block=8, selected_blocks=2, local_blocks=1)
    assert torch.equal(overlap_matrix(4, 4, same, torch.device("cpu")), 8 * torch.eye(4))


# -- reference against dense attention -------------------------------------------------------------
def test_all_blocks_and_full_window_equal_dense_causal_attention():
    length = 29
    settings = NSASettings(compress_block=8, compress_stride=4, select_block=8, selected_blocks=4,
                           initial_blocks=1, local_blocks=1, window=length, compress_hidden=8)
    q, q_pos, cmp, slc, win = branch_inputs(ratio=3, length=length, settings=settings, dtype=torch.float32)
    out = nsa_branches(q, q_pos, cmp, slc, win, settings, 0.25)
    k, v = slc
    dense = reference_attention(q.flatten(1, 2), k, v, causal=True, scale=0.25).view_as(q)
    torch.testing.assert_close(out.selected, dense)
    torch.testing.assert_close(out.window, dense)


def test_compressed_branch_sees_only_complete_blocks():
    q, q_pos, cmp, slc, win = branch_inputs(length=21)
    out = nsa_branches(q, q_pos, cmp, slc, win, SETTINGS, 0.25)
    assert out.compressed[..., :7, :].abs().max() == 0  # block 0 = tokens 0..7 completes at position 7
    k_cmp, v_cmp = cmp
    for t in (10, 20):
        visible = 1 + (t - 7) // 4  # blocks ending at 7, 11, 15, 19, ...
        probs = torch.softmax(torch.einsum("bgrd,bgkd->bgrk", q[..., t, :], k_cmp[:, :, :visible]) * 0.25, -1)
        expected = torch.einsum("bgrk,bgkd->bgrd", probs, v_cmp[:, :, :visible])
        torch.testing.assert_close(out.compressed[..., t, :], expected)


# -- fast path ---------------------------------------------------------------------------------
def folded(mask: torch.Tensor, ratio: int) -> torch.Tensor:
    """(…, Tq, Tk) per position -> (…, Tq·r, Tk) per folded row."""
    return mask.repeat_interleave(ratio, dim=-2)


@pytest.mark.parametrize("ratio,length,offset,q_block", [(2, 37, 0, 16), (7, 23, 0, 16), (7, 19, 9, 4), (3, 40, 5, 32)],
                         ids=lambda v: str(v))
def test_block_patterns_equal_the_reference_masks(ratio, length, offset, q_block):
    """Block tables never drop an allowed pair, full tiles hold only allowed pairs: dense() == exact mask."""
    total = offset + length
    q, _, cmp, slc, _ = branch_inputs(ratio=ratio, length=total)
    q_pos = torch.arange(offset, total)
    n_blocks, n_cmp = SETTINGS.n_select_blocks(total), cmp[0].shape[2]
    probs_q = q[:, :, :, offset:]
    selection = flex.choose_blocks(probs_q, q_pos, cmp[0], n_blocks, SETTINGS, 0.25)
    k_pos = key_positions(0, total, q.device)

    win = flex.window_pattern(length, ratio, offset, total, 0, SETTINGS.window, q_block, kv_block=8)
    assert torch.equal(win.dense()[0, 0], folded(window_allowed(q_pos, k_pos, SETTINGS.window), ratio))
    ends = compressed_block_ends(n_cmp, SETTINGS, q.device)
    cmp_pattern = flex.compressed_pattern(length, ratio, offset, n_cmp, SETTINGS, q_block, kv_block=2)
    assert torch.equal(cmp_pattern.dense()[0, 0], folded(compressed_allowed(q_pos, ends), ratio))
    want = folded(selected_allowed(q_pos, k_pos, selection, 8, n_blocks), ratio)
    for kv_block in (8, 16):  # key tile = selection block, or two blocks per tile (as 128 vs 64 on CUDA)
        slc_pattern = flex.selected_pattern(selection, ratio, offset, total, SETTINGS, q_block, kv_block=kv_block)
        assert torch.equal(slc_pattern.dense(), want)
        assert bool(slc_pattern.full.any()) and bool(slc_pattern.partial.any())  # both tile kinds exercised


@pytest.mark.parametrize("ratio,length", [(2, 37), (7, 26)], ids=lambda v: str(v))
def test_dense_fast_path_matches_reference_outputs_and_gradients(ratio, length):
    inputs = branch_inputs(ratio=ratio, length=length)
    leaves = [inputs[0], *inputs[2], *inputs[3]]
    for leaf in leaves:
        leaf.requires_grad_(True)
    q, q_pos, cmp, slc, win = inputs
    ref = nsa_branches(q, q_pos, cmp, slc, (*slc, 0), SETTINGS, 0.25)
    fast = flex.nsa_branches_fast(q, q_pos, cmp, slc, (*slc, 0), SETTINGS, 0.25, kernel="dense", q_block=16)
    assert torch.equal(fast.selection.blocks, ref.selection.blocks)
    weights = [torch.randn_like(ref.compressed) for _ in range(3)]
    for name, w in zip(("compressed", "selected", "window"), weights):
        torch.testing.assert_close(getattr(fast, name), getattr(ref, name))
    def loss(out):
        return sum((w * o).sum() for w, o in zip(weights, (out.compressed, out.selected, out.window)))

    grads_ref = torch.autograd.grad(loss(ref), leaves)
    grads_fast = torch.autograd.grad(loss(fast), leaves)
    for g_fast, g_ref in zip(grads_fast, grads_ref):
        assert rel_error(g_fast, g_ref) < 1e-10


def test_flex_forward_matches_reference_on_cpu():
    q, q_pos, cmp, slc, win = branch_inputs(ratio=2, length=37, dim=16, dtype=torch.float32)
    ref = nsa_branches(q, q_pos, cmp, slc, win, SETTINGS, 0.25)
    fast = flex.nsa_branches_fast(q, q_pos, cmp, slc, win, SETTINGS, 0.25, kernel="flex", q_block=16)
    for name in ("compressed", "selected", "window"):
        assert rel_error(getattr(fast, name), getattr(ref, name)) < 1e-5, name


def test_flex_backward_on_cpu_is_refused_clearly():
    q, q_pos, cmp, slc, win = branch_inputs(length=20, dtype=torch.float32)
    q.requires_grad_(True)
    with pytest.raises(ConfigError, match="no backward on CPU"):
        flex.nsa_branches_fast(q, q_pos, cmp, slc, win, SETTINGS, 0.25, kernel="flex")


# -- the layer ---------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["reference", "sdpa"])
def test_future_tokens_never_change_past_outputs(backend):
    _, layer, rope = tiny_layer()
    x = torch.randn(1, 30, 128, dtype=torch.float64)
    changed = x.clone()
    changed[:, 17:] = torch.randn(1, 13, 128, dtype=torch.float64)
    y, _ = layer(x, context(rope, 30, backend=backend))
    y2, _ = layer(changed, context(rope, 30, backend=backend))
    torch.testing.assert_close(y[:, :17], y2[:, :17])
    assert (y[:, 17:] - y2[:, 17:]).abs().max() > 1e-3


def test_layer_backends_agree_with_gqa_ratio_seven():
    _, layer, rope = tiny_layer(d_model=112, n_heads=14, n_kv_heads=2)
    x = torch.randn(2, 27, 112, dtype=torch.float64, requires_grad=True)
    y_ref, _ = layer(x, context(rope, 27))
    (g_ref,) = torch.autograd.grad(y_ref.square().sum(), x)
    y_fast, _ = layer(x, context(rope, 27, backend="sdpa"))
    (g_fast,) = torch.autograd.grad(y_fast.square().sum(), x)
    torch.testing.assert_close(y_fast, y_ref)
    torch.testing.assert_close(g_fast, g_ref)
    grads = torch.autograd.grad(layer(x, context(rope, 27))[0].sum(), list(layer.parameters()))
    assert all(g.abs().sum() > 0 for g in grads), "every parameter (compressors and gates included) gets a gradient"


@pytest.mark.parametrize("shared_kv", [False, True], ids=["separate_kv", "shared_kv"])
def test_cached_decoding_equals_full_forward(shared_kv):
    model = effzoo.build("nsa", "tiny", n_layers=2, nsa_shared_kv=shared_kv, **SMALL).double().eval()
    ids = torch.randint(0, 512, (2, 41), generator=torch.Generator().manual_seed(1))
    full = model(ids).logits
    cache = model.new_cache(2, 48)
    pieces = [model(ids[:, :13], cache=cache).logits]
    pieces += [model(ids[:, t:t + 1], cache=cache).logits for t in range(13, 24)]
    pieces.append(model(ids[:, 24:41], cache=cache).logits)  # a multi-token chunk after decoding
    torch.testing.assert_close(torch.cat(pieces, dim=1), full)
    layer_cache = cache.layers[0]
    assert layer_cache.n_compressed == SETTINGS.n_compressed(41)
    if not shared_kv:
        assert layer_cache.window.k.shape[2] == SETTINGS.window - 1
        assert layer_cache.pending.k.shape[2] < SETTINGS.compress_block


def test_generate_runs_with_the_nsa_cache():
    model = effzoo.build("nsa", "tiny", n_layers=2, **SMALL).eval()
    out = model.generate(torch.randint(0, 512, (1, 5)), max_new_tokens=12)
    assert out.shape == (1, 17)


def test_loss_decreases_on_a_fixed_batch():
    torch.manual_seed(0)
    model = effzoo.build("nsa", "tiny", n_layers=1, **SMALL)
    ids = torch.randint(0, 512, (2, 25))
    losses = train_losses(model, ids, steps=6)
    assert losses[-1] < 0.8 * losses[0]


# -- registration and options ------------------------------------------------------------------
@pytest.mark.parametrize("size", ["0.5B", "1.5B", "3B"])
def test_builds_at_every_size(size):
    model = effzoo.build("nsa", size, device="meta")
    attention = model.blocks[0].mixer
    assert isinstance(attention, NativeSparseAttention) and attention.settings == NSASettings(
        compress_hidden=model.config.head_dim)


def test_presets_and_overrides():
    eff = effzoo.make_config("nsa", "tiny", nsa_preset="efficientllm").options
    assert (eff["nsa_window"], eff["nsa_compress_block"], eff["nsa_selected_blocks"]) == (128, 64, 4)
    assert effzoo.make_config("nsa", "tiny", nsa_preset="efficientllm", nsa_window=64).options["nsa_window"] == 64
    info = effzoo.info("nsa", "0.5B")
    per_vector = 2 * 64 * 2
    assert info["kv_cache_bytes_per_token"] == 24 * (2 * per_vector + math.ceil(2 * per_vector / 16))


@pytest.mark.parametrize("options,error,match", [
    ({"nsa_preset": "papr"}, UnknownNameError, "paper"),
    ({"nsa_windw": 4}, ConfigError, "nsa_window"),
    ({"nsa_compress_stride": 40}, ConfigError, "skip"),
    ({"nsa_selected_blocks": 2}, ConfigError, "always selected"),
    ({"nsa_window": 0}, ConfigError, "positive"),
    ({"nsa_shared_kv": "yes"}, ConfigError, "true or false"),
    ({"position": "alibi"}, ConfigError, "does not support position 'alibi'"),
], ids=lambda v: str(v)[:24])
def test_bad_options_are_rejected(options, error, match):
    with pytest.raises(error, match=match):
        effzoo.build("nsa", "tiny", device="meta", **options)


def test_nsa_attention_on_another_recipe_still_refuses_score_biases():
    with pytest.raises(ConfigError, match="score-bias"):
        effzoo.build("mha", "tiny", device="meta", attention="nsa", position="relative")


def test_a_given_selection_is_used_by_both_paths():
    q, q_pos, cmp, slc, win = branch_inputs(length=33, dtype=torch.float32)
    chosen = Selection(blocks=torch.zeros(2, 2, 33, 1, dtype=torch.long),
                       valid=torch.ones(2, 2, 33, 1, dtype=torch.bool))
    settings = NSASettings(compress_block=8, compress_stride=4, select_block=8, selected_blocks=1,
                           initial_blocks=1, local_blocks=0, window=8, compress_hidden=8)
    ref = nsa_branches(q, q_pos, cmp, slc, win, settings, 0.25, selection=chosen)
    fast = flex.nsa_branches_fast(q, q_pos, cmp, slc, win, settings, 0.25, selection=chosen, kernel="dense", q_block=8)
    torch.testing.assert_close(fast.selected, ref.selected)
    k, v = slc
    first_block = reference_attention(q[..., :8, :].flatten(1, 2), k[:, :, :8], v[:, :, :8], scale=0.25)
    torch.testing.assert_close(ref.selected[..., :8, :], first_block.view_as(q[..., :8, :]))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="FlexAttention backward needs CUDA")
def test_flex_matches_reference_in_bf16_on_cuda():
    settings = NSASettings(compress_hidden=128)
    q, q_pos, cmp, slc, win = branch_inputs(batch=1, groups=2, ratio=7, length=1000, dim=64, settings=settings,
                                            dtype=torch.float32)
    leaves = [t.cuda().to(torch.bfloat16).requires_grad_(True) for t in (q, *cmp, *slc)]
    q, k_cmp, v_cmp, k, v = leaves
    q_pos = q_pos.cuda()
    fast = flex.nsa_branches_fast(q, q_pos, (k_cmp, v_cmp), (k, v), (k, v, 0), settings, 0.125)
    ref = nsa_branches(q, q_pos, (k_cmp, v_cmp), (k, v), (k, v, 0), settings, 0.125, selection=fast.selection)
    for name in ("compressed", "selected", "window"):
        assert rel_error(getattr(fast, name), getattr(ref, name)) < 2e-2, name
    def total(out):
        return out.compressed.float().sum() + out.selected.float().square().sum() + out.window.float().sum()

    for g_fast, g_ref in zip(torch.autograd.grad(total(fast), leaves), torch.autograd.grad(total(ref), leaves)):
        assert rel_error(g_fast, g_ref) < 2e-2
