"""Progress for train, data tokenize and eval: a bar on a terminal, plain periodic lines otherwise, nothing
with --quiet."""
from __future__ import annotations

import io
import re

import pytest

from effzoo.cli import main
from effzoo.metrics.progress import PlainProgress, StepBar, make_progress, progress_mode

MODEL = ["--set=d_model=32", "--set=n_layers=1", "--set=n_heads=2", "--set=n_kv_heads=1", "--set=ffn_hidden=64"]
TRAIN = ["train", "gqa", "--steps", "4", "--seq-len", "16", "--batch-size", "2", "--eval-every", "0",
         "--log-every", "2", "--no-tensorboard", *MODEL]

pytestmark = pytest.mark.usefixtures("one_thread")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_train_prints_plain_progress_lines_when_not_a_terminal(tmp_path, capsys):
    assert main([*TRAIN, "--out", str(tmp_path / "a")]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split(" | ")[0] for line in lines if "loss" in line and "val" not in line] == [
        "step 1/4", "step 2/4", "step 4/4"]
    assert all(re.search(r"loss \d+\.\d{4} .*tok/s [\d,]+ .*eta \d+:\d\d:\d\d", line) for line in lines[:3])
    assert "\r" not in out  # no bar redraws in a log
    assert main([*TRAIN, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith("done: 4 steps")  # only the summary line


def test_the_bar_shows_step_loss_tokens_per_second_and_eta():
    terminal = Terminal()
    assert progress_mode(terminal, quiet=False) == "bar" and progress_mode(terminal, quiet=True) == "off"
    assert progress_mode(io.StringIO(), quiet=False) == "plain"
    bar = StepBar(10, 2, quiet=False, stream=terminal)
    assert bar.active
    bar.update({"loss": 5.4321, "tokens_per_s": 1234.0})
    bar.close()
    shown = terminal.getvalue()
    assert "3/10" in shown and "loss 5.4321" in shown and "1,234 tok/s" in shown and "<" in shown  # elapsed<eta
    assert not StepBar(10, 0, quiet=False, stream=io.StringIO()).active


def test_plain_progress_lines_carry_amount_rate_and_eta():
    now = [0.0]
    stream = io.StringIO()
    progress = PlainProgress(4e6, desc="tokenizing", unit="B", unit_scale=True, stream=stream, interval_s=10,
                             clock=lambda: now[0])
    now[0] = 5.0
    progress.update(1e6)  # within the interval: nothing yet
    assert stream.getvalue() == ""
    now[0] = 10.0
    progress.update(1e6)
    progress.close()
    lines = stream.getvalue().splitlines()
    assert lines[0] == "tokenizing: 2.0 MB / 4.0 MB (50%) | 200.0 kB/s | eta 0:00:10"
    assert len(lines) == 2  # and a last line at close
    quiet = make_progress(10, desc="x", quiet=True, stream=stream)
    quiet.update(10)
    quiet.close()
    assert len(stream.getvalue().splitlines()) == 2


def test_data_tokenize_reports_progress_in_a_log(tmp_path, capsys):
    (tmp_path / "a.txt").write_text("\n\n".join(f"doc {i}" for i in range(50)))
    assert main(["data", "tokenize", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok")]) == 0
    err = capsys.readouterr().err
    assert re.search(r"tokenizing: [\d.]+ \w?B / [\d.]+ \w?B \(100%\) \| .*/s", err), err
    assert "\r" not in err
    assert main(["data", "tokenize", str(tmp_path / "a.txt"), "--out", str(tmp_path / "tok2"), "--quiet"]) == 0
    assert "tokenizing" not in capsys.readouterr().err
