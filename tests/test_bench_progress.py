"""`effzoo bench` shows the suite's progress: variants done and left, an ETA from the measured speed,
and the current variant's steps; a plain periodic line when the output is not a terminal."""
from __future__ import annotations

import io
import re

from effzoo.bench.progress import SuiteProgress, choose_mode, format_duration
from effzoo.bench.suites import suite_entries
from effzoo.cli import main


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_eta_comes_from_the_measured_speed():
    clock, out = Clock(), io.StringIO()
    progress = SuiteProgress(3, mode="plain", stream=out, interval_s=4, clock=clock)
    progress.begin(1, "a", total_steps=10)
    assert progress.eta_s() is None  # nothing measured yet
    clock.now = 4.0
    progress.step(5)  # 5 of 10 steps in 4 s: this variant ~8 s, the other two as long
    assert progress.eta_s() == 4.0 + 2 * 8.0
    clock.now = 8.0
    progress.step(10)
    clock.now = 10.0  # 2 s of decoding and the throughput sweep after training
    progress.end("[1/3] a: done")
    assert progress.eta_s() == 2 * 10.0
    progress.begin(2, "b", total_steps=10)
    clock.now = 11.0
    progress.step(5)  # twice as fast as a: 2 s of training + 2 s of measuring, 1 s done
    assert progress.eta_s() == 3.0 + 10.0
    lines = out.getvalue().splitlines()
    assert lines[0] == "effzoo bench: [1/3] a: started | 0/3 variants done, 3 left | ETA estimating"
    assert lines[1] == "effzoo bench:   a: step 5/10 | 0/3 variants done, 3 left | elapsed 4s | ETA 20s"
    assert lines[2] == ("effzoo bench:   a: measuring decode and throughput | 0/3 variants done, 3 left | "
                        "elapsed 8s | ETA 16s")
    assert lines[3] == "effzoo bench: [1/3] a: done | 1/3 variants done, 2 left | ETA 20s"
    assert lines[4] == "effzoo bench: [2/3] b: started | 1/3 variants done, 2 left | ETA 20s"
    assert len(lines) == 5  # b's step at 1 s is within the 4 s interval: no line


def test_modes():
    assert choose_mode(io.StringIO(), quiet=False) == "plain"
    assert choose_mode(Terminal(), quiet=False) == "bar"
    assert choose_mode(Terminal(), quiet=True) == "off"
    out = io.StringIO()
    progress = SuiteProgress(1, mode="off", stream=out)
    progress.begin(1, "a", 4)
    progress.step(4)
    progress.end("done")
    assert out.getvalue() == ""
    terminal = Terminal()
    bars = SuiteProgress(2, mode="bar", stream=terminal)
    bars.begin(1, "gqa-tiny", 4)
    bars.step(2)
    bars.end("[1/2] gqa-tiny: ok")
    bars.close()
    assert "[1/2] gqa-tiny: ok" in terminal.getvalue() and "1/2 variants" in terminal.getvalue()
    assert format_duration(3725) == "1h02m05s" and format_duration(75) == "1m15s" and format_duration(9) == "9s"


def test_bench_prints_plain_progress_when_not_a_terminal_and_quiet_turns_it_off(tmp_path, monkeypatch, capsys):
    entries = suite_entries("attention", quick=True)[1:2]  # GQA
    monkeypatch.setattr("effzoo.bench.runner.suite_entries", lambda *a, **k: entries)
    args = ["bench", "--suite", "attention", "--quick", "--steps", "3", "--eval-every", "3", "--seq-len", "32",
            "--batch-size", "2", "--decode-tokens", "4", "--sweep", "", "--out", str(tmp_path)]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "effzoo bench: [1/1] gqa-tiny: started | 0/1 variants done, 1 left | ETA estimating" in out
    assert re.search(r"effzoo bench: \[1/1\] gqa-tiny: ppl [0-9.]+ \| train [0-9,]+ tok/s .* \| "
                     r"1/1 variants done, 0 left \| ETA 0s", out)
    assert main([*args, "--quiet"]) == 0  # the finished row is reused, silently
    assert "effzoo bench:" not in capsys.readouterr().out


def test_eta_shares_the_rest_among_the_workers():
    clock, out = Clock(), io.StringIO()
    progress = SuiteProgress(4, mode="plain", stream=out, interval_s=100, clock=clock, workers=2)
    progress.begin(1, "a", total_steps=10)
    progress.begin(2, "b", total_steps=10)
    clock.now = 4.0
    progress.step(5, "a")  # a: ~8 s; b has no step yet and counts as long as a
    assert progress.eta_s() == (4.0 + 4.0 + 2 * 8.0) / 2
    clock.now = 8.0
    progress.step(10, "a")
    progress.end("[1/4] a: done", name="a")  # a took 8 s; b (4 s rate unknown) and two more at 8 s
    assert progress.eta_s() == (0.0 + 2 * 8.0) / 2
    progress.step(4, "b")  # b: 4 of 10 steps in 8 s: 20 s in all, 12 s left
    assert progress.eta_s() == (12.0 + 2 * 8.0) / 2
    assert "[1/4] a: done | 1/4 variants done, 3 left" in out.getvalue()
    terminal = Terminal()
    bars = SuiteProgress(2, mode="bar", stream=terminal, workers=2)
    bars.begin(1, "x", 4)
    bars.begin(2, "y", 4)
    bars.step(2, "y")
    bars.end("[2/2] y: ok", name="y")
    bars.end("[1/2] x: ok", name="x")
    bars.close()
    assert "[2/2] y: ok" in terminal.getvalue() and "2/2 variants" in terminal.getvalue()
