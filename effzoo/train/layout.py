"""The parallel layout of a run: tensor (TP), pipeline (PP), context (CP) and data (DP) degrees on one
named device mesh, checked against the world size and the model before any work starts."""
from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from ..config import ModelConfig
from ..errors import ConfigError
from ..interfaces import Component

MESH_DIMS = ("pp", "dp", "cp", "tp")  # outermost to innermost: TP ranks are neighbours (one node, fastest links)


@dataclass(frozen=True)
class Layout:
    """How many ranks each kind of parallelism spans; their product is the world size."""

    tp: int = 1
    pp: int = 1
    cp: int = 1
    dp: int = 1

    @property
    def world_size(self) -> int:
        return self.tp * self.pp * self.cp * self.dp

    @property
    def model_parallel(self) -> bool:
        """True when the model itself is split (TP, PP or CP), not only replicated or FSDP-sharded."""
        return self.tp * self.pp * self.cp > 1

    def replica(self, rank: int) -> int:
        """The data-parallel replica of global ``rank`` on the mesh (pp, dp, cp, tp), row-major as
        ``init_device_mesh`` numbers it: the index of the batches this rank reads."""
        return (rank // (self.cp * self.tp)) % self.dp

    @property
    def name(self) -> str:
        """``tp2dp4``-style name, the one ``effzoo bench --layouts`` takes (``dp1`` for one process)."""
        parts = [f"{kind}{size}" for kind, size in (("tp", self.tp), ("pp", self.pp), ("cp", self.cp)) if size > 1]
        return "".join(parts + [f"dp{self.dp}"] if self.dp > 1 or not parts else parts)


def resolve_layout(tp: int, pp: int, cp: int, world_size: int) -> Layout:
    """The layout for ``world_size`` processes; DP takes the ranks TP x PP x CP leave. ConfigError if the
    degrees are not positive or do not divide the world size."""
    for flag, value in (("--tp", tp), ("--pp", pp), ("--cp", cp)):
        if int(value) < 1:
            raise ConfigError(f"{flag} must be at least 1, got {value}")
    model_ranks = tp * pp * cp
    if world_size % model_ranks:
        raise ConfigError(f"--tp {tp} x --pp {pp} x --cp {cp} = {model_ranks} ranks per model replica does not divide "
                          f"the world size {world_size}; launch a multiple of {model_ranks} processes "
                          f"(torchrun --nproc-per-node {model_ranks * max(1, world_size // model_ranks)})")
    return Layout(tp=tp, pp=pp, cp=cp, dp=world_size // model_ranks)


def parse_layout(name: str) -> Layout:
    """``tp2dp4`` / ``pp2dp4`` / ``dp8`` -> Layout (the ``--layouts`` spelling of ``effzoo bench``)."""
    import re

    parts = re.findall(r"(tp|pp|cp|dp)(\d+)", name)
    if not parts or "".join(k + v for k, v in parts) != name:
        raise ConfigError(f"layout {name!r} is not of the form tp2dp4 (degrees of tp, pp, cp, dp)")
    degrees = {kind: int(value) for kind, value in parts}
    if len(degrees) != len(parts) or min(degrees.values()) < 1:
        raise ConfigError(f"layout {name!r} names a kind twice or a degree below 1")
    return Layout(**degrees)


def check_layout(layout: Layout, config: ModelConfig, *, backend: str, grad_accum: int, schedule: str,
                 fsdp: bool, compile: bool | None = None, seq_len: int | None = None) -> None:
    """ConfigError, naming the cause, for a layout this model cannot run (before anything is built)."""
    if layout.pp > config.n_layers:
        raise ConfigError(f"--pp {layout.pp} is more pipeline stages than the model's {config.n_layers} layers; "
                          f"use --pp {config.n_layers} or fewer")
    if layout.pp > 1 and schedule == "1f1b" and grad_accum < layout.pp:
        raise ConfigError(f"--pp-schedule 1f1b needs at least as many micro-batches as stages: --grad-accum "
                          f"{grad_accum} < --pp {layout.pp}; raise --grad-accum or use --pp-schedule gpipe")
    if fsdp and layout.model_parallel:
        raise ConfigError("--fsdp shards only pure data-parallel runs; with --tp/--pp/--cp the remaining "
                          "data-parallel degree is replicated (gradients averaged over the dp mesh dimension)")
    if layout.cp > 1 or layout.tp > 1:
        from ..build import build_from_config

        model = build_from_config(config, device="meta")
    if layout.cp > 1:
        from ..ops.attention import attention_backend
        from .context_parallel import check_context_parallel

        check_context_parallel(model, layout.cp, backend=backend, kernel=attention_backend(config.kernel),
                               pp=layout.pp, compile=compile, seq_len=seq_len)
    if layout.tp > 1:
        tensor_parallel_plans(model, layout.tp)


def tensor_parallel_plans(model: nn.Module, tp_size: int) -> list[tuple[str, Component, dict]]:
    """Every component's declared plan, outermost first; ConfigError naming the first that has none."""
    plans = []
    for name, module in model.named_modules():
        if not isinstance(module, Component):
            continue
        plan = module.tensor_parallel_plan(tp_size)
        if plan is None:
            raise ConfigError(f"--tp {tp_size}: {type(module).__name__} (at {name or 'the model'}) declares no "
                              "tensor-parallel plan (Component.tensor_parallel_plan), so this variant cannot run "
                              "tensor parallel; train it with --tp 1")
        plans.append((name, module, plan))
    return plans


def build_mesh(layout: Layout, device_type: str):  # type: ignore[no-untyped-def]
    """One device mesh with the named dimensions pp, dp, cp, tp (sizes 1 included)."""
    from torch.distributed.device_mesh import init_device_mesh

    sizes = tuple(getattr(layout, dim) for dim in MESH_DIMS)
    return init_device_mesh(device_type, sizes, mesh_dim_names=MESH_DIMS)
