"""The measuring phases of ``benchmarks/gpu_check.py``, one per process:

    python benchmarks/gpu_phases.py PHASE --out DIR --deadline UNIX_SECONDS [--dry-run]

Each phase writes ``DIR/PHASE.json`` (``{"phase", "status", "rows", "skipped", "notes"}``) after every
row, so a phase killed at its deadline still leaves the rows it finished. A phase starts no new case
after its deadline and lists the cases it left out as "not run: budget". Cases reuse the benchmark
files' own set-ups (``benchmarks/test_bench_*.py``) and ``effzoo.bench`` helpers, so the device script
measures exactly what the benchmarks measure. With ``--dry-run`` (CPU, tiny shapes) the benchmark
modules pick their CPU shapes and ``torch.compile`` uses dynamo's ``eager`` backend (same graph capture,
no code generation), so the whole script runs in minutes.
"""
from __future__ import annotations

import argparse
import functools
import gc
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BUDGET_MARK = "not run: budget"
PYTEST_LINE = re.compile(r"^(\S+::\S+?)\s+(PASSED|FAILED|ERROR|SKIPPED|XFAIL|XPASS)\b(.*)$")
PYTEST_REASON = re.compile(r"^(FAILED|ERROR) (\S+::\S+?)(?: - (.*))?$")


class Phase:
    """Rows of one phase, rewritten to ``DIR/PHASE.json`` after every change."""

    def __init__(self, out: Path, name: str, deadline: float) -> None:
        self.path = out / f"{name}.json"
        self.deadline = deadline
        self.doc: dict[str, Any] = {"phase": name, "status": "running", "rows": [], "skipped": [], "notes": []}
        self.flush()

    def time_left(self) -> float:
        return self.deadline - time.time()

    def add(self, row: dict[str, Any]) -> None:
        self.doc["rows"].append(row)
        self.flush()

    def note(self, text: str) -> None:
        self.doc["notes"].append(text)
        self.flush()

    def cases(self, names: list[str]) -> Iterator[str]:
        """Yield case names until the deadline; list the rest as skipped."""
        for index, name in enumerate(names):
            if self.time_left() <= 0:
                self.doc["skipped"].extend(f"{n}: {BUDGET_MARK}" for n in names[index:])
                self.flush()
                return
            yield name

    def finish(self) -> None:
        self.doc["status"] = "cut: budget" if self.doc["skipped"] else "done"
        self.flush()

    def flush(self) -> None:
        from effzoo.atomic import write_json

        write_json(self.path, self.doc)


def _device():  # type: ignore[no-untyped-def]
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"


def _free() -> None:
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peak_gb() -> float | None:
    import torch

    return torch.cuda.max_memory_allocated() / 1e9 if torch.cuda.is_available() else None


def _bench_module(name: str):  # type: ignore[no-untyped-def]
    """Import ``benchmarks/<name>.py`` (its module constants pick the GPU or the CPU shapes)."""
    if str(HERE) not in sys.path:
        sys.path.insert(0, str(HERE))
    return __import__(name)


def _repeats(device) -> dict[str, int]:  # type: ignore[no-untyped-def]
    return dict(warmup=3, repeat=10) if device.type == "cuda" else dict(warmup=1, repeat=2)


def _peak_flops() -> float | None:
    import torch

    if not torch.cuda.is_available():
        return None
    from effzoo.backends.cuda import CUDA_PEAK_FLOPS, peak_from_table

    return peak_from_table(torch.cuda.get_device_name(), torch.bfloat16, CUDA_PEAK_FLOPS)[0]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None


# -- 1. correctness --------------------------------------------------------------------------
def correctness(phase: Phase, dry_run: bool) -> None:
    """``pytest -m gpu tests``: every gpu-marked comparison of a fast path with its reference (they skip
    on CPU, which the dry run shows). Output streams into the log; rows are parsed from ``-v`` lines."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-v", "-rfE", "-p", "no:cacheprovider",
               "--continue-on-collection-errors", "tests"]  # a test file needing a missing extra must not stop the rest
    phase.note(" ".join(command[1:]))
    lines: list[str] = []
    proc = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    assert proc.stdout is not None
    reasons: dict[str, str] = {}
    try:
        for line in proc.stdout:
            sys.stdout.write(line)
            lines.append(line.rstrip())
            match = PYTEST_LINE.match(line.rstrip())
            if match:
                test, outcome, rest = match.groups()
                detail = re.sub(r"\s*\[\s*\d+%\]$", "", rest).strip(" ()")
                phase.add({"test": test, "outcome": outcome, "detail": detail[:200]})
            reason = PYTEST_REASON.match(line.rstrip())
            if reason:
                reasons[reason.group(2)] = (reason.group(3) or "")[:300]
            if phase.time_left() <= 0:
                os.killpg(proc.pid, 9)
                phase.doc["skipped"].append(f"remaining gpu tests: {BUDGET_MARK}")
                break
    finally:
        proc.wait()
    for row in phase.doc["rows"]:
        if row["test"] in reasons and reasons[row["test"]]:
            row["detail"] = reasons[row["test"]]
    counts: dict[str, int] = {}
    for row in phase.doc["rows"]:
        counts[row["outcome"]] = counts.get(row["outcome"], 0) + 1
    phase.doc["counts"] = counts
    phase.note(f"pytest exit code {proc.returncode}: " + (lines[-1] if lines else "no output"))


# -- 2. whole-model race ---------------------------------------------------------------------
def race(phase: Phase, dry_run: bool) -> None:
    """gqa (Qwen2.5 shape) training step, effzoo against transformers' Qwen2ForCausalLM, eager and
    compiled, same batch and shape, in this one process (benchmarks/test_bench_train_step.py set-ups)."""
    import effzoo
    from effzoo.analysis import model_stats
    from effzoo.bench.timing import timed

    bench = _bench_module("test_bench_train_step")
    device = bench.DEVICE
    flops = model_stats(effzoo.build("gqa", bench.SIZE, device="meta"), bench.SEQ)["train_flops_per_token"]
    peak = _peak_flops()
    phase.note(f"gqa {bench.SIZE}, batch {bench.BATCH} x {bench.SEQ}, autocast {bench.AMP}, fused AdamW, clip 1.0")
    speeds: dict[str, float] = {}
    for case in phase.cases(["transformers-eager", "effzoo-eager", "transformers-compiled", "effzoo-compiled"]):
        library, mode = case.split("-")
        _free()
        try:
            build = bench._hf_model if library == "transformers" else bench._effzoo_model
            model, loss_fn = build(mode == "compiled")
            step = bench._train_step(model, loss_fn)
            start = time.time()
            step()  # the first step compiles
            first_s = time.time() - start
            seconds = timed(step, device, **_repeats(device))
        except Exception as exc:  # noqa: BLE001 - one failed case must not hide the others
            phase.add({"case": case, "error": _error(exc)})
            continue
        tokens_per_s = bench.BATCH * bench.SEQ / seconds
        speeds[case] = tokens_per_s
        phase.add({"case": case, "tokens_per_s": tokens_per_s, "step_ms": seconds * 1e3, "first_step_s": first_s,
                   "mfu": tokens_per_s * flops / peak if peak else None, "peak_gb": _peak_gb()})
        del model, loss_fn, step
    for row in phase.doc["rows"]:
        if "tokens_per_s" in row and row["case"].startswith("effzoo"):
            mode = row["case"].split("-")[1]
            row["vs_transformers_same_mode"] = _ratio(row["tokens_per_s"], speeds.get(f"transformers-{mode}"))
            row["vs_transformers_eager"] = _ratio(row["tokens_per_s"], speeds.get("transformers-eager"))
            row["vs_transformers_compiled"] = _ratio(row["tokens_per_s"], speeds.get("transformers-compiled"))
    phase.flush()


# -- 3. batch-1 decode -----------------------------------------------------------------------
def decode(phase: Phase, dry_run: bool) -> None:
    """gqa greedy decoding, batch 1, 128-token prompt, 256 new tokens: effzoo's eager cached loop, fast
    decoder (CUDA graph on CUDA, the uncaptured static step on CPU), fast+compiled, and transformers'
    ``generate`` (benchmarks/test_bench_decode.py set-ups). Tokens are compared with the eager loop's."""
    import torch

    from effzoo.bench.timing import timed

    bench = _bench_module("test_bench_decode")
    device = bench.DEVICE
    model = bench._model("gqa")
    prompt = bench._prompt(model.config.vocab_size)
    phase.note(f"gqa {bench.SIZE} {bench.DTYPE}, batch {bench.BATCH}, prompt {bench.PROMPT}, new {bench.NEW}")
    reference_tokens = None
    speeds: dict[str, float] = {}
    for case in phase.cases(["effzoo-eager", "effzoo-fast", "transformers-generate", "effzoo-fast-compiled"]):
        _free()
        try:
            if case == "transformers-generate":
                hf = bench._transformers_qwen2(model)

                def run() -> torch.Tensor:
                    with torch.no_grad():
                        return hf.generate(prompt, max_new_tokens=bench.NEW, min_new_tokens=bench.NEW,
                                           do_sample=False, pad_token_id=0, attention_mask=torch.ones_like(prompt))
                path = "transformers"
            else:
                decoder = bench._decoder(model, case.removeprefix("effzoo-"))
                run = functools.partial(decoder.generate, prompt, bench.NEW)
                path = decoder.path(device)
            start = time.time()
            tokens = run()
            first_s = time.time() - start
            repeats = dict(warmup=1, repeat=5) if device.type == "cuda" else dict(warmup=0, repeat=1)
            seconds = timed(run, device, **repeats)
        except Exception as exc:  # noqa: BLE001
            phase.add({"case": case, "error": _error(exc)})
            continue
        row: dict[str, Any] = {"case": case, "path": path, "tokens_per_s": bench.BATCH * bench.NEW / seconds,
                               "first_call_s": first_s, "peak_gb": _peak_gb()}
        if case == "effzoo-eager":
            reference_tokens = tokens
        elif case.startswith("effzoo") and reference_tokens is not None:
            row["same_tokens_as_eager"] = bool(torch.equal(tokens, reference_tokens))
        speeds[case] = row["tokens_per_s"]
        phase.add(row)
    for row in phase.doc["rows"]:
        if "tokens_per_s" in row and row["case"] != "transformers-generate":
            row["vs_transformers"] = _ratio(row["tokens_per_s"], speeds.get("transformers-generate"))
    phase.flush()


# -- 4. kernels ------------------------------------------------------------------------------
def kernels(phase: Phase, dry_run: bool) -> None:
    """NSA vs dense causal SDPA (cuDNN) at long contexts; Mamba-2 / RWKV-7 blocks (and mamba-ssm / fla
    when installed) vs the dense-attention block; the MoE layer vs a dense FFN of the same active FLOPs."""
    from effzoo.bench.timing import timed

    nsa = _bench_module("test_bench_nsa")
    device = nsa.DEVICE
    repeats = dict(warmup=2, repeat=5) if device.type == "cuda" else dict(warmup=1, repeat=2)
    lengths = [8192, 16384, 32768, 65536] if device.type == "cuda" else [128, 256]
    cases = [f"nsa-T{n}-{mode}" for mode in ("fwd_bwd", "fwd") for n in lengths]
    cases += ["moe-fwd_bwd", "moe-fwd"]
    mixer_lengths = [2048, 8192, 16384] if device.type == "cuda" else [64, 128]
    cases += [f"mixer-{name}-T{n}" for n in mixer_lengths for name in _mixers(device)]
    dense_block_s: dict[int, float] = {}
    for case in phase.cases(cases):
        _free()
        try:
            if case.startswith("nsa"):
                _, length, mode = case.split("-")
                backward = mode == "fwd_bwd"
                dense_s = timed(nsa.dense_step(int(length[1:]), backward), device, **repeats)
                nsa_s = timed(nsa.nsa_step(int(length[1:]), backward), device, **repeats)
                phase.add({"case": case, "dense_ms": dense_s * 1e3, "ms": nsa_s * 1e3,
                           "speedup_vs_dense": dense_s / nsa_s, "peak_gb": _peak_gb()})
            elif case.startswith("moe"):
                moe = _bench_module("test_bench_moe")
                backward = case.endswith("fwd_bwd")
                dense_s = timed(moe._step(moe._dense(), backward), device, **repeats)
                moe_s = timed(moe._step(moe._moe("auto"), backward), device, **repeats)
                flops = moe.SHAPE.train_flops() / (1 if backward else 3)
                phase.add({"case": case, "dense_ms": dense_s * 1e3, "ms": moe_s * 1e3,
                           "tflops": flops / moe_s / 1e12, "dense_tflops": flops / dense_s / 1e12,
                           "speedup_vs_dense": dense_s / moe_s, "peak_gb": _peak_gb()})
            else:
                _, name, length = case.split("-")
                seconds = timed(_mixer_step(name, int(length[1:]), device), device, **repeats)
                if name == "gqa":
                    dense_block_s[int(length[1:])] = seconds
                phase.add({"case": case, "ms": seconds * 1e3, "tokens_per_s": int(length[1:]) / seconds,
                           "speedup_vs_dense": _ratio(dense_block_s.get(int(length[1:])), seconds),
                           "peak_gb": _peak_gb()})
        except Exception as exc:  # noqa: BLE001
            phase.add({"case": case, "error": _error(exc)})
    phase.note(f"NSA/dense shape {nsa.SHAPE}; mixer rows: layer-0 block fwd+bwd, batch 1; "
               "speedup_vs_dense > 1 means faster than dense attention")


MIXERS = {"gqa": {}, "mamba": {}, "rwkv": {}, "mamba+mamba_ssm": {"kernel": "mamba_ssm"},
          "rwkv+fla": {"kernel": "fla"}}


def _mixers(device) -> list[str]:  # type: ignore[no-untyped-def]
    """Dense attention first (the baseline), then Mamba-2, RWKV-7, and the external kernels if present."""
    from effzoo_plugins.mamba.kernels import mamba_ssm_missing
    from effzoo_plugins.rwkv.kernels import has_fla

    names = ["gqa", "mamba", "rwkv"]
    if device.type == "cuda" and mamba_ssm_missing() is None:
        names.append("mamba+mamba_ssm")
    if device.type == "cuda" and has_fla():
        names.append("rwkv+fla")
    return names


def _mixer_step(name: str, length: int, device) -> Callable[[], None]:  # type: ignore[no-untyped-def]
    """Layer 0 of the variant at the mixer benchmark's size and dtype, forward + backward."""
    import torch

    import effzoo
    from effzoo.bench.speed import fwd_bwd
    from effzoo.interfaces import MixContext

    mixers = _bench_module("test_bench_mixers")
    variant = name.split("+")[0]
    model = effzoo.build(variant, mixers.SIZE, device=device, n_layers=1, max_seq_len=max(length, 2048),
                         **MIXERS[name]).to(mixers.DTYPE)
    positions = torch.arange(length, device=device)
    x = torch.randn(1, length, model.config.d_model, device=device, dtype=mixers.DTYPE, requires_grad=True)
    block = model.blocks[0]
    return fwd_bwd([x], lambda t: block(t, MixContext(positions=positions, position=model.position))[0])


# -- 5. one row per variant ------------------------------------------------------------------
def variants(phase: Phase, dry_run: bool) -> None:
    """Every registered variant: a short run of the real trainer (tokens/s, MFU, AMU, AL, peak memory)
    and batch-1 decode tokens/s through the fast decoder: the efficiency columns of the tables."""
    import torch

    import effzoo
    from effzoo.bench.speed import decode_throughput
    from effzoo.train import TrainConfig, train

    cuda = torch.cuda.is_available()
    size, seq, batch, steps = ("0.5B", 2048, 8, 25) if cuda else ("tiny", 64, 2, 3)
    compile_blocks = cuda and os.environ.get("EFFZOO_GPU_CHECK_COMPILE_VARIANTS") == "1"
    phase.note(f"size {size}, batch {batch} x {seq}, {steps} steps, {'compiled blocks' if compile_blocks else 'eager'}; "
               f"decode: batch 1, {'prompt 128, 256 new' if cuda else 'prompt 16, 16 new'}")
    names = [v.name for v in effzoo.list_variants(specs=True) if cuda or not v.capabilities.needs_cuda]
    for variant in phase.cases(names):
        _free()
        row: dict[str, Any] = {"variant": variant}
        try:
            with tempfile.TemporaryDirectory() as tmp:
                config = TrainConfig(variant=variant, size=size, seq_len=seq, batch_size=batch, steps=steps,
                                     compile=compile_blocks, eval_every=0, eval_batches=1, ckpt_every=0,
                                     log_every=steps, out=str(Path(tmp) / "run"), tensorboard=False, quiet=True)
                metrics = train(config).metrics
            row.update({key: metrics.get(key) for key in ("tokens_per_s", "mfu", "amu_gb", "al_s",
                                                            "peak_memory_gb", "dtype")})
        except Exception as exc:  # noqa: BLE001
            row["train_error"] = _error(exc)
        _free()
        try:
            model = effzoo.build(variant, size, device=_device(), dtype="bfloat16" if cuda else "float32").eval()
            short = {} if cuda else {"prompt_len": 16, "new_tokens": 16}
            row["decode_tokens_per_s"] = decode_throughput(model, repeat=3 if cuda else 1, **short)
            row["decode_path"] = _decode_path(model)
            del model
        except Exception as exc:  # noqa: BLE001
            row["decode_error"] = _error(exc)
        phase.add(row)


def _decode_path(model) -> str:  # type: ignore[no-untyped-def]
    from effzoo.model.fast_decode import decoder_for

    return decoder_for(model).path(model.embed.weight.device)


PHASES: dict[str, Callable[[Phase, bool], None]] = {
    "correctness": correctness, "race": race, "decode": decode, "kernels": kernels, "variants": variants,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("phase", choices=list(PHASES))
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--deadline", type=float, required=True, help="unix time after which no case starts")
    parser.add_argument("--dry-run", action="store_true")
    args = parser.parse_args(argv)
    import torch

    if args.dry_run:  # trace the same graphs, skip code generation: minutes on a CPU, not tens of minutes
        torch.compile = functools.partial(torch.compile, backend="eager")  # type: ignore[assignment]
        os.environ.setdefault("EFFZOO_DECODE_PROMPT", "16")  # read by benchmarks/test_bench_decode.py
        os.environ.setdefault("EFFZOO_DECODE_NEW", "32")
    phase = Phase(args.out, args.phase, args.deadline)
    try:
        PHASES[args.phase](phase, args.dry_run)
    except Exception as exc:  # noqa: BLE001 - the phase's JSON says what broke
        phase.doc["status"] = f"failed: {_error(exc)}"
        phase.flush()
        raise
    phase.finish()
    return 0


if __name__ == "__main__":
    sys.exit(main())
