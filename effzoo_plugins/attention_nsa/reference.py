"""Readable pure-PyTorch NSA (arXiv 2502.11089): the oracle every fast path is tested against.

Shapes, grouped by key/value head (G groups of r query heads each; any r, not only powers of two):

- queries ``q``: (B, G, r, Tq, D) at absolute positions ``q_pos`` (Tq,)
- raw keys/values: (B, G, Tk, D) at absolute positions ``start .. start + Tk - 1``
- compressed keys/values: (B, G, Nc, D); block i summarises tokens [i·d, i·d + l) and becomes
  visible to a query at position t once it is complete (i·d + l − 1 ≤ t)

Every branch is masked attention; a query with nothing to attend to gets a zero output.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .settings import NSASettings


@dataclass
class Selection:
    """The top-n selection blocks of every query, shared by the r heads of a group."""

    blocks: Tensor  # (B, G, Tq, n) selection-block indices
    valid: Tensor  # (B, G, Tq, n) False where fewer than n blocks exist yet


@dataclass
class BranchOutputs:
    """Per-branch attention outputs, each (B, G, r, Tq, D), and the selection used."""

    compressed: Tensor
    selected: Tensor
    window: Tensor
    selection: Selection


# -- masked attention -------------------------------------------------------------------------
def attention_probs(q: Tensor, k: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """Softmax over allowed keys in (at least) float32; rows with no allowed key are all zero.

    ``allowed`` broadcasts to (B, G, 1, Tq, Tk) (or is given with the r axis).
    """
    dtype = torch.promote_types(q.dtype, torch.float32)
    scores = torch.einsum("bgrqd,bgkd->bgrqk", q.to(dtype), k.to(dtype)) * scale
    allowed = allowed if allowed.dim() == 5 else allowed.unsqueeze(-3)
    allowed = allowed.expand_as(scores)
    has_key = allowed.any(dim=-1, keepdim=True)
    scores = torch.where(has_key, scores.masked_fill(~allowed, float("-inf")), torch.zeros_like(scores))
    return torch.softmax(scores, dim=-1) * allowed


def masked_attention(q: Tensor, k: Tensor, v: Tensor, allowed: Tensor, scale: float) -> Tensor:
    """Attention of (B, G, r, Tq, D) queries over (B, G, Tk, D) keys where ``allowed`` is True."""
    probs = attention_probs(q, k, allowed, scale)
    return torch.einsum("bgrqk,bgkd->bgrqd", probs, v.to(probs.dtype)).to(q.dtype)


# -- masks ------------------------------------------------------------------------------------
def key_positions(start: int, length: int, device: torch.device) -> Tensor:
    """Absolute positions ``start .. start + length - 1`` of a run of raw keys."""
    return torch.arange(start, start + length, device=device)


def compressed_block_ends(count: int, settings: NSASettings, device: torch.device) -> Tensor:
    """Absolute position of the last token of compressed blocks 0 .. count − 1."""
    return torch.arange(count, device=device) * settings.compress_stride + settings.compress_block - 1


def window_allowed(q_pos: Tensor, k_pos: Tensor, window: int) -> Tensor:
    """(Tq, Tk): the ``window`` most recent tokens up to and including the query."""
    distance = q_pos[:, None] - k_pos[None, :]
    return (distance >= 0) & (distance < window)


def compressed_allowed(q_pos: Tensor, block_ends: Tensor) -> Tensor:
    """(Tq, Nc): compressed blocks complete at the query's position."""
    return block_ends[None, :] <= q_pos[:, None]


def selection_table(selection: Selection, n_blocks: int) -> Tensor:
    """(B, G, Tq, Nsel) bool: block j is selected for the query (top-k indices are distinct)."""
    table = torch.zeros(*selection.blocks.shape[:-1], n_blocks, dtype=torch.bool, device=selection.blocks.device)
    return table.scatter_(-1, selection.blocks, selection.valid)


def selected_allowed(q_pos: Tensor, k_pos: Tensor, selection: Selection, select_block: int, n_blocks: int) -> Tensor:
    """(B, G, Tq, Tk): tokens of the selected blocks that are not in the query's future."""
    tokens = selection_table(selection, n_blocks)[..., k_pos // select_block]
    return tokens & (k_pos[None, :] <= q_pos[:, None])


# -- selection --------------------------------------------------------------------------------
def overlap_matrix(n_compressed: int, n_blocks: int, settings: NSASettings, device: torch.device) -> Tensor:
    """(Nc, Nsel): tokens shared by compressed block i = [i·d, i·d + l) and selection block j = [j·l', (j+1)·l').

    Spreading each compressed block's probability over the selection blocks it overlaps, weighted
    by the overlap, is Eq. 9 of the paper (with d | l and d | l' it counts shared stride segments);
    when l = d = l' it is the identity.
    """
    c_start = torch.arange(n_compressed, device=device)[:, None] * settings.compress_stride
    s_start = torch.arange(n_blocks, device=device)[None, :] * settings.select_block
    low = torch.maximum(c_start, s_start)
    high = torch.minimum(c_start + settings.compress_block, s_start + settings.select_block)
    return (high - low).clamp(min=0).float()


def block_importance(compressed_probs: Tensor, overlap: Tensor) -> Tensor:
    """(B, G, r, Tq, Nc) compressed attention probabilities -> (B, G, Tq, Nsel), summed over the group's heads."""
    return compressed_probs.sum(dim=2) @ overlap.to(compressed_probs.dtype)


def select_blocks(importance: Tensor, q_pos: Tensor, settings: NSASettings) -> Selection:
    """Top-n selection blocks per query and group: initial and local blocks forced, future blocks excluded."""
    n_blocks = importance.shape[-1]
    block = torch.arange(n_blocks, device=importance.device)[None, :]
    current = (q_pos // settings.select_block)[:, None]
    future = block > current
    forced = (block < settings.initial_blocks) | ((block <= current) & (block > current - settings.local_blocks))
    scores = importance.masked_fill(forced, float("inf")).masked_fill(future, float("-inf"))
    values, blocks = scores.topk(min(settings.selected_blocks, n_blocks), dim=-1)
    return Selection(blocks=blocks, valid=values > float("-inf"))


# -- the three branches -----------------------------------------------------------------------
def nsa_branches(
    q: Tensor, q_pos: Tensor, compressed: tuple[Tensor, Tensor], selected: tuple[Tensor, Tensor],
    window: tuple[Tensor, Tensor, int], settings: NSASettings, scale: float, selection: Selection | None = None,
) -> BranchOutputs:
    """The three NSA branches for queries ``q``.

    ``compressed`` = (k, v) of all complete compressed blocks; ``selected`` = raw (k, v) from
    position 0 through the last query; ``window`` = raw (k, v, start position) covering at least
    the last ``window`` tokens. ``selection`` may be given to reuse another path's choice.
    """
    k_cmp, v_cmp = compressed
    ends = compressed_block_ends(k_cmp.shape[2], settings, q.device)
    cmp_allowed = compressed_allowed(q_pos, ends)
    probs = attention_probs(q, k_cmp, cmp_allowed, scale)
    out_cmp = torch.einsum("bgrqk,bgkd->bgrqd", probs, v_cmp.to(probs.dtype)).to(q.dtype)

    k_slc, v_slc = selected
    n_blocks = settings.n_select_blocks(k_slc.shape[2])
    if selection is None:
        overlap = overlap_matrix(k_cmp.shape[2], n_blocks, settings, q.device)
        selection = select_blocks(block_importance(probs.detach(), overlap), q_pos, settings)
    k_pos = key_positions(0, k_slc.shape[2], q.device)
    slc_allowed = selected_allowed(q_pos, k_pos, selection, settings.select_block, n_blocks)
    out_slc = masked_attention(q, k_slc, v_slc, slc_allowed, scale)

    k_win, v_win, start = window
    win_allowed = window_allowed(q_pos, key_positions(start, k_win.shape[2], q.device), settings.window)
    out_win = masked_attention(q, k_win, v_win, win_allowed, scale)
    return BranchOutputs(compressed=out_cmp, selected=out_slc, window=out_win, selection=selection)
