"""Test-only launcher: ``effzoo`` with context parallelism made to run on CPU (gloo), for the torchrun tests.

torch's context_parallel rings only the CUDA SDPA kernels, so the library refuses ``--cp`` elsewhere. Its
machinery is plain tensor code and functional collectives, though: this fixture adds the CPU flash kernel
(``aten._scaled_dot_product_flash_attention_for_cpu``, which returns the logsumexp the ring needs) and its
backward to the ops torch's dispatcher routes to its ring-attention templates, and lifts the CUDA-only
check, so that ``--cp 2`` trains on two CPU processes through the same code path (load balancer, sharded
positions, ring attention, gradient and loss averaging) as on CUDA. Never imported by the library.

    python -m torch.distributed.run --nproc-per-node 2 tests/context_parallel_cpu.py train gqa --cp 2 ...
"""
from __future__ import annotations

import sys
from typing import Any

import torch
from torch.distributed.tensor import DTensor, Shard
from torch.distributed.tensor.experimental._context_parallel import _attention as torch_cp

aten = torch.ops.aten
CPU_FLASH = aten._scaled_dot_product_flash_attention_for_cpu.default
CPU_FLASH_BACKWARD = aten._scaled_dot_product_flash_attention_for_cpu_backward.default
SEQ_DIM = 2


def _argument(values: list[Any], kwargs: dict[str, Any], index: int, name: str, default: Any) -> Any:
    return values[index] if len(values) > index else kwargs.get(name, default)


def ring_cpu_flash(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[DTensor, ...]:
    """The CPU flash kernel (forward or backward) on sequence-sharded DTensors, as torch's ring templates."""
    info = DTensor._op_dispatcher.unwrap_to_op_info(op, args, kwargs)
    mesh, values, named = info.compute_mesh, list(info.local_args), dict(info.local_kwargs)
    group = mesh.get_group()
    if op is CPU_FLASH:
        query, key, value = values[:3]
        outputs = torch_cp._templated_ring_attention(
            group, SEQ_DIM, CPU_FLASH, query, key, value,
            is_causal=_argument(values, named, 4, "is_causal", False),
            dropout_p=_argument(values, named, 3, "dropout_p", 0.0), scale=named.get("scale"))
    else:
        grad_out, query, key, value, out, logsumexp, dropout_p, is_causal = values[:8]
        outputs = torch_cp._templated_ring_attention_backward(
            group, SEQ_DIM, CPU_FLASH_BACKWARD, grad_out=grad_out, grad_out_name="grad_out", query=query, key=key,
            value=value, out=out, logsumexp=logsumexp, is_causal=is_causal, dropout_p=dropout_p,
            scale=named.get("scale"))
    return tuple(DTensor.from_local(t, mesh, [Shard(SEQ_DIM)], run_check=False) for t in outputs)


def install() -> None:
    """Route the CPU flash kernel through the ring templates and accept CPU for ``--cp``."""
    import effzoo.train.context_parallel as library_cp

    torch_cp.custom_ops[CPU_FLASH] = ring_cpu_flash
    torch_cp.custom_ops[CPU_FLASH_BACKWARD] = ring_cpu_flash
    library_cp.check_device = lambda backend: None


if __name__ == "__main__":
    install()
    from effzoo.cli import main

    sys.exit(main(sys.argv[1:]))
