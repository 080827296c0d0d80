"""MQAR examples generated in-process from a seed.

A sequence starts with ``kv_pairs`` key-value pairs ``k1 v1 k2 v2 ...``; the rest is random filler
tokens in which every key is asked once: the key appears at a random slot and the next token is its
value. Keys come from the lower half of the vocabulary (token 0 is never used), values and filler from
the upper half, so a key appears only in its pair and its query; keys within a sequence are distinct. The model reads ``inputs = seq[:-1]`` and is scored only
where ``seq[t + 1]`` is the answer to a query, i.e. ``targets[t]`` is the value and -100 elsewhere.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from effzoo.errors import ConfigError

IGNORE = -100


@dataclass(frozen=True)
class MQARSplit:
    """``inputs`` and ``targets`` (N, seq_len); ``targets`` is -100 except at answer positions."""

    inputs: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.inputs.shape[0]

    @property
    def answers(self) -> int:
        return int((self.targets != IGNORE).sum())


def _distinct(count: int, k: int, low: int, high: int, gen: torch.Generator) -> torch.Tensor:
    """(count, k) integers in [low, high), distinct within each row (rows with a repeat are redrawn)."""
    out = torch.randint(low, high, (count, k), generator=gen)
    while True:
        ordered = out.sort(dim=1).values
        repeat = (ordered[:, 1:] == ordered[:, :-1]).any(dim=1)
        if not repeat.any():
            return out
        out[repeat] = torch.randint(low, high, (int(repeat.sum()), k), generator=gen)


def _sequences(count: int, seq_len: int, kv_pairs: int, vocab: int, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """(count, seq_len + 1) sequences (pairs, then queries among filler) and the query positions."""
    half = vocab // 2
    keys = _distinct(count, kv_pairs, 1, half, gen)
    values = torch.randint(half, vocab, (count, kv_pairs), generator=gen)
    total = seq_len + 1
    seq = torch.randint(half, vocab, (count, total), generator=gen)  # filler never repeats a key
    context = 2 * kv_pairs
    seq[:, 0:context:2], seq[:, 1:context:2] = keys, values
    # query slots: kv_pairs distinct even offsets in the remaining space, each a (key, value) pair
    slots = (total - context) // 2
    starts = context + 2 * torch.rand(count, slots, generator=gen).argsort(dim=1)[:, :kv_pairs]
    order = torch.rand(count, kv_pairs, generator=gen).argsort(dim=1)
    rows = torch.arange(count)[:, None]
    seq[rows, starts] = keys.gather(1, order)
    seq[rows, starts + 1] = values.gather(1, order)
    return seq, starts


def _split(seq: torch.Tensor, starts: torch.Tensor) -> MQARSplit:
    """Stored as int32 (half the memory of a large grid); batches are cast to int64 when used."""
    inputs, shifted = seq[:, :-1].contiguous(), seq[:, 1:]
    targets = torch.full_like(inputs, IGNORE)
    rows = torch.arange(seq.shape[0])[:, None]
    targets[rows, starts] = shifted[rows, starts]
    return MQARSplit(inputs.to(torch.int32), targets.to(torch.int32))


def make_mqar(seq_len: int, kv_pairs: int, *, vocab_size: int = 8192, train_examples: int = 20_000,
              test_examples: int = 1_000, seed: int = 0) -> tuple[MQARSplit, MQARSplit]:
    """Train and test splits drawn from one seed; test sequences that also occur in train are redrawn,
    so the splits are disjoint."""
    if 4 * kv_pairs > seq_len:
        raise ConfigError(f"MQAR needs seq_len >= 4 * kv_pairs (pairs + queries), got seq_len={seq_len}, "
                          f"kv_pairs={kv_pairs}")
    if kv_pairs >= vocab_size // 2:
        raise ConfigError(f"vocab_size {vocab_size} is too small for {kv_pairs} distinct keys")
    gen = torch.Generator().manual_seed(seed)
    train_seq, train_starts = _sequences(train_examples, seq_len, kv_pairs, vocab_size, gen)
    seen = {bytes(row.numpy()) for row in train_seq.to(torch.int32)}
    kept_seq, kept_starts, have = [], [], 0
    while have < test_examples:
        seq, starts = _sequences(test_examples - have, seq_len, kv_pairs, vocab_size, gen)
        fresh = torch.tensor([bytes(row.numpy()) not in seen for row in seq.to(torch.int32)])
        kept_seq.append(seq[fresh])
        kept_starts.append(starts[fresh])
        have += int(fresh.sum())
    return _split(train_seq, train_starts), _split(torch.cat(kept_seq), torch.cat(kept_starts))
