"""The static-shape decoding path and StaticDecoder against the eager cached path and the full forward."""
from __future__ import annotations

import pytest
import torch

import effzoo
from effzoo.errors import ConfigError
from effzoo.model import fast_decode
from effzoo.model.fast_decode import HostSyncError, StaticDecoder, check_static_step
from effzoo.model.parts import build_component
from effzoo.ops.attention import attend

REGISTRY = effzoo.REGISTRY.ensure_loaded()
POSITIONS = REGISTRY.names("position")
VARIANTS = REGISTRY.names("variant")
STATIC_VARIANTS = ["gqa", "mqa", "mha", "pythia"]
CUDA = torch.cuda.is_available()


def _model(variant: str = "gqa", **overrides):
    torch.manual_seed(0)
    return effzoo.build(variant, "tiny", dtype="float32", **overrides).eval()


def _prompt(batch: int = 2, length: int = 6, vocab: int = 512) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(5))


@pytest.mark.parametrize("name", ["alibi", "relative", "none"])
def test_explicit_positions_over_a_larger_buffer_equal_the_slice(name):
    """Queries at 8..10 over a 16-slot buffer whose slots 11..15 hold garbage: causality masks them."""
    cfg = effzoo.make_config("gqa", "tiny", position=name, n_heads=4, n_kv_heads=2)
    position = build_component("position", cfg.position, cfg)
    if isinstance(position, effzoo.plugin.Component):
        position.init_weights()
    g = torch.Generator().manual_seed(1)
    q = torch.randn(2, 4, 3, 16, generator=g)
    k, v = torch.randn(2, 2, 16, 16, generator=g), torch.randn(2, 2, 16, 16, generator=g)
    k[:, :, 11:], v[:, :, 11:] = 1e4, -1e4
    for backend in ("reference", "sdpa"):
        expected = attend(q, k[:, :, :11], v[:, :, :11], position=position, backend=backend)
        got = attend(q, k, v, position=position, backend=backend,
                     q_positions=torch.arange(8, 11), k_positions=torch.arange(16))
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ConfigError, match="explicit"):
        attend(q, k, v, position=position, backend="flex",
               q_positions=torch.arange(8, 11), k_positions=torch.arange(16))


@pytest.mark.parametrize("position", POSITIONS)
def test_static_path_equals_eager_cache_and_full_forward(position):
    model = _model(position=position)
    prompt = _prompt()
    tokens = model.generate(prompt, 8)
    static = StaticDecoder(model, mode="static").generate(prompt, 8)
    assert torch.equal(static, tokens)
    with torch.no_grad():
        full = model(tokens).logits
        eager_cache, static_cache = model.new_cache(2, 14), model.new_cache(2, 17)  # static: spare slots
        eager = [model(tokens[:, :6], cache=eager_cache).logits]
        stepped = [model(tokens[:, :6], cache=static_cache, positions=torch.arange(6)).logits]
        for t in range(6, 14):
            eager.append(model(tokens[:, t:t + 1], cache=eager_cache).logits)
            stepped.append(model(tokens[:, t:t + 1], cache=static_cache, positions=torch.tensor([t])).logits)
    torch.testing.assert_close(torch.cat(stepped, 1), full, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.cat(stepped, 1), torch.cat(eager, 1), rtol=1e-4, atol=1e-5)
    assert static_cache.offset == 0  # the static path leaves host bookkeeping to its caller


def test_positions_without_a_cache_equal_the_default_forward():
    model = _model(position="alibi")
    ids = _prompt()
    with torch.no_grad():
        torch.testing.assert_close(model(ids, positions=torch.arange(6)).logits, model(ids).logits)


@pytest.mark.parametrize("variant,position",
                         [(v, "rope") for v in STATIC_VARIANTS[1:]] + [("gqa", p) for p in POSITIONS])
def test_static_step_has_no_host_sync_and_replays_identically(variant, position):
    model = _model(variant, position=position)
    assert StaticDecoder(model).supported
    check_static_step(model, batch=2)


def test_step_checker_catches_a_host_sync(monkeypatch):
    model = _model(position="learned")
    original = type(model.position).embed

    def syncing_embed(self, x, positions):
        assert int(positions[-1]) < self.table.num_embeddings
        return original(self, x, positions)

    monkeypatch.setattr(type(model.position), "embed", syncing_embed)
    with pytest.raises(HostSyncError, match="_local_scalar_dense"):
        check_static_step(model)


def test_step_checker_catches_a_position_taken_from_the_host(monkeypatch):
    model = _model(position="rope")
    original, calls = type(model.position).prepare, []

    def host_counted_prepare(self, positions):
        calls.append(1)  # a Python-side counter would be frozen into a captured graph
        return original(self, torch.arange(len(calls), len(calls) + positions.shape[0]))

    monkeypatch.setattr(type(model.position), "prepare", host_counted_prepare)
    with pytest.raises(AssertionError, match="differs between positions"):
        check_static_step(model)


@pytest.mark.parametrize("variant", VARIANTS)
def test_fast_generate_gives_the_tokens_of_generate_for_every_variant(variant):
    model = _model(variant)
    prompt = _prompt(batch=1, length=5, vocab=model.config.vocab_size)
    expected = model.generate(prompt, 5)
    decoder = StaticDecoder(model)
    assert torch.equal(model.generate(prompt, 5, fast=True), expected)
    assert decoder.supported or variant not in STATIC_VARIANTS
    if decoder.supported:  # the transformer variants (and any plugin that opted in, e.g. MLA)
        assert torch.equal(StaticDecoder(model, mode="static").generate(prompt, 5), expected)
        check_static_step(model)
    else:  # e.g. MoE (host-synced dispatch), NSA, Mamba, RWKV: the eager loop, on every device
        assert decoder.path(torch.device("cuda")) == "eager"
        with pytest.raises(ConfigError, match="static-shape"):
            StaticDecoder(model, mode="static").generate(prompt, 5)
    if variant == "moe":
        assert not decoder.supported


def test_sampling_with_a_seeded_generator_matches_generate():
    model = _model()
    prompt = _prompt()
    kwargs = dict(temperature=0.8, top_k=50, top_p=0.9)
    expected = model.generate(prompt, 10, generator=torch.Generator().manual_seed(3), **kwargs)
    got = StaticDecoder(model, mode="static").generate(prompt, 10, generator=torch.Generator().manual_seed(3), **kwargs)
    assert torch.equal(got, expected)


def test_eos_stops_where_generate_stops(monkeypatch):
    monkeypatch.setattr(fast_decode, "EOS_POLL_EVERY", 3)
    model = _model()
    prompt = _prompt()
    free = model.generate(prompt, 12)
    for eos in (int(free[0, 8]), int(free[1, 10]), -1):  # row 0's 3rd token, row 1's 5th, never emitted
        expected = model.generate(prompt, 12, eos_token_id=eos)
        got = StaticDecoder(model, mode="static").generate(prompt, 12, eos_token_id=eos)
        assert torch.equal(got, expected), eos


def test_session_is_reused_and_rebuilt_when_needed():
    model = _model()
    decoder = StaticDecoder(model, mode="static")
    decoder.generate(_prompt(), 4)
    first = fast_decode._SESSIONS[model]
    assert first.capacity == fast_decode.SLOT_MULTIPLE
    decoder.generate(_prompt(length=3), 9)
    assert fast_decode._SESSIONS[model] is first
    decoder.generate(_prompt(batch=1), 4)
    assert fast_decode._SESSIONS[model] is not first  # another batch size
    second = fast_decode._SESSIONS[model]
    model.double()
    decoder.generate(_prompt(batch=1), 4)
    assert fast_decode._SESSIONS[model] is not second  # new weight storage


def test_bad_modes_and_requests_are_refused():
    model = _model()
    with pytest.raises(ConfigError, match="'static'"):
        StaticDecoder(model, mode="statik")
    if not CUDA:
        with pytest.raises(ConfigError, match="CUDA"):
            StaticDecoder(model, mode="graph").generate(_prompt(), 2)
    with pytest.raises(ConfigError, match="max_seq_len"):
        StaticDecoder(model, mode="static").generate(_prompt(length=1000), 100)


def test_learned_positions_beyond_the_table_are_refused():
    model = _model(position="learned", max_seq_len=8)
    cache = model.new_cache(1, 16)
    with torch.no_grad():
        model(_prompt(batch=1, length=8), cache=cache)
        with pytest.raises(ConfigError, match="beyond the learned table"):
            model(_prompt(batch=1, length=1), cache=cache)


@pytest.mark.skipif(not CUDA, reason="CUDA-graph capture needs a CUDA device")
@pytest.mark.parametrize("position,compile",
                         [(p, False) for p in ("rope", "alibi", "relative", "learned")] + [("rope", True)])
def test_cuda_graph_decoding_equals_eager(position, compile):
    model = _model(position=position).cuda()
    prompt = _prompt().cuda()
    expected = model.generate(prompt, 20)
    decoder = StaticDecoder(model, mode="graph", compile=compile)
    assert torch.equal(decoder.generate(prompt, 20), expected)
    assert fast_decode._SESSIONS[model].graph is not None
    assert torch.equal(decoder.generate(prompt, 20), expected)  # replayed again from a fresh prefill
    assert decoder.path(prompt.device) == "graph" and torch.equal(model.generate(prompt, 20, fast=True), expected)


def test_static_step_builds_its_causal_mask_once_not_per_layer():
    """Every layer of a static step gets the same position tensors: one mask per step, and a new one when
    the position buffer is written in place (the next token)."""
    from torch.profiler import ProfilerActivity, profile

    model = _model(n_layers=4)
    cache = model.new_cache(1, 16)
    position = torch.tensor([3])
    with torch.no_grad():
        model(_prompt(1, 3), cache=cache, positions=torch.arange(3))
        for step in range(2):
            position.fill_(3 + step)
            with profile(activities=[ProfilerActivity.CPU]) as prof:
                model(_prompt(1, 1), cache=cache, positions=position)
            masks = sum(e.count for e in prof.key_averages() if e.key == "aten::masked_fill")
            assert masks == 1, f"step {step}: {masks} masks for 4 layers"
