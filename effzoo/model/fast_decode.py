"""Fast decoding: one static-shape step per token, captured once in a CUDA graph and replayed.

The eager cached path (:func:`effzoo.model.generate.generate`) builds positions from host ints, writes
the KV cache at a host offset and attends over a growing slice: fine eagerly, impossible to capture.
The static path (``EffzooModel.forward(ids, cache=cache, positions=device_tensor)``) instead

- takes the token positions from a device tensor,
- has every layer write its cache in place at those slots (slot i holds position i),
- attends over the whole preallocated cache; slots not written yet are in the future, so causality
  alone masks them,

so a decoding step has fixed shapes, fixed buffer addresses and no host sync. :class:`StaticDecoder`
prefills the prompt through that path (uncaptured: its length varies), captures the single-token step
in a ``torch.cuda.CUDAGraph`` on CUDA and replays it per token. Blocks opt in with
``supports_static_decode()``; for any other model, on CPU with ``mode="auto"``, or with
``mode="eager"``, it runs the eager loop, so the tokens are the same either way.
:func:`check_static_step` verifies a block's claim on any device (see docs/decoding.md).
"""
from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils._pytree import tree_map
from torch.utils._python_dispatch import TorchDispatchMode

from ..errors import ConfigError, close_matches
from .generate import check_request, generate, sample_next

MODES = ("auto", "graph", "static", "eager")
SLOT_MULTIPLE = 256  # cache capacity is rounded up to this, so one capture serves many request lengths
EOS_POLL_EVERY = 32  # decoding steps between the (host-syncing) checks whether every sequence finished
WARMUP_STEPS = 2  # eager steps on a side stream before capture (allocator and kernel selection settle)
# ATen ops that read device memory on the host (a sync on CUDA, fatal inside graph capture).
HOST_SYNC_OPS = frozenset({
    "aten::_local_scalar_dense", "aten::is_nonzero", "aten::item", "aten::nonzero", "aten::masked_select",
    "aten::_unique2", "aten::unique_consecutive", "aten::equal",
})


class HostSyncError(RuntimeError):
    """A decoding step read a device value on the host (``.item()``, ``int(t)``, ``bool(t)``, ...)."""


def _static_step(model: nn.Module, token: Tensor, cache: Any, position: Tensor, backend: str) -> Tensor:
    """One token per sequence at the device ``position`` (1,): last-position logits (B, V)."""
    return model(token, cache=cache, positions=position, backend=backend).logits[:, -1]


def _static_backend(model: nn.Module) -> str:
    """The attention kernel of the static path: explicit positions need sdpa or the reference."""
    return "reference" if model.config.kernel == "reference" else "sdpa"


class _Session:
    """Buffers of one decoding setup (batch, capacity, device): cache, input token and position, and
    the captured graph. Holds no reference to the model, so a weak per-model registry can keep it."""

    def __init__(self, model: nn.Module, batch: int, capacity: int, *, graph: bool, compile: bool) -> None:
        ref = model.embed.weight
        self.signature = _signature(model, batch, graph, compile)
        self.cache = model.new_cache(batch, capacity)
        self.token = torch.zeros(batch, 1, dtype=torch.long, device=ref.device)
        self.position = torch.zeros(1, dtype=torch.long, device=ref.device)
        self.backend = _static_backend(model)
        self._forward = torch.compile(_static_step, dynamic=False) if compile else _static_step
        self.graph: torch.cuda.CUDAGraph | None = None
        self.logits: Tensor | None = None
        if graph:
            self._capture(model)

    @property
    def capacity(self) -> int:
        return self.cache.max_len

    def _capture(self, model: nn.Module) -> None:
        """Record the step once; the warm-up writes only slot 0, which every prefill overwrites."""
        device = self.position.device
        stream = torch.cuda.Stream(device)
        stream.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(stream):
            for _ in range(WARMUP_STEPS):
                self._forward(model, self.token, self.cache, self.position, self.backend)
        torch.cuda.current_stream(device).wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = self._forward(model, self.token, self.cache, self.position, self.backend)

    def prefill(self, model: nn.Module, ids: Tensor) -> Tensor:
        """Write the prompt (B, T) at slots 0..T-1 through the static path; last-position logits."""
        positions = torch.arange(ids.shape[1], device=ids.device)
        return model(ids, cache=self.cache, positions=positions, backend=self.backend).logits[:, -1]

    def step(self, model: nn.Module, token: Tensor, position: int) -> Tensor:
        """Feed ``token`` (B,) at ``position``; logits (B, V). The graph's output buffer is reused."""
        self.token.copy_(token[:, None])
        self.position.fill_(position)  # a host scalar into a device buffer: no sync
        if self.graph is None:
            return self._forward(model, self.token, self.cache, self.position, self.backend)
        self.graph.replay()
        assert self.logits is not None
        return self.logits


def _signature(model: nn.Module, batch: int, graph: bool, compile: bool) -> tuple[Any, ...]:
    """What a session depends on: new weights (``.to()``, reloads) or shapes need a new capture."""
    tensors = (*model.parameters(), *model.buffers())
    return (batch, graph, compile, tuple((t.data_ptr(), t.dtype, t.device) for t in tensors))


_SESSIONS: weakref.WeakKeyDictionary[nn.Module, _Session] = weakref.WeakKeyDictionary()


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


def _trim_after_eos(tokens: Tensor, prompt_len: int, eos_token_id: int | None) -> Tensor:
    """Cut where the eager loop stops: right after the step at which every sequence had emitted eos."""
    if eos_token_id is None or tokens.shape[1] == prompt_len:
        return tokens
    hit = tokens[:, prompt_len:] == eos_token_id
    if not bool(hit.any(dim=1).all()):
        return tokens
    last_first_eos = int(hit.int().argmax(dim=1).max())  # argmax returns each row's first eos
    return tokens[:, : prompt_len + last_first_eos + 1]


class StaticDecoder:
    """Greedy or sampled generation through the static-shape step, CUDA-graph captured on CUDA.

    ``mode``: ``auto`` (graph on CUDA when every block supports it, else the eager loop), ``graph``,
    ``static`` (the static step without capture, any device: what the CPU tests compare), ``eager``.
    ``compile=True`` also runs the step through ``torch.compile`` before capture.
    The captured session (cache, buffers, graph) is kept per model and reused while the batch, the
    weights' storage and the needed capacity allow.
    """

    def __init__(self, model: nn.Module, *, mode: str = "auto", compile: bool = False) -> None:
        if mode not in MODES:
            hint = close_matches(mode, MODES)
            raise ConfigError(f"unknown decode mode {mode!r}{f' (did you mean {hint[0]!r}?)' if hint else ''}; "
                              f"choose one of {', '.join(MODES)}")
        self.model, self.mode, self.compile = model, mode, compile

    @property
    def supported(self) -> bool:
        """Whether every block of the model supports the static-shape step."""
        return all(block.supports_static_decode() for block in self.model.blocks)

    def path(self, device: torch.device) -> str:
        """The path a request on ``device`` takes: ``graph``, ``static`` or ``eager``."""
        if self.mode == "eager":
            return "eager"
        if self.mode == "auto":
            return "graph" if device.type == "cuda" and self.supported else "eager"
        self.model.check_static_decode()
        if self.mode == "graph" and device.type != "cuda":
            raise ConfigError(f"decode mode 'graph' needs a CUDA device, got {device}; use 'static' or 'auto'")
        return self.mode

    def _session(self, batch: int, total: int, graph: bool) -> _Session:
        session = _SESSIONS.get(self.model)
        wanted = _signature(self.model, batch, graph, self.compile)
        if session is None or session.signature != wanted or session.capacity < total:
            _SESSIONS.pop(self.model, None)  # free the old graph and cache before allocating new ones
            capacity = min(_round_up(total, SLOT_MULTIPLE), self.model.config.max_seq_len)
            session = _SESSIONS[self.model] = _Session(self.model, batch, capacity, graph=graph, compile=self.compile)
        return session

    @torch.no_grad()
    def generate(
        self, input_ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0, top_k: int | None = None,
        top_p: float | None = None, eos_token_id: int | None = None, generator: torch.Generator | None = None,
    ) -> Tensor:
        """Prompt (B, T) -> prompt plus up to ``max_new_tokens`` tokens, as :func:`generate` returns."""
        path = self.path(input_ids.device)
        if path == "eager":
            return generate(self.model, input_ids, max_new_tokens, temperature=temperature, top_k=top_k,
                            top_p=top_p, eos_token_id=eos_token_id, generator=generator)
        batch, length = input_ids.shape
        total = check_request(self.model, length, max_new_tokens)
        was_training = self.model.training
        self.model.eval()
        try:
            session = self._session(batch, total, graph=path == "graph")
            tokens = input_ids.new_empty(batch, total)
            tokens[:, :length] = input_ids
            logits = session.prefill(self.model, input_ids)
            finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
            written = length
            for step in range(max_new_tokens):
                nxt = sample_next(logits, temperature, top_k, top_p, generator)
                if eos_token_id is not None:
                    nxt = torch.where(finished, torch.full_like(nxt, eos_token_id), nxt)
                    finished |= nxt == eos_token_id
                tokens[:, written] = nxt
                written += 1
                if step + 1 == max_new_tokens:
                    break
                if eos_token_id is not None and (step + 1) % EOS_POLL_EVERY == 0 and bool(finished.all()):
                    break
                logits = session.step(self.model, nxt, written - 1)
            return _trim_after_eos(tokens[:, :written], length, eos_token_id)
        finally:
            self.model.train(was_training)


def decoder_for(model: nn.Module) -> StaticDecoder:
    """The ``mode="auto"`` decoder behind ``model.generate(..., fast=True)``; its session is cached per model."""
    return StaticDecoder(model)


class _StepTracer(TorchDispatchMode):
    """Records every ATen op of a call with its tensor shapes and non-tensor arguments; rejects host syncs."""

    def __init__(self) -> None:
        super().__init__()
        self.ops: list[tuple[str, Any]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        kwargs = kwargs or {}
        name = func.overloadpacket._qualified_op_name
        if name in HOST_SYNC_OPS:
            raise HostSyncError(f"{name} reads a device value on the host inside the decoding step "
                                "(.item(), int(t), bool(t) or a data-dependent shape); it cannot be captured")
        describe = lambda v: ("tensor", tuple(v.shape), v.dtype) if isinstance(v, Tensor) else v  # noqa: E731
        self.ops.append((str(func), tree_map(describe, (args, kwargs))))
        return func(*args, **kwargs)


@torch.no_grad()
def check_static_step(model: nn.Module, *, batch: int = 1, prompt_len: int = 3) -> None:
    """Verify on any device that the model's decoding step can be captured and replayed.

    Runs the step at two positions under an ATen dispatch tracer and raises :class:`HostSyncError` if
    it reads device values on the host, or AssertionError if the two calls differ in anything but
    tensor contents (an op, a shape, or a Python number derived from the position): a CUDA graph
    replays exactly the recorded kernels with their recorded arguments.
    """
    model.check_static_decode()
    device = model.embed.weight.device
    session = _Session(model, batch, prompt_len + 2, graph=False, compile=False)
    ids = torch.randint(0, model.config.vocab_size, (batch, prompt_len), device=device)
    session.prefill(model, ids)
    traces = []
    for position in (prompt_len, prompt_len + 1):
        session.token.fill_(position)
        session.position.fill_(position)
        with _StepTracer() as tracer:
            _static_step(model, session.token, session.cache, session.position, session.backend)
        traces.append(tracer.ops)
    first, second = traces
    for index, (a, b) in enumerate(zip(first, second)):
        if a != b:
            raise AssertionError(f"decoding step differs between positions at op {index}: {a} vs {b}; "
                                 "something in the step depends on a host-side position")
    if len(first) != len(second):
        raise AssertionError(f"decoding step ran {len(first)} ops at one position and {len(second)} at the next")
