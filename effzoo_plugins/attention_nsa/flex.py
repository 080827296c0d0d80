"""Fast NSA branches: FlexAttention block masks built from the NSA structure (forward and backward on CUDA).

The r query heads of a group share one selection, so each group's heads are folded into the query
axis (row = position · r + head, as in the paper's kernel): one FlexAttention "head" per key/value
group, and a 128-row query tile spans only 128 / r positions, whose selections mostly coincide.
For every branch a :class:`SparsePattern` gives

- ``mask_mod``: the exact token-level rule (window, complete compressed blocks, selected blocks), and
- block tables: which (query tile, key tile) pairs hold some allowed pair (``partial``, evaluated with
  ``mask_mod``) and which hold only allowed pairs (``full``, no ``mask_mod``); all other tiles are skipped.

``kernel="flex"`` runs ``flex_attention`` on the :class:`BlockMask` (compiled on CUDA; CPU runs the
eager forward only). ``kernel="dense"`` evaluates the same pattern into a dense boolean mask for
``F.scaled_dot_product_attention``: it has a backward everywhere, so CPU tests check the patterns
(block tables included) and their gradients against the reference.
"""
from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

from effzoo.plugin import ConfigError

from .reference import (
    BranchOutputs,
    Selection,
    attention_probs,
    block_importance,
    compressed_allowed,
    compressed_block_ends,
    overlap_matrix,
    select_blocks,
    selection_table,
)
from .settings import NSASettings

if TYPE_CHECKING:
    from torch.nn.attention.flex_attention import BlockMask

Q_BLOCK = 128  # query rows per tile (folded rows: positions × heads of a group)
KV_BLOCK = 128  # keys per tile for the window and compressed branches (selection uses l')
SCORE_BUDGET = 1 << 26  # float32 scores held at once while choosing blocks (256 MiB)
MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


def fold_heads(q: Tensor) -> Tensor:
    """(B, G, r, Tq, D) -> (B, G, Tq·r, D) with row = position · r + head."""
    batch, groups, ratio, length, dim = q.shape
    return q.transpose(2, 3).reshape(batch, groups, length * ratio, dim)


def unfold_heads(rows: Tensor, ratio: int) -> Tensor:
    """Inverse of :func:`fold_heads`."""
    batch, groups, n_rows, dim = rows.shape
    return rows.view(batch, groups, n_rows // ratio, ratio, dim).transpose(2, 3)


@dataclass
class SparsePattern:
    """One branch's allowed (row, key) pairs: exact ``mask_mod`` plus tile tables (B|1, G|1, nQt, nKt)."""

    mask_mod: MaskMod
    partial: Tensor
    full: Tensor
    q_len: int
    kv_len: int
    q_block: int
    kv_block: int

    def block_mask(self) -> BlockMask:
        """The FlexAttention :class:`BlockMask` of this pattern."""
        from torch.nn.attention.flex_attention import BlockMask

        partial_num, partial_idx = _tile_table(self.partial)
        full_num, full_idx = _tile_table(self.full)
        return BlockMask.from_kv_blocks(
            partial_num, partial_idx, full_num, full_idx, BLOCK_SIZE=(self.q_block, self.kv_block),
            mask_mod=self.mask_mod, seq_lengths=(self.q_len, self.kv_len),
        )

    def dense(self) -> Tensor:
        """(B|1, G|1, rows, keys) bool: what the block-sparse kernel computes (``mask_mod`` inside listed tiles)."""
        device = self.partial.device
        batch, groups = self.partial.shape[:2]
        exact = self.mask_mod(
            torch.arange(batch, device=device)[:, None, None, None],
            torch.arange(groups, device=device)[None, :, None, None],
            torch.arange(self.q_len, device=device)[None, None, :, None],
            torch.arange(self.kv_len, device=device)[None, None, None, :],
        )
        covered = (self.partial | self.full).repeat_interleave(self.q_block, dim=2)[:, :, : self.q_len]
        covered = covered.repeat_interleave(self.kv_block, dim=3)[..., : self.kv_len]
        full = self.full.repeat_interleave(self.q_block, dim=2)[:, :, : self.q_len]
        full = full.repeat_interleave(self.kv_block, dim=3)[..., : self.kv_len]
        return (exact & covered) | full


def _tile_table(tiles: Tensor) -> tuple[Tensor, Tensor]:
    """Bool (B, H, nQt, nKt) -> (count, indices listed first) as FlexAttention expects."""
    count = tiles.sum(dim=-1, dtype=torch.int32)
    order = torch.argsort(tiles.to(torch.int8), dim=-1, descending=True, stable=True).to(torch.int32)
    return count, order.contiguous()


def _query_tiles(length: int, ratio: int, offset: int, q_block: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """First and last absolute query position of every tile of folded rows, each (nQt,)."""
    first_row = torch.arange(0, length * ratio, q_block, device=device)
    last_row = (first_row + q_block).clamp(max=length * ratio) - 1
    return offset + first_row // ratio, offset + last_row // ratio


def _key_tiles(length: int, kv_block: int, device: torch.device) -> tuple[Tensor, Tensor]:
    """First and last key index of every key tile, each (nKt,)."""
    first = torch.arange(0, length, kv_block, device=device)
    return first, (first + kv_block).clamp(max=length) - 1


def window_pattern(
    length: int, ratio: int, offset: int, kv_len: int, kv_start: int, window: int,
    q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK, device: torch.device | None = None,
) -> SparsePattern:
    """Keys at absolute positions kv_start + i, a query at position t sees (t − w, t]."""
    p_lo, p_hi = _query_tiles(length, ratio, offset, q_block, device)
    k_lo, k_hi = (kv_start + edge for edge in _key_tiles(kv_len, kv_block, device))
    partial = (k_lo[None, :] <= p_hi[:, None]) & (k_hi[None, :] > p_lo[:, None] - window)
    full = (k_hi[None, :] <= p_lo[:, None]) & (k_lo[None, :] > p_hi[:, None] - window)

    def in_window(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        position, key = offset + q_idx // ratio, kv_start + kv_idx
        return (key <= position) & (key > position - window)

    return SparsePattern(in_window, (partial & ~full)[None, None], full[None, None],
                         length * ratio, kv_len, q_block, kv_block)


def compressed_pattern(
    length: int, ratio: int, offset: int, n_compressed: int, settings: NSASettings,
    q_block: int = Q_BLOCK, kv_block: int = KV_BLOCK, device: torch.device | None = None,
) -> SparsePattern:
    """Compressed block c (last token c·d + l − 1) is visible once complete."""
    stride, block = settings.compress_stride, settings.compress_block
    p_lo, p_hi = _query_tiles(length, ratio, offset, q_block, device)
    c_lo, c_hi = _key_tiles(n_compressed, kv_block, device)
    partial = (c_lo * stride + block - 1)[None, :] <= p_hi[:, None]
    full = (c_hi * stride + block - 1)[None, :] <= p_lo[:, None]

    def complete(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        return kv_idx * stride + block - 1 <= offset + q_idx // ratio

    return SparsePattern(complete, (partial & ~full)[None, None], full[None, None],
                         length * ratio, n_compressed, q_block, kv_block)


def _regroup_key_tiles(partial: Tensor, full: Tensor, block: int, tile: int, kv_len: int) -> tuple[Tensor, Tensor]:
    """Tables over ``block``-key selection blocks -> tables over ``tile``-key tiles: a tile is listed if
    any block overlapping it is, and full if all of them are."""
    if tile == block:
        return partial, full
    device = partial.device
    starts = torch.arange(partial.shape[-1], device=device) * block
    tile_starts = torch.arange(0, kv_len, tile, device=device)
    overlap = ((starts[:, None] < (tile_starts + tile)[None, :])
               & ((starts + block)[:, None] > tile_starts[None, :])).float()  # (n_blocks, n_tiles)
    listed = ((partial | full).float() @ overlap) > 0
    all_full = (full.float() @ overlap) == overlap.sum(0)
    return listed & ~all_full, all_full


def selected_pattern(
    selection: Selection, ratio: int, offset: int, kv_len: int, settings: NSASettings,
    q_block: int = Q_BLOCK, device: torch.device | None = None, kv_block: int = KV_BLOCK,
) -> SparsePattern:
    """Tokens of each query's selected blocks (keys from position 0) in ``kv_block``-key tiles. Key tiles
    are 128 by default, not the selection block l' = 64: the CUDA kernels' tile sizes must divide the
    BlockMask's, and H100's default FlexAttention backward tiles (128 keys) do not divide 64."""
    batch, groups, length, _ = selection.blocks.shape
    select_block, n_blocks = settings.select_block, settings.n_select_blocks(kv_len)
    table = selection_table(selection, n_blocks)
    p_lo, p_hi = _query_tiles(length, ratio, offset, q_block, device)
    n_tiles = p_lo.shape[0]
    # How many of a tile's positions selected each block: a position's r rows may span several tiles.
    counts = torch.zeros(batch, groups, n_tiles * n_blocks, dtype=torch.int32, device=device)
    local = torch.arange(length, device=device)
    first_tile, last_tile = (local * ratio) // q_block, (local * ratio + ratio - 1) // q_block
    # r consecutive rows cross at most (r - 1) // q_block + 1 tile boundaries: a host bound, no sync (steps
    # past a position's last tile add nothing)
    for step in range((ratio - 1) // q_block + 2 if length else 0):
        tile = first_tile + step
        inside = (tile <= last_tile)[None, None, :, None] & selection.valid
        index = tile.clamp(max=n_tiles - 1)[None, None, :, None] * n_blocks + selection.blocks
        counts.scatter_add_(2, index.flatten(2), inside.flatten(2).to(torch.int32))
    counts = counts.view(batch, groups, n_tiles, n_blocks)
    positions = (p_hi - p_lo + 1)[None, None, :, None]
    block_end = ((torch.arange(n_blocks, device=device) + 1) * select_block).clamp(max=kv_len) - 1
    full = (counts == positions) & (block_end[None, None, None, :] <= p_lo[None, None, :, None])
    partial = (counts > 0) & ~full

    def chosen(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        position = q_idx // ratio
        return table[b, h, position, kv_idx // select_block] & (kv_idx <= offset + position)

    partial, full = _regroup_key_tiles(partial, full, select_block, kv_block, kv_len)
    return SparsePattern(chosen, partial, full, length * ratio, kv_len, q_block, kv_block)


@torch.no_grad()
def choose_blocks(q: Tensor, q_pos: Tensor, k_cmp: Tensor, n_blocks: int, settings: NSASettings,
                  scale: float) -> Selection:
    """The reference selection computed over query chunks so the compressed scores stay bounded in memory."""
    batch, groups, ratio, length, _ = q.shape
    ends = compressed_block_ends(k_cmp.shape[2], settings, q.device)
    overlap = overlap_matrix(k_cmp.shape[2], n_blocks, settings, q.device)
    chunk = max(1, SCORE_BUDGET // max(1, batch * groups * ratio * max(1, k_cmp.shape[2])))
    parts = []
    for start in range(0, length, chunk):
        rows = slice(start, min(length, start + chunk))
        probs = attention_probs(q[:, :, :, rows], k_cmp, compressed_allowed(q_pos[rows], ends), scale)
        parts.append(select_blocks(block_importance(probs, overlap), q_pos[rows], settings))
    return Selection(blocks=torch.cat([part.blocks for part in parts], dim=2),
                     valid=torch.cat([part.valid for part in parts], dim=2))


@functools.lru_cache(maxsize=1)
def _compiled_flex():  # type: ignore[no-untyped-def]
    from torch.nn.attention.flex_attention import flex_attention

    return torch.compile(flex_attention, dynamic=False)


def sparse_attention(q: Tensor, k: Tensor, v: Tensor, pattern: SparsePattern, scale: float, kernel: str) -> Tensor:
    """Attention of (B, G, r, Tq, D) queries over (B, G, Tk, D) keys restricted to ``pattern``."""
    if pattern.kv_len == 0:
        return q.new_zeros(q.shape)
    ratio, rows = q.shape[2], fold_heads(q)
    if kernel == "dense":
        allowed = pattern.dense()
        has_key = allowed.any(dim=-1, keepdim=True)
        out = F.scaled_dot_product_attention(rows, k, v, attn_mask=allowed | ~has_key, scale=scale)
        return unfold_heads(out * has_key, ratio)
    if kernel != "flex":
        raise ConfigError(f"unknown NSA kernel {kernel!r}; choose 'flex' or 'dense'")
    if not q.is_cuda and torch.is_grad_enabled() and any(t.requires_grad for t in (q, k, v)):
        raise ConfigError("FlexAttention has no backward on CPU; use backend='sdpa' (dense masks) or 'reference'")
    if q.is_cuda:
        options = {"fwd_BLOCK_N": min(64, pattern.kv_block)} if pattern.kv_block < KV_BLOCK else None
        out = _compiled_flex()(rows, k, v, block_mask=pattern.block_mask(), scale=scale, kernel_options=options)
    else:
        from torch.nn.attention.flex_attention import flex_attention

        out = flex_attention(rows, k, v, block_mask=pattern.block_mask(), scale=scale)
    return unfold_heads(out, ratio)


def nsa_branches_fast(
    q: Tensor, q_pos: Tensor, compressed: tuple[Tensor, Tensor], selected: tuple[Tensor, Tensor],
    window: tuple[Tensor, Tensor, int], settings: NSASettings, scale: float, selection: Selection | None = None,
    kernel: str = "flex", q_block: int = Q_BLOCK, offset: int | None = None,
) -> BranchOutputs:
    """Same contract as :func:`reference.nsa_branches`, computed with block-sparse kernels. ``offset`` is
    the first query's position as a host int (the layer knows it); None reads ``q_pos[0]`` (a host sync)."""
    _, _, ratio, length, _ = q.shape
    offset, device = int(q_pos[0]) if offset is None else offset, q.device
    k_cmp, v_cmp = compressed
    k_slc, v_slc = selected
    k_win, v_win, start = window
    if selection is None:
        selection = choose_blocks(q, q_pos, k_cmp, settings.n_select_blocks(k_slc.shape[2]), settings, scale)
    cmp = compressed_pattern(length, ratio, offset, k_cmp.shape[2], settings, q_block, device=device)
    slc = selected_pattern(selection, ratio, offset, k_slc.shape[2], settings, q_block, device=device)
    win = window_pattern(length, ratio, offset, k_win.shape[2], start, settings.window, q_block, device=device)
    return BranchOutputs(
        compressed=sparse_attention(q, k_cmp, v_cmp, cmp, scale, kernel),
        selected=sparse_attention(q, k_slc, v_slc, slc, scale, kernel),
        window=sparse_attention(q, k_win, v_win, win, scale, kernel),
        selection=selection,
    )
