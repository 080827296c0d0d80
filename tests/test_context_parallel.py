"""Context parallel (--cp) without processes: the decoder's training-positions path, the components that
declare support (and those that refuse, by name), and the one-line refusals before any work."""
from __future__ import annotations

import pytest
import torch

import effzoo
from effzoo.cli import main
from effzoo.errors import ConfigError
from effzoo.train import context_parallel
from effzoo.train.context_parallel import check_sequence_split, context_parallel_blocker

MODEL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}


@pytest.mark.parametrize("position", ["rope", "learned", "absolute", "none"])
def test_token_positions_of_the_whole_sequence_equal_the_default_forward(position):
    torch.manual_seed(0)
    model = effzoo.build("gqa", "tiny", position=position, **MODEL)
    ids, targets = torch.randint(0, 100, (2, 16)), torch.randint(0, 100, (2, 16))
    outputs, grads = [], []
    for positions in (None, torch.arange(16)):
        model.zero_grad()
        out = model(ids, targets, token_positions=positions)
        out.loss.backward()
        outputs.append(out.logits.detach())
        grads.append([p.grad.clone() for p in model.parameters()])
    torch.testing.assert_close(outputs[1], outputs[0], rtol=0, atol=0)
    for mine, reference in zip(grads[1], grads[0]):
        torch.testing.assert_close(mine, reference, rtol=0, atol=0)


def test_token_positions_place_a_shard_in_its_sequence():
    # the second half of a sequence alone, at positions 8..15, attends only to itself: under RoPE that
    # equals the full forward of those 8 tokens placed at 0..7 (relative positions), not of other places
    torch.manual_seed(0)
    model = effzoo.build("gqa", "tiny", **MODEL).eval()
    ids = torch.randint(0, 100, (1, 8))
    at_start = model(ids).logits
    shifted = model(ids, token_positions=torch.arange(8, 16)).logits
    torch.testing.assert_close(shifted, at_start, rtol=1e-4, atol=1e-4)  # RoPE is relative
    learned = effzoo.build("gqa", "tiny", position="learned", **MODEL).eval()
    assert not torch.allclose(learned(ids, token_positions=torch.arange(8, 16)).logits, learned(ids).logits)
    with pytest.raises(ConfigError, match="no cache"):
        model(ids, cache=model.new_cache(1, 16), token_positions=torch.arange(8))


@pytest.mark.parametrize("variant, overrides, blocker", [
    ("gqa", {}, None), ("mha", {}, None), ("mqa", {}, None), ("pythia", {}, None), ("moe", {}, None),
    ("gqa", {"position": "learned"}, None), ("gqa", {"position": "absolute"}, None), ("gqa", {"position": "none"}, None),
    ("gqa", {"position": "alibi"}, "ALiBi (at position)"),
    ("gqa", {"position": "relative"}, "RelativeBias (at position)"),
    ("mla", {}, "MultiHeadLatentAttention (at blocks.0.mixer)"),
    ("nsa", {}, "NativeSparseAttention (at blocks.0.mixer)"),
    ("mamba", {}, "MambaBlock (at blocks.0)"), ("rwkv", {}, "RWKV7Block (at blocks.0)"),
])
def test_components_declare_context_parallel_support(variant, overrides, blocker):
    assert context_parallel_blocker(effzoo.build(variant, "tiny", device="meta", **overrides)) == blocker


def test_sequence_must_split_into_two_chunks_per_rank():
    check_sequence_split(32, 2)
    with pytest.raises(ConfigError, match="--seq-len 30 is not a multiple of 4"):
        check_sequence_split(30, 2)


def _refusal(monkeypatch, capsys, tmp_path, *flags: str, world: int = 2) -> str:
    """The one-line ``effzoo train`` error of a --cp run, before any process group exists, as if on a
    CUDA machine (so the checks after the device's are reached)."""
    monkeypatch.setattr(context_parallel, "check_device", lambda backend: None)
    monkeypatch.setenv("WORLD_SIZE", str(world))
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("LOCAL_RANK", "0")
    model = [f"--set={k}={v}" for k, v in MODEL.items()]
    code = main(["train", "gqa", "--size", "tiny", "--steps", "2", "--seq-len", "16", "--batch-size", "4",
                 "--out", str(tmp_path / "run"), "--no-tensorboard", "--quiet", "--cp", "2", *model, *flags])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert err.startswith("effzoo train: error: ")
    assert not torch.distributed.is_initialized()
    return err


@pytest.mark.parametrize("flags, expected", [
    (["--set=position=alibi"], "ALiBi (at position) declares no context-parallel support"),
    (["--set=kernel=reference"], "kernel=reference is not scaled_dot_product_attention"),
    (["--compile"], "--cp 2 with --compile"),
    (["--seq-len", "18"], "--seq-len 18 is not a multiple of 4"),
])
def test_unsupported_cp_runs_fail_in_one_line(monkeypatch, capsys, tmp_path, flags, expected):
    assert expected in _refusal(monkeypatch, capsys, tmp_path, *flags)


def test_cp_with_pp_fails_in_one_line(monkeypatch, capsys, tmp_path):
    err = _refusal(monkeypatch, capsys, tmp_path, "--pp", "2", "--grad-accum", "2", world=4)
    assert "--cp 2 with --pp 2" in err
