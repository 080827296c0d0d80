"""torch.compile of every registered variant the way the trainer compiles it (each block on its own):
every block captures as one graph (``fullgraph=True``: a graph break raises), later training steps
reuse the graphs, and a changed sequence length recompiles once (dynamo's automatic dynamic shapes),
after which further lengths reuse the dynamic graphs.

Dynamo's ``eager`` backend keeps CI fast: it runs the same capture (graph breaks, guards, recompiles)
without code generation; the device script (benchmarks/gpu_check.py) compiles with inductor on CUDA.
"""
from __future__ import annotations

import pytest
import torch
import torch._dynamo
from torch._dynamo.utils import counters

import effzoo

VARIANTS = effzoo.REGISTRY.ensure_loaded().names("variant")
# CPU paths that loop over the sequence in Python unroll into one graph per length, so each new length
# compiles anew (the trainer runs one length, so its steps never recompile; a --seq-len sweep longer than
# dynamo's cache_size_limit falls back to eager for these blocks). The CUDA kernels take the length as a
# launch argument instead.
LENGTH_SPECIALISED = {
    "mamba1": "selective-scan reference: chunk loop over the sequence (range(0, length, chunk))",
    "rwkv": "chunked PyTorch form of the WKV-7 recurrence: loop over the chunks of the sequence",
    "nsa": "compressed-block count, selection-block tables and query chunks are host ints of the length",
}


def compiled_graphs() -> int:
    return counters["stats"]["unique_graphs"]


def _train_step(model: torch.nn.Module, optimizer: torch.optim.Optimizer, length: int) -> None:
    ids = torch.randint(0, model.config.vocab_size, (2, length + 1))
    loss = model(ids[:, :-1], targets=ids[:, 1:], return_logits=False).loss
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


@pytest.mark.parametrize("variant", VARIANTS)
def test_blocks_compile_whole_and_steps_do_not_recompile(variant, one_thread):
    torch._dynamo.reset()
    counters.clear()
    torch.manual_seed(0)
    model = effzoo.build(variant, "tiny", dtype="float32", max_seq_len=256, n_layers=2)
    for block in model.blocks:  # as effzoo.train.parallel does, with graph breaks made errors
        block.compile(fullgraph=True, backend="eager")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    _train_step(model, optimizer, 32)
    first = compiled_graphs()
    assert first >= 1
    for _ in range(9):  # steps 2..10
        _train_step(model, optimizer, 32)
    assert compiled_graphs() == first, f"{variant}: steps 2-10 recompiled"
    _train_step(model, optimizer, 48)  # a new length: at most one dynamic-shape recompile per graph
    dynamic = compiled_graphs()
    assert dynamic <= 2 * first
    _train_step(model, optimizer, 40)
    if variant in LENGTH_SPECIALISED:
        assert compiled_graphs() <= dynamic + first, f"{variant}: more than one graph per block and length"
    else:
        assert compiled_graphs() == dynamic, f"{variant}: a third sequence length recompiled"
