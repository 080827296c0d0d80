"""The trainer on CPU: loss falls, metrics are consistent, bad settings fail early, NaN and OOM paths."""
from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from effzoo.errors import ConfigError, UnknownNameError
from effzoo.metrics import read_jsonl
from effzoo.model.decoder import EffzooModel
from effzoo.train import TrainConfig, TrainingError, train
from effzoo.train.checkpoint import list_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


# a very small model so every run takes a second or two on two CPU cores
SMALL = {"d_model": 64, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "ffn_hidden": 128}


def settings(out: Path, **changes) -> TrainConfig:
    base = dict(variant="gqa", size="tiny", model=dict(SMALL), seq_len=32, batch_size=4, steps=8, lr=3e-3,
                warmup_steps=2, eval_every=4, eval_batches=2, ckpt_every=4, log_every=4, out=str(out),
                sample_interval=0.05, tensorboard=False, quiet=True)
    base.update(changes)
    return TrainConfig(**base)


def test_tiny_model_trains_and_writes_everything(tmp_path):
    result = train(settings(tmp_path / "run", steps=30, eval_every=10, ckpt_every=10))
    losses = result.losses
    assert len(losses) == 30 and all(math.isfinite(x) for x in losses)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.3, losses
    out = tmp_path / "run"
    assert sorted(list_checkpoints(out)) == [10, 20, 30]
    train_records = read_jsonl(out / "metrics.jsonl")
    val_records = read_jsonl(out / "metrics.jsonl", kind="val")
    assert [r["step"] for r in train_records] == list(range(1, 31))
    assert [r["step"] for r in val_records] == [10, 20, 30]
    assert [r["loss"] for r in train_records] == pytest.approx(losses)
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["steps"] == 30 and on_disk["ppl"] == pytest.approx(math.exp(val_records[-1]["val_loss"]))
    # the final checkpoint is a loadable pretrained folder
    import effzoo

    model = effzoo.from_pretrained(out / "checkpoints" / "step_00000030")
    assert isinstance(model, EffzooModel) and model.config.d_model == 64


def test_metrics_present_positive_and_consistent(tmp_path):
    m = train(settings(tmp_path / "run", steps=6, eval_every=0, ckpt_every=0, peak_tflops=0.05)).metrics
    for key in ("amu_gb", "pcu", "mfu", "al_s", "al_compute_s", "tt", "st", "tokens_per_s", "gpu_hours",
                "ppl", "peak_memory_gb", "flops_per_token", "params", "train_time_s", "wall_s"):
        assert m[key] is not None and m[key] > 0, key
    assert m["al_comm_s"] == 0.0 and m["al_compute_s"] == pytest.approx(m["al_s"])
    assert m["tokens"] == 6 * 4 * 32 and m["timed_tokens"] == 5 * 4 * 32  # the first step is not timed
    assert m["tt"] * m["params"] * m["train_time_s"] == pytest.approx(m["timed_tokens"])
    assert m["st"] * m["params"] * m["train_time_s"] == pytest.approx(5 * 4)
    assert m["al_s"] * m["timed_steps"] == pytest.approx(m["train_time_s"])
    assert m["gpu_hours"] == pytest.approx(m["wall_s"] * 1 / 3600)
    assert m["mfu"] == pytest.approx(m["tokens_per_s"] * m["flops_per_token"] / 0.05e12)
    assert m["peak_flops_source"] == "override"
    assert m["amu_gb_per_device"] == [m["amu_gb"]] and m["pcu"] <= 1.0
    # stop() always takes the closing reading; how many the thread adds depends on the machine's speed
    assert m["sampler_samples"] >= 1 and 0 <= m["sampler_overhead"] < 1
    assert m["aec_w"] is None or m["aec_w"] > 0  # CPU energy needs readable RAPL counters


@pytest.mark.parametrize("change, message", [
    ({"variant": "gqx"}, "Did you mean: gqa"),
    ({"batch_size": 6, "grad_accum": 4}, "not divisible"),
    ({"data": "/nonexistent/tokens"}, "does not exist"),
    ({"steps": None}, "--steps N or --tokens N"),
    ({"dtype": "fp8"}, "unknown dtype"),
    ({"model": {"n_kv_head": 1}}, "did you mean 'n_kv_heads'"),
])
def test_bad_settings_fail_before_any_work(tmp_path, monkeypatch, change, message):
    def forbidden(*args, **kwargs):
        raise AssertionError("a model was built before the settings were checked")

    monkeypatch.setattr("effzoo.train.loop.build_from_config", forbidden)
    with pytest.raises((ConfigError, UnknownNameError), match=message):
        train(settings(tmp_path / "run", **change))
    assert not (tmp_path / "run").exists()


def test_unknown_config_key_is_rejected_with_a_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'grad_accum'"):
        TrainConfig.from_dict({"variant": "gqa", "grad_acum": 2})


def test_existing_run_needs_resume(tmp_path):
    train(settings(tmp_path / "run", steps=4))
    with pytest.raises(ConfigError, match="--resume latest"):
        train(settings(tmp_path / "run", steps=4))
    with pytest.raises(ConfigError, match="available steps: 4"):
        train(settings(tmp_path / "run", steps=8, resume="3"))


def _poison(monkeypatch, bad_calls: set[int]) -> None:
    """Make the model's loss NaN on the given forward calls (counting from 0, training calls only)."""
    original = EffzooModel.forward
    calls = {"n": 0}

    def forward(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        if self.training:
            if calls["n"] in bad_calls:
                out.loss = out.loss * float("nan")
            calls["n"] += 1
        return out

    monkeypatch.setattr(EffzooModel, "forward", forward)


def test_nan_loss_skips_the_update_and_continues(tmp_path, monkeypatch):
    _poison(monkeypatch, {2})
    result = train(settings(tmp_path / "run", steps=5, eval_every=0, ckpt_every=0))
    assert math.isnan(result.losses[2]) and all(math.isfinite(x) for i, x in enumerate(result.losses) if i != 2)
    records = read_jsonl(tmp_path / "run" / "metrics.jsonl")
    assert [r["skipped"] for r in records] == [False, False, True, False, False]
    assert result.metrics["skipped_steps"] == 1


def test_repeated_nan_losses_stop_with_a_checkpoint(tmp_path, monkeypatch):
    _poison(monkeypatch, {1, 2, 3})
    with pytest.raises(TrainingError, match="non-finite for 3 consecutive steps"):
        train(settings(tmp_path / "run", steps=10, eval_every=0, ckpt_every=0, max_bad_steps=3))
    assert list(list_checkpoints(tmp_path / "run")) == [4]


def test_out_of_memory_names_the_batch_settings(tmp_path, monkeypatch):
    def forward(self, *args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(EffzooModel, "forward", forward)
    with pytest.raises(TrainingError) as info:
        train(settings(tmp_path / "run", batch_size=4, grad_accum=2))
    text = str(info.value)
    assert "micro-batch 2 x seq-len 32" in text and "grad accumulation 2" in text and "--activation-checkpointing" in text
    assert isinstance(info.value.__cause__, torch.OutOfMemoryError)


def test_vocabulary_grows_to_fit_the_data_or_errors():
    from effzoo.train.loop import resolve_model_config

    cfg = resolve_model_config(TrainConfig(variant="gqa", size="tiny", steps=1), vocab_size=1000, seq_len=None)
    assert cfg.vocab_size == 1024
    with pytest.raises(ConfigError, match="smaller than the data's vocabulary"):
        resolve_model_config(TrainConfig(variant="gqa", size="tiny", steps=1, model={"vocab_size": 300}),
                             vocab_size=1000, seq_len=None)
    assert resolve_model_config(TrainConfig(variant="gqa", size="tiny", steps=1), 257, 4096).max_seq_len == 4096


def test_grad_accumulation_matches_one_big_batch(tmp_path):
    # packed mode: global samples are numbered, so 2 micro-batches of 2 are the same 4 windows as 1 batch of 4
    one = train(settings(tmp_path / "a", steps=3, eval_every=0, ckpt_every=0, data_mode="packed")).losses
    accum = train(settings(tmp_path / "b", steps=3, eval_every=0, ckpt_every=0, data_mode="packed", grad_accum=2)).losses
    assert accum == pytest.approx(one, rel=1e-5)


@pytest.mark.parametrize("change, dtype", [
    ({"dtype": "fp16"}, "float16"),  # autocast fp16 + GradScaler
    ({"dtype": "bf16", "activation_checkpointing": True}, "bfloat16"),
])
def test_mixed_precision_and_checkpointing_paths(tmp_path, change, dtype):
    result = train(settings(tmp_path / "run", steps=3, eval_every=0, ckpt_every=0, **change))
    assert result.metrics["dtype"] == dtype and all(math.isfinite(x) for x in result.losses)
    assert result.losses[-1] < result.losses[0]


def test_token_budget_sets_the_step_count(tmp_path):
    result = train(settings(tmp_path / "run", steps=None, tokens=500, eval_every=0, ckpt_every=0))
    assert result.metrics["total_steps"] == 4  # ceil(500 / (4 x 32))
