"""Batches of next-token training windows from a 1-D token array, rank-sharded and exactly resumable.

The rule (identical for every world size):

* Global batch ``k`` holds ``B = batch_size * world_size`` windows of ``seq_len + 1`` tokens.
* Rank ``r`` gets windows ``r*batch_size .. (r+1)*batch_size - 1`` of it, so ranks are disjoint and
  2 ranks x batch ``b`` see exactly the windows of 1 rank x batch ``2b``, in the same order.
* ``mode="random"``: window starts of global batch ``k`` are ``B`` uniform draws from
  ``numpy.random.default_rng([seed, k])`` over every valid start.
* ``mode="packed"``: the stream is cut into non-overlapping windows ``[i*seq_len, (i+1)*seq_len]``
  (neighbours share one boundary token); global sample ``g = k*B + j`` is window
  ``perm_e[g mod n]`` of epoch ``e = g // n``, with ``perm_e = default_rng([seed, e]).permutation(n)``
  (or ``arange(n)`` when ``shuffle=False``). Each epoch visits every window once.

The position is the index of the next global batch, so ``state_dict()`` / ``load_state_dict()``
resume exactly, also on a different world size with the same global batch size.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from effzoo.errors import ConfigError

from .errors import DataError

MODES = ("random", "packed")


class TokenLoader:
    """Iterable of ``(inputs, targets)`` int64 tensors of shape ``(batch_size, seq_len)``;
    ``targets`` are ``inputs`` shifted left by one token. Iterates forever (epochs wrap)."""

    def __init__(
        self, tokens: Any, seq_len: int, batch_size: int, *, rank: int = 0, world_size: int = 1,
        seed: int = 0, mode: str = "random", shuffle: bool = True, vocab_size: int | None = None,
        device: str | torch.device | None = None,
    ) -> None:
        if mode not in MODES:
            raise ConfigError(f"unknown loader mode {mode!r}; use one of {', '.join(MODES)}")
        if seq_len < 1 or batch_size < 1:
            raise ConfigError(f"seq_len and batch_size must be positive (got {seq_len}, {batch_size})")
        if world_size < 1 or not 0 <= rank < world_size:
            raise ConfigError(f"rank {rank} is not in range for world_size {world_size}")
        if len(tokens) < seq_len + 1:
            raise DataError(
                f"{len(tokens)} tokens cannot fill one window of seq_len {seq_len} + 1; "
                "use a shorter --seq-len or more data"
            )
        self.tokens = tokens
        self.seq_len, self.batch_size = seq_len, batch_size
        self.rank, self.world_size = rank, world_size
        self.seed, self.mode, self.shuffle = seed, mode, shuffle
        self.vocab_size = vocab_size
        self.device = None if device is None else torch.device(device)
        self.global_batch_size = batch_size * world_size
        self.num_windows = (len(tokens) - 1) // seq_len if mode == "packed" else len(tokens) - seq_len
        self.next_batch = 0
        self._perms: dict[int, np.ndarray] = {}

    # -- sizes -----------------------------------------------------------------------------
    @property
    def tokens_per_batch(self) -> int:
        """Tokens this rank trains on per batch (``batch_size * seq_len``)."""
        return self.batch_size * self.seq_len

    @property
    def global_tokens_per_batch(self) -> int:
        """Tokens all ranks together train on per batch."""
        return self.global_batch_size * self.seq_len

    @property
    def epoch(self) -> float:
        """Passes over the data so far (windows for ``packed``, tokens for ``random``)."""
        if self.mode == "packed":
            return self.next_batch * self.global_batch_size / self.num_windows
        return self.next_batch * self.global_tokens_per_batch / len(self.tokens)

    # -- sampling --------------------------------------------------------------------------
    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._perms:
            if len(self._perms) > 2:
                self._perms.pop(min(self._perms))
            n = self.num_windows
            self._perms[epoch] = (
                np.random.default_rng([self.seed, epoch]).permutation(n) if self.shuffle else np.arange(n)
            )
        return self._perms[epoch]

    def global_starts(self, k: int) -> np.ndarray:
        """Start offsets of all ``global_batch_size`` windows of global batch ``k``."""
        size = self.global_batch_size
        if self.mode == "random":
            return np.random.default_rng([self.seed, k]).integers(0, self.num_windows, size=size)
        samples = k * size + np.arange(size, dtype=np.int64)
        epochs, positions = np.divmod(samples, self.num_windows)
        windows = np.empty(size, dtype=np.int64)
        for e in np.unique(epochs):
            sel = epochs == e
            windows[sel] = self._permutation(int(e))[positions[sel]]
        return windows * self.seq_len

    def batch(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """This rank's ``(inputs, targets)`` of global batch ``k`` (does not move the position)."""
        starts = self.global_starts(k)[self.rank * self.batch_size:(self.rank + 1) * self.batch_size]
        width = self.seq_len + 1
        windows = np.empty((len(starts), width), dtype=np.int64)
        for row, start in enumerate(starts):
            windows[row] = self.tokens[int(start):int(start) + width]
        if self.vocab_size is not None:
            self._check_range(windows, starts)
        data = torch.from_numpy(windows)
        if self.device is not None and self.device.type == "cuda":
            data = data.pin_memory().to(self.device, non_blocking=True)
        elif self.device is not None:
            data = data.to(self.device)
        return data[:, :-1], data[:, 1:]

    def _check_range(self, windows: np.ndarray, starts: np.ndarray) -> None:
        bad = np.argwhere((windows < 0) | (windows >= self.vocab_size))
        if len(bad):
            row, col = bad[0]
            raise DataError(
                f"token id {int(windows[row, col])} at token offset {int(starts[row]) + int(col)} is outside "
                f"the vocabulary (size {self.vocab_size}); was the data tokenized with another tokenizer?"
            )

    # -- iteration and resume --------------------------------------------------------------
    def __iter__(self) -> TokenLoader:
        return self

    def __next__(self) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.batch(self.next_batch)
        self.next_batch += 1
        return out

    def _identity(self) -> dict[str, Any]:
        return {
            "mode": self.mode, "seed": self.seed, "seq_len": self.seq_len, "shuffle": self.shuffle,
            "global_batch_size": self.global_batch_size, "num_tokens": len(self.tokens),
        }

    def state_dict(self) -> dict[str, Any]:
        """The exact position: the next global batch index plus what it depends on."""
        return {"version": 1, "next_batch": self.next_batch, **self._identity()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from ``state``; refuses a state from a different data order."""
        mine = self._identity()
        diff = {k: (state.get(k), v) for k, v in mine.items() if state.get(k) != v}
        if diff:
            details = ", ".join(f"{k}: saved {a!r} vs now {b!r}" for k, (a, b) in diff.items())
            raise ConfigError(f"loader state does not match this loader ({details}); cannot resume exactly")
        self.next_batch = int(state["next_batch"])

    def __repr__(self) -> str:
        return (f"TokenLoader(mode={self.mode!r}, seq_len={self.seq_len}, batch_size={self.batch_size}, "
                f"rank={self.rank}/{self.world_size}, tokens={len(self.tokens):,}, next_batch={self.next_batch})")
