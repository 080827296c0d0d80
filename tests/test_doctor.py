"""``effzoo doctor`` and the thread plan the ``effzoo`` command applies (CPU only, fast)."""
from __future__ import annotations

import json

import pytest
import torch

from effzoo.cli import main
from effzoo.cli import doctor
from effzoo.cli.machine import available_cpus, fit_threads, plan_threads

REQUIRED_KERNELS = {"Triton", "fla", "mamba-ssm", "flash-attn", "causal-conv1d", "NVML", "torch_npu", "lm-eval"}


@pytest.mark.parametrize(
    "current,cores,load,environ,threads,pinned",
    [
        (2, 2, 0.0, {}, 2, None),              # idle: keep torch's count
        (8, 2, 0.0, {}, 2, None),              # more threads than cores (cgroup quota, affinity)
        (2, 2, 9.5, {}, 1, None),              # busy shared machine: the idle cores, at least one
        (4, 4, 1.2, {}, 3, None),
        (2, 2, 9.5, {"OMP_NUM_THREADS": "2"}, 2, "OMP_NUM_THREADS"),  # the user chose
    ],
)
def test_thread_plan(current, cores, load, environ, threads, pinned) -> None:
    plan = plan_threads(current, cores, load, environ)
    assert (plan.threads, plan.pinned_by) == (threads, pinned)
    assert plan.oversubscribed is (current > threads)


def test_available_cpus_honours_a_cgroup_quota(tmp_path) -> None:
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("max 100000\n")
    unlimited = available_cpus(cpu_max)
    assert unlimited >= 1
    cpu_max.write_text("50000 100000\n")  # half a core: one thread
    assert available_cpus(cpu_max) == 1
    assert available_cpus(tmp_path / "missing") == unlimited


def test_fit_threads_lowers_torch_threads_on_a_busy_machine(monkeypatch, capsys) -> None:
    previous = torch.get_num_threads()
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.getloadavg", lambda: (50.0, 50.0, 50.0))
    try:
        torch.set_num_threads(2)
        plan = fit_threads()
        assert plan.threads == 1 and torch.get_num_threads() == 1
        assert "using 1 torch thread(s) instead of 2" in capsys.readouterr().err
    finally:
        torch.set_num_threads(previous)


def test_doctor_json_report(capsys) -> None:
    assert main(["doctor", "--json", "--probe-seconds", "0.05"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["torch"]["version"] == torch.__version__
    assert report["torch"]["kind"] in ("CPU",) or report["torch"]["kind"].startswith(("CUDA", "ROCm"))
    assert {k["name"] for k in report["kernels"]} == REQUIRED_KERNELS
    assert all(k["install"] and k["cost"] for k in report["kernels"])
    assert report["threads"]["cores"] >= 1 and report["threads"]["threads"] >= 1
    if report["torch"]["backend"] == "cpu":
        quick = report["quick_suite"]
        assert quick["probe"]["runs"] >= 3 and quick["probe"]["best_gflops"] >= quick["probe"]["median_gflops"] > 0
        assert quick["estimate_seconds"] > 0 and isinstance(quick["fits"], bool)


def test_doctor_text_report(capsys) -> None:
    assert main(["doctor", "--no-probe"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"torch {torch.__version__}")
    for name in REQUIRED_KERNELS:
        assert f"  {name} " in out
    assert "threads: torch uses" in out and "--quick" in out


def test_estimate_scales_the_stated_time() -> None:
    assert doctor.quick_suite_estimate(doctor.REFERENCE_PROBE_GFLOPS) == pytest.approx(doctor.QUICK_SUITE_SECONDS)
    assert doctor.quick_suite_estimate(doctor.REFERENCE_PROBE_GFLOPS / 10) == pytest.approx(
        10 * doctor.QUICK_SUITE_SECONDS)
    one_core = doctor.quick_suite_estimate(doctor.REFERENCE_PROBE_GFLOPS, cores=1)
    assert one_core == pytest.approx(doctor.QUICK_SUITE_SECONDS * doctor.QUICK_SUITE_CORES)
    assert doctor.quick_suite_estimate(doctor.REFERENCE_PROBE_GFLOPS, cores=16) == pytest.approx(
        doctor.QUICK_SUITE_SECONDS)


def test_render_names_costs_and_a_cuda_torch_without_gpu() -> None:
    kernels = [{**doctor.kernel_status(k), "present": False, "version": None} for k in doctor.KERNELS]
    report = {
        "torch": {"version": "2.13.0", "kind": "CUDA 13.0", "backend": "cpu", "device": "cpu: 2 cores available"},
        "kernels": kernels,
        "threads": {"cores": 2, "load": 9.5, "current": 2, "threads": 1, "pinned_by": None, "cpu_count": 2,
                    "oversubscribed": True},
        "quick_suite": {"stated_seconds": 131.0, "estimate_seconds": 4860.0, "fits": False,
                        "probe": {"threads": 1, "runs": 9, "best_gflops": 90.0, "median_gflops": 5.0}},
    }
    text = "\n".join(doctor.render(report))
    assert doctor.CPU_TORCH in text  # a CUDA build on a machine without a GPU
    assert "NVML           missing: no cost on this machine (GPU only)" in text
    assert "torch_npu      missing: no Ascend NPU backend" in text
    assert "will use 1 thread(s)" in text
    assert "about 81 min here" in text and "will take longer than stated" in text


def test_bad_probe_time_is_a_one_line_error(capsys) -> None:
    assert main(["doctor", "--probe-seconds", "0"]) == 2
    assert capsys.readouterr().err.strip() == "effzoo doctor: error: --probe-seconds must be > 0, got 0.0"
