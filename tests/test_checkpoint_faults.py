"""Damaged checkpoints, staging folders, torn logs, a full disk, changed settings and non-finite runs:
each is detected, named, and never blocks continuing from the newest intact checkpoint."""
from __future__ import annotations

import errno
import json
import os
import shutil
from collections import namedtuple

import pytest
import torch

import effzoo
from effzoo.cli import main
from effzoo.errors import ConfigError
from effzoo.eval import load_language_model
from effzoo.metrics import read_jsonl
from effzoo.train import TrainConfig, TrainingError, train
from effzoo.train import checkpoint as ckpt
from effzoo.train.checkpoint import CheckpointError, list_checkpoints, verify_checkpoint

MODEL = {"d_model": 32, "n_layers": 1, "n_heads": 2, "n_kv_heads": 1, "ffn_hidden": 64}
SETTINGS = dict(variant="gqa", size="tiny", model=MODEL, seq_len=16, batch_size=2, steps=8, lr=3e-3,
                warmup_steps=2, ckpt_every=2, keep_checkpoints=4, eval_every=0, tensorboard=False, quiet=True)

pytestmark = pytest.mark.usefixtures("one_thread")


def _train(out, **changes):
    return train(TrainConfig(**{**SETTINGS, **changes}, out=str(out)))


@pytest.fixture(scope="module")
def full_run(tmp_path_factory):
    """An 8-step run with checkpoints at 2, 4, 6, 8 (copied per test before it is damaged)."""
    out = tmp_path_factory.mktemp("full") / "run"
    return out, _train(out)


@pytest.fixture
def run(full_run, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(full_run[0], out)
    return out


def test_damaged_newest_checkpoints_fall_back_to_the_newest_intact(run, full_run, caplog):
    step8, step6 = list_checkpoints(run)[8], list_checkpoints(run)[6]
    weights = step8 / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated
    (step6 / "trainer_state.pt").write_bytes(b"")  # empty
    assert "bytes, the manifest says" in verify_checkpoint(step8)
    assert verify_checkpoint(list_checkpoints(run)[4]) is None

    lm = load_language_model(str(run))  # eval --model RUN
    assert lm.name == "step_00000004" and "step_00000008 is damaged" in caplog.text
    assert effzoo.from_pretrained(run).config.d_model == 32  # a run folder is accepted too
    resumed = _train(run, resume="latest")
    assert resumed.metrics["resumed_from"] == 4
    assert resumed.losses == full_run[1].losses[4:]  # bitwise continuation from step 4
    assert all(verify_checkpoint(p) is None for p in list_checkpoints(run).values())
    with pytest.raises(CheckpointError, match="checkpoint .*step_00000002 is damaged"):
        (list_checkpoints(run)[2] / "manifest.json").write_text("{}")
        _train(run, resume="2")


def test_checkpoints_without_a_manifest_get_structural_checks(run):
    step8 = list_checkpoints(run)[8]
    (step8 / "manifest.json").unlink()
    assert verify_checkpoint(step8) is None  # a folder from before manifests, still whole
    (step8 / "model.safetensors").write_bytes((step8 / "model.safetensors").read_bytes()[:-10])
    assert "truncated" in verify_checkpoint(step8)
    assert load_language_model(str(run)).name == "step_00000006"


def test_staging_folders_are_never_candidates_and_are_removed_on_start(run, capsys):
    staging = run / "checkpoints" / ".tmp-step_00000010"
    shutil.copytree(list_checkpoints(run)[8], staging)
    (staging / "manifest.json").unlink()
    half_deleted = run / "checkpoints" / ".del-step_00000001"
    half_deleted.mkdir()
    assert load_language_model(str(run)).name == "step_00000008"
    assert 10 not in list_checkpoints(run)
    _train(run, resume="latest", steps=9)
    assert not staging.exists() and not half_deleted.exists()


def test_a_torn_metrics_line_is_dropped_on_resume(run, full_run):
    with (run / "metrics.jsonl").open("a") as fh:
        fh.write('{"kind": "train", "step": 9, "lo')  # a kill mid-write
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 9))
    resumed = _train(run, resume="4")
    assert resumed.losses == full_run[1].losses[4:]
    assert [r["step"] for r in read_jsonl(run / "metrics.jsonl")] == list(range(1, 9))
    lines = (run / "metrics.jsonl").read_text().splitlines()
    (run / "metrics.jsonl").write_text("\n".join(lines[:2] + ["{broken"] + lines[2:]) + "\n")
    with pytest.raises(ValueError, match=r"metrics\.jsonl: line 3 is not valid JSON"):
        read_jsonl(run / "metrics.jsonl")


def test_a_full_disk_removes_the_staging_folder_and_names_the_bytes(tmp_path, monkeypatch):
    real_save, calls = ckpt.save_file, []

    def save_until_full(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(ckpt, "save_file", save_until_full)
    out = tmp_path / "run"
    with pytest.raises(CheckpointError, match=r"disk full while writing checkpoint .*\.tmp-step_00000004: it needs "
                                              r"about [\d,]+ bytes"):
        _train(out)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step_00000002"]
    assert verify_checkpoint(list_checkpoints(out)[2]) is None

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(ckpt.shutil, "disk_usage", lambda path: usage(10**6, 10**6 - 1000, 1000))
    with pytest.raises(CheckpointError, match=r"not enough disk space for checkpoint .*step_00000002: it needs "
                                              r"about [\d,]+ bytes, 1,000 are free"):
        _train(tmp_path / "other")
    assert not list((tmp_path / "other" / "checkpoints").iterdir())


def test_resuming_with_a_changed_model_setting_names_it(run, capsys):
    with pytest.raises(ConfigError, match=r"d_model: 32 in the checkpoint, 48 now.*--allow-model-change"):
        _train(run, resume="latest", steps=9, model={**MODEL, "d_model": 48})
    args = ["train", "gqa", "--out", str(run), "--resume", "--steps", "9", "--seq-len", "16", "--batch-size", "2",
            "--quiet"] + [f"--set={k}={v}" for k, v in {**MODEL, "n_layers": 2}.items()]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith("effzoo train: error: --resume: the model settings differ") and "n_layers: 1" in err
    assert len(err.strip().splitlines()) == 1
    with pytest.raises(CheckpointError, match="does not fit this model"):
        _train(run, resume="latest", steps=9, model={**MODEL, "d_model": 48}, allow_model_change=True)
    _train(run, resume="latest", steps=9, model={**MODEL, "rope_theta": 5000.0}, allow_model_change=True)


def test_non_finite_settings_are_refused_before_anything_runs(tmp_path, capsys):
    for flag in (["--lr", "inf"], ["--min-lr", "nan"], ["--set", "rope_theta=inf"], ["--grad-clip=-inf"]):
        assert main(["train", "gqa", "--steps", "2", "--out", str(tmp_path / "x"), *flag]) == 2
        err = capsys.readouterr().err
        assert "must be a finite number" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "x").exists()


def test_non_finite_weights_never_replace_a_finite_checkpoint(tmp_path, monkeypatch):
    from effzoo.train import loop

    real, calls = loop.finite_flag, []

    def finite_then_not(model):
        calls.append(1)
        return real(model) if len(calls) < 2 else torch.zeros(())

    monkeypatch.setattr(loop, "finite_flag", finite_then_not)
    out = tmp_path / "run"
    with pytest.raises(TrainingError, match=r"non-finite at step 4; no checkpoint was written\. The last finite "
                                            r"checkpoint is .*step_00000002"):
        _train(out, keep_checkpoints=1)
    assert sorted(list_checkpoints(out)) == [2]


def test_files_and_folders_follow_the_umask(tmp_path):
    from effzoo.atomic import atomic_dir, write_json

    old = os.umask(0o022)
    try:
        assert write_json(tmp_path / "a.json", {}).stat().st_mode & 0o777 == 0o644
        with atomic_dir(tmp_path / "d") as staging:
            (staging / "f").write_text("x")
        assert (tmp_path / "d").stat().st_mode & 0o777 == 0o755
        os.umask(0o077)
        assert write_json(tmp_path / "b.json", {}).stat().st_mode & 0o777 == 0o600
    finally:
        os.umask(old)


def test_corrupt_weight_files_get_effzoos_own_error(tmp_path, capsys):
    model = effzoo.build("gqa", size="tiny", **MODEL)
    model.save_pretrained(tmp_path / "m")
    weights = tmp_path / "m" / "model.safetensors"
    weights.write_bytes(b"\x00" * 5)
    with pytest.raises(ConfigError, match=r"model\.safetensors is not a readable safetensors file"):
        effzoo.from_pretrained(tmp_path / "m")
    assert main(["eval", "ppl", "--model", str(tmp_path / "m"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "model.safetensors is not a readable safetensors file" in err and "weights_only" not in err
    run = tmp_path / "run"
    _train(run, steps=2)
    state = list_checkpoints(run)[2] / "trainer_state.pt"
    torch.save({"evil": object()}, state)  # a pickle that weights_only refuses
    (state.parent / "manifest.json").unlink()
    with pytest.raises(CheckpointError, match="cannot be read: UnpicklingError") as info:
        _train(run, steps=3, resume="latest")
    assert "weights_only" not in str(info.value)


def test_unsafe_or_corrupt_transformers_weights_never_suggest_turning_the_safety_off(tmp_path):
    from effzoo.hf.checkpoint import read_weights

    torch.save({"w": torch.ones(2), "evil": object()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ConfigError, match=r"pytorch_model\.bin: it holds Python objects besides tensors") as unsafe:
        read_weights(tmp_path)
    (tmp_path / "pytorch_model.bin").write_bytes(b"garbage")
    with pytest.raises(ConfigError, match=r"not a readable torch file \(damaged or truncated\)") as damaged:
        read_weights(tmp_path)
    assert "weights_only" not in str(unsafe.value) + str(damaged.value)
