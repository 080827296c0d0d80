"""Running routed tokens through E SwiGLU experts without a Python loop over experts.

    sort     the N·k (token, slot) assignments are stably sorted by expert: each expert's rows form
             one contiguous block (token order inside), block ends = cumsum of the per-expert counts
    gather   x_sorted = x[token of each row]
    experts  gate/up GEMM -> silu(gate) · up -> down GEMM, one grouped call each
    combine  rows go back to (N, k, d) through the inverse permutation and are summed with the
             routing weights; gather and combine have gather-only backwards (no atomic adds)

Expert backends (the model's ``kernel`` setting; values it does not list, e.g. ``sdpa``, mean ``auto``):
- ``grouped_mm``: ``torch._grouped_mm`` over the blocks, no host synchronisation. Fast on CUDA in
  bfloat16 on SM90+ (CUTLASS); runs but is slow elsewhere (CPU kernel; torch's CUDA fallback loops
  over groups on the host). Needs d_model and expert hidden rows that are multiples of 16 bytes.
- ``bmm``: blocks scattered into a zero-padded (E, max_count, d) buffer and two ``torch.bmm``; any
  dtype and device, one host sync for the largest block.
- ``reference``: :func:`moe_reference`, a plain loop over experts and slots; the test oracle.
- ``auto``: ``grouped_mm`` where it is fast (CUDA, bf16, SM90+), else ``bmm``.

An assignment dropped by capacity keeps its row in its expert's block with combine weight 0: its
output is finite and multiplied by 0, so it changes neither the output nor any gradient, and the
fast paths never need a host sync to compact the rows.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from effzoo.plugin import ConfigError
from effzoo.plugin import Routing

from .routers import expert_counts

BACKENDS = ("auto", "reference", "grouped_mm", "bmm")


@dataclass
class DispatchPlan:
    """Where every (token, slot) assignment goes once rows are sorted by expert."""

    order: Tensor  # (N·k,) flat assignment token·k + slot of each sorted row
    inverse: Tensor  # (N·k,) sorted row of flat assignment token·k + slot
    token_index: Tensor  # (N·k,) token of each sorted row
    expert_of_row: Tensor  # (N·k,) expert of each sorted row
    counts: Tensor  # (E,) rows per expert
    group_ends: Tensor  # (E,) int32 end row of each expert's block

    @property
    def group_starts(self) -> Tensor:
        return self.group_ends.long() - self.counts


def plan_dispatch(experts: Tensor, n_experts: int) -> DispatchPlan:
    """Sort the (N, k) expert choices by expert (stable: token order within each expert)."""
    flat = experts.reshape(-1)
    order = torch.argsort(flat, stable=True)
    inverse = torch.empty_like(order).scatter_(0, order, torch.arange(order.numel(), device=order.device))
    counts = expert_counts(flat, n_experts)
    return DispatchPlan(
        order=order, inverse=inverse, token_index=order // experts.shape[1], expert_of_row=flat[order],
        counts=counts, group_ends=counts.cumsum(0).to(torch.int32),
    )


class _GatherRows(torch.autograd.Function):
    """``source[index]`` whose backward is a gather too (deterministic, no atomic adds).

    ``readers`` lists, for every source row, the ``fanout`` output rows that read it.
    """

    @staticmethod
    def forward(ctx, source: Tensor, index: Tensor, readers: Tensor, fanout: int) -> Tensor:  # type: ignore[override]
        ctx.save_for_backward(readers)
        ctx.fanout = fanout
        return source.index_select(0, index)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        (readers,) = ctx.saved_tensors
        picked = grad.index_select(0, readers)
        if ctx.fanout > 1:
            picked = picked.view(-1, ctx.fanout, grad.shape[-1]).sum(dim=1)
        return picked, None, None, None


def _swiglu(gate_up: Tensor) -> Tensor:
    gate, up = gate_up.chunk(2, dim=-1)
    return F.silu(gate) * up


@functools.cache
def _cuda_major(index: int) -> int:
    return torch.cuda.get_device_capability(index)[0]


def grouped_mm_supported(x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` runs these operands: CPU or CUDA, fp32/bf16/fp16, 16-byte rows."""
    if not hasattr(torch, "_grouped_mm") or x.device.type not in ("cpu", "cuda"):
        return False
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    width = x.element_size()
    return all((n * width) % 16 == 0 for n in (x.shape[-1], w_down.shape[-1], w_gate_up.shape[1]))


def grouped_mm_fast(x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> bool:
    """Whether ``torch._grouped_mm`` is the fast choice: its CUTLASS kernel (CUDA, bf16, SM90+).

    On CPU it is correct but slower than padded ``bmm`` (measured ~4x at d=128, h=768, 8 experts).
    """
    return (x.device.type == "cuda" and x.dtype == torch.bfloat16 and _cuda_major(x.device.index or 0) >= 9
            and grouped_mm_supported(x, w_gate_up, w_down))


def configured_backend(kernel: str) -> str:
    """What a model's ``kernel`` setting asks of the experts: itself when it is one of ``BACKENDS``, else
    ``auto`` (another component's kernel, validated by ``make_config``)."""
    return kernel if kernel in BACKENDS else "auto"


def check_backend(name: str) -> str:
    """``name`` if it is a known expert backend, else a ConfigError listing the choices."""
    if name not in BACKENDS:
        raise ConfigError(f"unknown kernel {name!r} for MoE experts; choose one of {', '.join(BACKENDS)}")
    return name


def resolve_backend(backend: str, x: Tensor, w_gate_up: Tensor, w_down: Tensor) -> str:
    """``auto`` -> ``grouped_mm`` where it is fast, else ``bmm``; explicit names are checked."""
    check_backend(backend)
    if backend == "auto":
        return "grouped_mm" if grouped_mm_fast(x, w_gate_up, w_down) else "bmm"
    if backend == "grouped_mm" and not grouped_mm_supported(x, w_gate_up, w_down):
        raise ConfigError(
            f"kernel='grouped_mm' cannot run here (torch {torch.__version__}, {x.device.type}, {x.dtype}, "
            f"d_model={x.shape[-1]}, expert hidden={w_down.shape[-1]}): it needs torch >= 2.8, CPU or CUDA, "
            "fp32/bf16/fp16 and sizes whose rows are multiples of 16 bytes; use kernel='auto' or 'bmm'"
        )
    return backend


def _experts_grouped(x_sorted: Tensor, w_gate_up: Tensor, w_down: Tensor, plan: DispatchPlan) -> Tensor:
    hidden = torch._grouped_mm(x_sorted, w_gate_up.transpose(1, 2), offs=plan.group_ends)
    return torch._grouped_mm(_swiglu(hidden), w_down.transpose(1, 2), offs=plan.group_ends)


def _experts_padded(x_sorted: Tensor, w_gate_up: Tensor, w_down: Tensor, plan: DispatchPlan) -> Tensor:
    rank = torch.arange(x_sorted.shape[0], device=x_sorted.device) - plan.group_starts[plan.expert_of_row]
    capacity = int(plan.counts.max()) if x_sorted.shape[0] else 0
    slots = (plan.expert_of_row, rank)
    padded = x_sorted.new_zeros(w_gate_up.shape[0], capacity, x_sorted.shape[-1]).index_put(slots, x_sorted)
    hidden = torch.bmm(padded, w_gate_up.transpose(1, 2))
    return torch.bmm(_swiglu(hidden), w_down.transpose(1, 2))[slots]


def moe_swiglu(x: Tensor, routing: Routing, w_gate_up: Tensor, w_down: Tensor, backend: str = "auto") -> Tensor:
    """Σ_slots weight · SwiGLU_expert(x) for tokens ``x`` (N, d).

    ``w_gate_up`` is (E, 2·h, d) with the gate rows first, ``w_down`` (E, d, h) (``nn.Linear`` layout).
    Under autocast the experts run in the autocast dtype (so bf16 autocast reaches ``grouped_mm``).
    """
    if torch.is_autocast_enabled(x.device.type):  # run the experts in the autocast dtype, as nn.Linear would
        x = x.to(torch.get_autocast_dtype(x.device.type))
    w_gate_up, w_down = w_gate_up.to(x.dtype), w_down.to(x.dtype)
    backend = resolve_backend(backend, x, w_gate_up, w_down)
    if backend == "reference":
        return moe_reference(x, routing, w_gate_up, w_down)
    n_tokens, top_k = routing.experts.shape
    plan = plan_dispatch(routing.experts, w_gate_up.shape[0])
    x_sorted = _GatherRows.apply(x, plan.token_index, plan.inverse, top_k)
    run = _experts_grouped if backend == "grouped_mm" else _experts_padded
    rows = run(x_sorted, w_gate_up, w_down, plan)
    per_slot = _GatherRows.apply(rows, plan.inverse, plan.order, 1).view(n_tokens, top_k, -1)
    return (per_slot * routing.weights.to(x.dtype).unsqueeze(-1)).sum(dim=1)


def moe_reference(x: Tensor, routing: Routing, w_gate_up: Tensor, w_down: Tensor) -> Tensor:
    """The definition, one expert and slot at a time; dropped assignments are skipped outright."""
    out = torch.zeros_like(x)
    for expert in range(w_gate_up.shape[0]):
        for slot in range(routing.experts.shape[1]):
            tokens = ((routing.experts[:, slot] == expert) & routing.keep[:, slot]).nonzero().squeeze(1)
            if tokens.numel() == 0:
                continue
            y = F.linear(_swiglu(F.linear(x[tokens], w_gate_up[expert])), w_down[expert])
            out = out.index_add(0, tokens, y * routing.weights[tokens, slot].to(x.dtype).unsqueeze(-1))
    return out
