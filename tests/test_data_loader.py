"""TokenLoader: shapes, shift, rank sharding, determinism, exact resume; the embedded corpus."""
import numpy as np
import pytest
import torch

from effzoo.data import DataError, ShardedTokens, TokenLoader, embedded_dataset
from effzoo.errors import ConfigError

TOKENS = np.arange(5000, dtype=np.uint16) % 997


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_batches_are_shifted_windows(mode):
    loader = TokenLoader(TOKENS, seq_len=16, batch_size=3, seed=1, mode=mode)
    inputs, targets = next(loader)
    assert inputs.shape == targets.shape == (3, 16) and inputs.dtype == torch.int64
    assert torch.equal(inputs[:, 1:], targets[:, :-1])
    for row in range(3):
        start = int(np.flatnonzero(TOKENS == inputs[row, 0].item())[0])
        assert torch.equal(inputs[row], torch.from_numpy(TOKENS[start:start + 16].astype(np.int64)))
    assert loader.tokens_per_batch == 48


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_two_ranks_see_the_samples_of_one_rank_with_double_batch(mode):
    one = TokenLoader(TOKENS, 16, 4, seed=3, mode=mode)
    ranks = [TokenLoader(TOKENS, 16, 2, rank=r, world_size=2, seed=3, mode=mode) for r in range(2)]
    for _ in range(50):  # crosses several epochs in packed mode
        x, y = next(one)
        parts = [next(r) for r in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))
        assert not torch.equal(parts[0][0], parts[1][0])


def test_packed_epoch_visits_every_window_once():
    loader = TokenLoader(TOKENS, 100, 7, seed=0, mode="packed")
    n = loader.num_windows
    starts = np.concatenate([loader.global_starts(k) for k in range(n // 7)])
    assert len(set(starts.tolist())) == len(starts)
    assert set(starts.tolist()) <= set(range(0, n * 100, 100))
    ordered = TokenLoader(TOKENS, 100, 7, mode="packed", shuffle=False)
    assert ordered.global_starts(0).tolist() == [0, 100, 200, 300, 400, 500, 600]


@pytest.mark.parametrize("mode", ["random", "packed"])
def test_resume_yields_the_uninterrupted_batches(mode):
    straight = TokenLoader(TOKENS, 32, 4, seed=7, mode=mode)
    expected = [next(straight) for _ in range(60)]
    first = TokenLoader(TOKENS, 32, 4, seed=7, mode=mode)
    for _ in range(23):
        next(first)
    state = first.state_dict()
    resumed = TokenLoader(TOKENS, 32, 4, seed=7, mode=mode)
    resumed.load_state_dict(state)
    for x, y in expected[23:]:
        rx, ry = next(resumed)
        assert torch.equal(x, rx) and torch.equal(y, ry)
    # resuming on two ranks with the same global batch is also exact
    halves = [TokenLoader(TOKENS, 32, 2, rank=r, world_size=2, seed=7, mode=mode) for r in range(2)]
    for h in halves:
        h.load_state_dict(state)
    assert torch.equal(torch.cat([next(h)[0] for h in halves]), expected[23][0])


def test_seed_changes_order_and_bad_states_are_refused():
    a, b = TokenLoader(TOKENS, 16, 4, seed=0), TokenLoader(TOKENS, 16, 4, seed=1)
    assert not torch.equal(next(a)[0], next(b)[0])
    with pytest.raises(ConfigError, match="seed"):
        b.load_state_dict(a.state_dict())
    with pytest.raises(ConfigError, match="mode"):
        TokenLoader(TOKENS, 16, 4, mode="randon")
    with pytest.raises(DataError, match="cannot fill one window"):
        TokenLoader(TOKENS[:10], 16, 4)


def test_out_of_vocabulary_tokens_are_named():
    loader = TokenLoader(TOKENS, 16, 4, vocab_size=500, mode="packed", shuffle=False)
    with pytest.raises(DataError, match="outside the vocabulary"):
        for _ in range(100):
            next(loader)


def test_sharded_tokens_slices_across_shards():
    parts = [np.arange(0, 7), np.arange(7, 10), np.zeros(0, dtype=np.int64), np.arange(10, 30)]
    joined = ShardedTokens(parts)
    assert len(joined) == 30 and joined[8] == 8 and joined[-1] == 29
    for lo, hi in [(0, 30), (5, 12), (7, 10), (9, 11), (29, 30), (3, 3)]:
        assert joined[lo:hi].tolist() == list(range(lo, hi))
    loader = TokenLoader(joined, 5, 2, mode="packed", shuffle=False)
    assert next(loader)[0].tolist() == [[0, 1, 2, 3, 4], [5, 6, 7, 8, 9]]


def test_embedded_dataset_fits_the_tiny_vocabulary():
    ds = embedded_dataset()
    assert ds.vocab_size == 257 and ds.eos_id == 256 and ds.tokenizer == "byte"
    assert 150_000 < len(ds.train) < 400_000 and len(ds.val) > 5_000
    assert int(np.max(ds.train)) <= 256 and (np.asarray(ds.train) == 256).sum() > 100
    assert embedded_dataset() is ds  # cached
    x, y = next(ds.loader("val", 64, 2))
    assert x.shape == (2, 64)
