"""Training-step speed: effzoo's GQA model against transformers' Qwen2ForCausalLM, same shape, same
mixed precision (fp32 weights + autocast), same fused AdamW, measured in the same run; plus the real
trainer end to end (tokens/s and MFU from its metrics.json).

Goal (issue 6), asserted on an H100 only: at the 0.5B shape, batch 8 x 2048, bf16 autocast, effzoo as
`effzoo train --compile` runs it (blocks compiled, chunked loss) reaches >= 2x transformers' eager
tokens/s and >= 1.35x transformers' torch.compile'd tokens/s, and the trainer reaches >= 50% MFU.
effzoo eager is measured and reported beside them. On CPU it runs tiny shapes in fp32 so it never fails
for lack of a GPU (the compiled cases are CUDA-only).

    pytest benchmarks/test_bench_train_step.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,rounds -s
"""
from __future__ import annotations

import os
from collections.abc import Callable

import pytest
import torch

import effzoo
from effzoo.analysis import model_stats
from effzoo.bench.timing import synchronize

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
ON_GPU = DEVICE.type == "cuda"
ON_H100 = ON_GPU and "H100" in torch.cuda.get_device_name()
SIZE = "0.5B" if ON_GPU else "tiny"
BATCH, SEQ = (8, 2048) if ON_GPU else (2, 64)
AMP = torch.bfloat16 if ON_GPU else None
PEAK = 989e12  # H100 SXM dense bf16
ROUNDS = dict(rounds=10, warmup_rounds=3, iterations=1) if ON_GPU else dict(rounds=3, warmup_rounds=1, iterations=1)
TRAIN_STEPS = int(os.environ.get("EFFZOO_BENCH_TRAIN_STEPS", 300 if ON_GPU else 5))
GOALS = {"transformers-eager": 2.0, "transformers-compiled": 1.35}  # goals for effzoo-compiled
RESULTS: dict[str, float] = {}  # case -> tokens/s, shared by the parametrised cases of one run


def _effzoo_model(compiled: bool) -> tuple[torch.nn.Module, Callable]:
    model = effzoo.build("gqa", SIZE, device=DEVICE)
    if compiled:
        for block in model.blocks:  # what `effzoo train --compile` does
            block.compile()

    def loss(ids: torch.Tensor) -> torch.Tensor:
        return model(ids[:, :-1], ids[:, 1:], return_logits=False).loss

    return model, loss


def _hf_model(compiled: bool) -> tuple[torch.nn.Module, Callable]:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    cfg = effzoo.make_config("gqa", SIZE)
    hf_config = Qwen2Config(
        vocab_size=cfg.vocab_size, hidden_size=cfg.d_model, intermediate_size=cfg.ffn_hidden,
        num_hidden_layers=cfg.n_layers, num_attention_heads=cfg.n_heads, num_key_value_heads=cfg.n_kv_heads,
        max_position_embeddings=max(cfg.max_seq_len, SEQ + 1), rope_theta=cfg.rope_theta, rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings, attn_implementation="sdpa", use_cache=False,
    )
    model = Qwen2ForCausalLM(hf_config).to(DEVICE)
    forward = torch.compile(model) if compiled else model

    def loss(ids: torch.Tensor) -> torch.Tensor:
        return forward(input_ids=ids[:, :-1], labels=ids[:, :-1]).loss  # shifts internally: T-1 predictions

    return model, loss


def _train_step(model: torch.nn.Module, loss_fn: Callable) -> Callable[[], None]:
    """One optimizer step: forward + loss under autocast, backward, clip, fused AdamW, zero_grad."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                                  fused=ON_GPU or None)
    vocab = model.config.vocab_size
    ids = torch.randint(0, vocab, (BATCH, SEQ + 1), device=DEVICE)

    def step() -> None:
        with torch.autocast(DEVICE.type, dtype=AMP, enabled=AMP is not None):
            loss = loss_fn(ids)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(DEVICE)

    return step


@pytest.mark.parametrize("case", ["transformers-eager", "transformers-compiled", "effzoo-eager", "effzoo-compiled"])
def test_train_step(benchmark, case):
    library, mode = case.split("-")
    compiled = mode == "compiled"
    if compiled and not ON_GPU:
        pytest.skip("torch.compile comparison is run on CUDA only")
    model, loss_fn = (_hf_model if library == "transformers" else _effzoo_model)(compiled)
    benchmark.group = f"train-step {SIZE} {BATCH}x{SEQ}"
    benchmark.pedantic(_train_step(model, loss_fn), **ROUNDS)
    tokens_per_s = BATCH * SEQ / benchmark.stats.stats.median
    flops = model_stats(effzoo.build("gqa", SIZE, device="meta"), SEQ)["train_flops_per_token"]
    RESULTS[case] = tokens_per_s
    benchmark.extra_info.update(device=torch.cuda.get_device_name() if ON_GPU else "cpu", tokens_per_s=tokens_per_s,
                                mfu=tokens_per_s * flops / PEAK if ON_GPU else None,
                                peak_gb=torch.cuda.max_memory_allocated() / 1e9 if ON_GPU else None)
    if library == "effzoo":
        for rival, goal in GOALS.items():
            if rival not in RESULTS:
                continue
            speedup = tokens_per_s / RESULTS[rival]
            benchmark.extra_info[f"speedup_vs_{rival}"] = speedup
            if ON_H100 and compiled:
                assert speedup >= goal, f"{case}: {speedup:.2f}x {rival}, goal {goal}x"
    del model
    if ON_GPU:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_trainer_end_to_end(benchmark, tmp_path, compiled):
    """The real `effzoo train` loop (fused loss, one host sync per step) on the embedded corpus."""
    if compiled and not ON_GPU:
        pytest.skip("compiled trainer run on CUDA only")
    from effzoo.train import TrainConfig, train

    config = TrainConfig(variant="gqa", size=SIZE, seq_len=SEQ, batch_size=BATCH, steps=TRAIN_STEPS,
                         compile=compiled, eval_every=0, eval_batches=1, ckpt_every=0, log_every=50,
                         out=str(tmp_path / "run"), tensorboard=False, quiet=True)
    result = benchmark.pedantic(train, args=(config,), rounds=1, iterations=1)
    metrics = result.metrics
    benchmark.group = f"trainer {SIZE} {BATCH}x{SEQ}"
    benchmark.extra_info.update({k: metrics[k] for k in ("tokens_per_s", "mfu", "al_s", "amu_gb", "peak_memory_gb",
                                                         "aec_w", "device", "dtype", "steps")})
    assert metrics["tokens_per_s"] > 0
    if ON_H100 and compiled:
        assert metrics["mfu"] >= 0.5, f"trainer MFU {metrics['mfu']:.1%}, goal 50%"
