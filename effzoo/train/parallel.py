"""``parallelize``: the one place that decides how a built model runs on the devices -- pipeline stages,
tensor parallel from the components' declared plans, activation checkpointing, per-block ``torch.compile``,
then FSDP2 sharding or DDP replication (torchtitan's ``parallelize_fn`` in spirit)."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .distributed import DistInfo, wrap_ddp, wrap_fsdp
from .layout import Layout, build_mesh, tensor_parallel_plans

LOG = logging.getLogger("effzoo.train")


@dataclass
class Parallelized:
    """The model to train and how it is wrapped (the train step needs to know for gradient sync).

    Under a model-parallel layout (TP/PP/CP) ``model`` is this rank's part (a pipeline stage under PP),
    ``mesh`` the device mesh, ``schedule`` the pipeline schedule (None without PP), and gradients are
    averaged over the mesh's ``dp`` dimension by the train step."""

    model: nn.Module
    ddp: bool = False
    fsdp: bool = False
    compiled: bool = False
    layout: Layout = field(default_factory=Layout)
    mesh: Any = None
    schedule: Any = None

    @property
    def model_parallel(self) -> bool:
        return self.layout.model_parallel

    def group(self, dim: str) -> Any:
        """The process group of mesh dimension ``dim`` (pp, dp, cp, tp)."""
        return self.mesh.get_group(dim)

    def mesh_rank(self, dim: str) -> int:
        return self.mesh.get_local_rank(dim) if self.mesh is not None else 0


def parallelize(model: nn.Module, info: DistInfo, device: torch.device, *, compile: bool = False,
                fsdp: bool = False, activation_checkpointing: bool = False,
                mp_dtype: torch.dtype | None = None, layout: Layout | None = None,
                pp_schedule: str = "1f1b", grad_accum: int = 1, fused_loss: bool = True) -> Parallelized:
    """Apply the parallel plan to a freshly built model (the same weights on every rank), in this order:
    pipeline stage (PP), tensor-parallel plans (TP), activation checkpointing, compile each block (so
    FSDP's per-block hooks stay outside the compiled graphs), then shard every block and the root with
    FSDP2 (``mp_dtype``: the compute dtype of gathered parameters) or replicate with DDP."""
    model.gradient_checkpointing = activation_checkpointing
    layout = layout or Layout(dp=info.world_size)
    if layout.model_parallel:
        return _model_parallel(model, device, layout, compile=compile, pp_schedule=pp_schedule,
                               grad_accum=grad_accum, fused_loss=fused_loss)
    if compile:
        for block in model.blocks:
            block.compile()
    if info.enabled and fsdp:
        return Parallelized(wrap_fsdp(model, mp_dtype if mp_dtype != torch.float32 else None), fsdp=True,
                            compiled=compile, layout=layout)
    if fsdp:
        LOG.warning("--fsdp with a single process: nothing to shard, training unsharded")
    if info.enabled:
        return Parallelized(wrap_ddp(model, device), ddp=True, compiled=compile, layout=layout)
    return Parallelized(model, compiled=compile, layout=layout)


def _model_parallel(model: nn.Module, device: torch.device, layout: Layout, *, compile: bool, pp_schedule: str,
                    grad_accum: int, fused_loss: bool) -> Parallelized:
    mesh = build_mesh(layout, device.type)
    if layout.cp > 1:  # the dp_cp replica dimension; ring attention's rotation
        from .context_parallel import prepare

        prepare(mesh)
    schedule = None
    part: nn.Module = model
    if layout.pp > 1:
        from .pipeline import DecoderStage

        part = DecoderStage(model, mesh.get_local_rank("pp"), layout.pp)
    if layout.tp > 1:
        apply_tensor_parallel(part, mesh["tp"], layout.tp)
    if compile:
        for block in (part.blocks.values() if layout.pp > 1 else part.blocks):
            block.compile()
    if layout.pp > 1:
        from .pipeline import build_schedule

        schedule = build_schedule(part, mesh.get_local_rank("pp"), layout.pp, device, mesh.get_group("pp"),
                                  grad_accum, pp_schedule, fused_loss)
    return Parallelized(part, compiled=compile, layout=layout, mesh=mesh, schedule=schedule)


def apply_tensor_parallel(model: nn.Module, tp_mesh: Any, tp_size: int) -> None:
    """``parallelize_module`` every component with the plan it declares (outermost first). The embedding
    and the output head stay replicated: the chunked linear + cross-entropy then runs unchanged on every
    rank, at the cost of a full vocabulary matrix per rank (a vocabulary-parallel head would need a
    vocabulary-parallel cross-entropy)."""
    from torch.distributed.tensor.parallel import parallelize_module

    for _, component, plan in tensor_parallel_plans(model, tp_size):
        own, children = plan.get("", ()), {name: style for name, style in plan.items() if name}
        for style in own if isinstance(own, tuple) else (own,):  # the key "": the component's own parameters
            parallelize_module(component, tp_mesh, style)
        if children:
            parallelize_module(component, tp_mesh, children)
