"""The whole GPU verification of effzoo as one command, most important answers first.

    python benchmarks/gpu_check.py --out DIR [--budget-s 540] [--dry-run] [--phases correctness,race,...]

Set-up installs effzoo from this checkout into the running Python, offline (``pip install --no-deps
--no-index --no-build-isolation -e .``; the device image has effzoo's dependencies), unless it is
installed from here already. Then the phases run in this order, each in its own process with a share of
the budget plus whatever earlier phases left unused (a phase that finds no time left is marked
"not run: budget"):

1. ``correctness``: ``pytest -m gpu`` (fast paths against references, outputs and gradients);
2. ``race``: gqa 0.5B training step, effzoo vs transformers Qwen2, eager and compiled;
3. ``decode``: gqa 0.5B batch-1 decoding, effzoo fast decode vs transformers ``generate``;
4. ``kernels``: NSA vs cuDNN dense attention, Mamba-2 / RWKV-7 vs dense attention, MoE vs dense FFN;
5. ``variants``: one row per variant (training tokens/s, MFU, AMU, AL, peak memory; decode tokens/s).

DIR receives at most 8 files: ``summary.md`` and ``results.json`` (rewritten after every phase, so a run
killed part-way still returns both), ``gpu_check.log`` (all output) and one ``PHASE.json`` per phase
(written after every row). ``--dry-run`` runs everything on the CPU at tiny sizes (CI runs it).
This file uses the standard library only: effzoo may not be importable before the set-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
WORKER = Path(__file__).resolve().parent / "gpu_phases.py"
PHASES = ("correctness", "race", "decode", "kernels", "variants")
SHARES = {"correctness": 0.25, "race": 0.25, "decode": 0.10, "kernels": 0.20, "variants": 0.20}
GRACE_S = 30.0  # a phase past its deadline finishes its current case for this long before it is killed
MIN_PHASE_S = 10.0  # a phase with less time than this left is not started
BUDGET_MARK = "not run: budget"
LOG = "gpu_check.log"


def _write(path: Path, text: str) -> None:
    """Atomic replace (a kill never leaves half a summary); the temporary name is the target's + '.tmp'."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _run(command: list[str], log, timeout: float | None = None, env: dict[str, str] | None = None) -> int:  # type: ignore[no-untyped-def]
    """Run ``command`` from the repository root with its output appended to ``log``; kill its whole
    process group at ``timeout`` seconds (returns -9 then)."""
    log.write(f"\n$ {' '.join(command)}\n")
    log.flush()
    proc = subprocess.Popen(command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        proc.wait()
        return -9


def set_up(log) -> str:  # type: ignore[no-untyped-def]
    """Make ``import effzoo`` (with its plugin entry points) resolve to this checkout."""
    probe = [sys.executable, "-c", "import effzoo; print(effzoo.__file__); print(len(effzoo.list_variants()))"]
    found = subprocess.run(probe, cwd="/", capture_output=True, text=True)
    if found.returncode == 0 and Path(found.stdout.split()[0]).resolve().is_relative_to(ROOT):
        return f"effzoo already installed from {ROOT} ({found.stdout.split()[1]} variants)"
    code = _run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-index", "--no-build-isolation",
                 "-e", str(ROOT)], log)
    found = subprocess.run(probe, cwd="/", capture_output=True, text=True)
    if found.returncode != 0:
        return f"set-up failed (pip exit {code}): {found.stderr.strip().splitlines()[-1:] or ['?']}"
    return f"installed effzoo from {ROOT} offline (pip exit {code}; {found.stdout.split()[1]} variants)"


def environment(dry_run: bool) -> dict[str, Any]:
    """Device, library versions, driver and commit, read in a child (no CUDA context in this process)."""
    script = (
        "import json, torch, importlib.metadata as m\n"
        "def v(n):\n"
        "    try: return m.version(n)\n"
        "    except Exception: return None\n"
        "cuda = torch.cuda.is_available()\n"
        "print(json.dumps({'device': torch.cuda.get_device_name() if cuda else 'cpu', 'torch': torch.__version__,"
        " 'cuda': torch.version.cuda, 'triton': v('triton'), 'transformers': v('transformers'),"
        " 'flash_linear_attention': v('flash-linear-attention'), 'mamba_ssm': v('mamba-ssm'),"
        " 'gpus': torch.cuda.device_count()}))\n"
    )
    env: dict[str, Any] = {"python": platform.python_version(), "host": platform.node(), "dry_run": dry_run,
                           "cpus": os.cpu_count()}
    probe = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=_child_env(dry_run))
    env.update(json.loads(probe.stdout) if probe.returncode == 0 else {"device": f"unknown ({probe.stderr[-200:]})"})
    smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                         capture_output=True, text=True) if _has("nvidia-smi") else None
    env["driver"] = smi.stdout.strip() if smi is not None and smi.returncode == 0 else None
    env["commit"] = _commit()
    return env


def _has(program: str) -> bool:
    return any((Path(p) / program).exists() for p in os.environ.get("PATH", "").split(os.pathsep))


def _commit() -> str:
    """$EFFZOO_COMMIT if set (the device copy has no git metadata), else HEAD of the checkout
    (+ ' with local changes') from git or the .git files, else unknown."""
    if os.environ.get("EFFZOO_COMMIT"):
        return os.environ["EFFZOO_COMMIT"]
    if _has("git"):
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True)
        if head.returncode == 0:
            dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                   capture_output=True, text=True).stdout.strip()
            return head.stdout.strip() + (" with local changes" if dirty else "")
    head_file = ROOT / ".git" / "HEAD"
    if head_file.is_file():
        ref = head_file.read_text().strip()
        if ref.startswith("ref: ") and (ROOT / ".git" / ref[5:]).is_file():
            return (ROOT / ".git" / ref[5:]).read_text().strip()
        return ref
    return "unknown (no git metadata in this copy)"


def _child_env(dry_run: bool) -> dict[str, str]:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if dry_run:
        env["CUDA_VISIBLE_DEVICES"] = ""  # the dry run is the CPU rehearsal, whatever the machine has
    return env


# -- the report ------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value).replace("|", "\\|").replace("\n", " ")


def table(rows: list[dict[str, Any]]) -> str:
    """A markdown table over the union of the rows' keys, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def summary(env: dict[str, Any], setup: str, results: dict[str, dict[str, Any]], budget: float,
            started: float) -> str:
    title = "effzoo GPU check" + (" (dry run: CPU, tiny sizes)" if env.get("dry_run") else "")
    lines = [f"# {title}", "",
             f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
             f"elapsed {time.time() - started:.0f} s of a {budget:.0f} s budget",
             f"- device: {env.get('device')} (driver: {env.get('driver') or '–'}; CUDA {env.get('cuda') or '–'})",
             f"- torch {env.get('torch')}, triton {env.get('triton')}, transformers {env.get('transformers')}, "
             f"fla {env.get('flash_linear_attention') or '–'}, mamba-ssm {env.get('mamba_ssm') or '–'}, "
             f"python {env.get('python')}",
             f"- commit: {env.get('commit')}",
             f"- set-up: {setup}", ""]
    for number, name in enumerate(PHASES, 1):
        doc = results.get(name, {"status": "not selected"})
        lines += [f"## {number}. {name}", "", f"status: {doc.get('status')}"
                  + (f"; {doc['seconds']:.0f} s" if "seconds" in doc else ""), ""]
        lines += [f"- {note}" for note in doc.get("notes", [])]
        if doc.get("counts"):
            lines.append("- outcomes: " + ", ".join(f"{k} {v}" for k, v in sorted(doc["counts"].items())))
        lines += [f"- {skip}" for skip in doc.get("skipped", [])]
        rows = doc.get("rows", [])
        if name == "correctness":  # passes and skips are counted above; failures are the news
            shown = [r for r in rows if r.get("outcome") not in ("PASSED", "SKIPPED")]
            rows = shown or [{"test": f"{len(rows)} tests", "outcome": "no failures"}]
        lines += ["", table(rows) if rows else "(no rows)", ""]
    return "\n".join(lines)


def run_phases(out: Path, phases: list[str], budget: float, dry_run: bool) -> dict[str, dict[str, Any]]:
    started = time.time()
    end = started + budget
    results: dict[str, dict[str, Any]] = {}
    with open(out / LOG, "a", encoding="utf-8") as log:
        setup = set_up(log)
        env = environment(dry_run)
        log.write(f"set-up: {setup}\nenvironment: {json.dumps(env)}\n")

        def report() -> None:
            _write(out / "summary.md", summary(env, setup, results, budget, started))
            _write(out / "results.json", json.dumps({"environment": env, "setup": setup, "phases": results},
                                                    indent=2) + "\n")

        for name in phases:
            results[name] = {"status": BUDGET_MARK}
        report()
        for index, name in enumerate(phases):
            now = time.time()
            left = end - now
            if left < MIN_PHASE_S:
                continue
            later = sum(SHARES[p] for p in phases[index + 1:])
            # this phase's share of what is left, in proportion to the shares of the phases still to run
            share = left * SHARES[name] / (SHARES[name] + later)
            deadline = now + share
            command = [sys.executable, str(WORKER), name, "--out", str(out), "--deadline", f"{deadline:.1f}"]
            code = _run(command + (["--dry-run"] if dry_run else []), log,
                        timeout=max(1.0, min(deadline + GRACE_S, end) - now), env=_child_env(dry_run))
            path = out / f"{name}.json"
            doc = json.loads(path.read_text()) if path.is_file() else {"rows": [], "notes": []}
            if code == -9:
                doc["status"] = "killed at its deadline (rows so far kept)"
            elif code != 0 and not str(doc.get("status", "")).startswith("failed"):
                doc["status"] = f"failed (exit {code}; see {LOG})"
            doc["seconds"] = time.time() - now
            results[name] = doc
            report()
        print(summary(env, setup, results, budget, started))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="effzoo's GPU verification, one command (see the module doc)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (at most 8 files are written)")
    parser.add_argument("--budget-s", type=float, default=540.0, help="wall-clock budget for all phases")
    parser.add_argument("--dry-run", action="store_true", help="every phase on the CPU at tiny sizes")
    parser.add_argument("--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}")
    args = parser.parse_args(argv)
    phases = [p.strip() for p in args.phases.split(",") if p.strip()]
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        parser.error(f"unknown phase(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(PHASES)}")
    if args.budget_s <= 0:
        parser.error(f"--budget-s must be positive, got {args.budget_s}")
    args.out.mkdir(parents=True, exist_ok=True)
    phases = [p for p in PHASES if p in phases]  # always in the documented order
    run_phases(args.out, phases, args.budget_s, args.dry_run)
    return 0


if __name__ == "__main__":
    sys.exit(main())
