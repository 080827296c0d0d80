"""Data pipeline speed: tokenization throughput and loader overhead.

Goals (issue 7): tokenization >= 1M tokens/s per CPU core with a byte-level BPE tokenizer, scaling with
processes; loader overhead < 2% of a training step at 0.5B on GPU.

* ``bpe-encode-1core``: HF ``tokenizers`` byte-level BPE (vocab 4096, trained on the embedded corpus)
  ``encode_batch`` with its thread pool disabled, i.e. one core; ``extra_info['tokens_per_s']`` (wall)
  and ``tokens_per_cpu_s`` (process CPU time, less sensitive to other jobs on a shared machine).
* ``tokenize-pipeline``: ``effzoo data tokenize`` end to end (read text files, encode, EOS, split,
  write shards, hash) with 1 and 2 worker processes; ``tokens_per_s`` and ``tokens_per_s_per_worker``.
* ``loader-batch``: one ``TokenLoader`` batch from a memory-mapped token file (random windows), at the
  0.5B training shape 8 x 2048 (CPU and CUDA alike; with CUDA the pinned copy to the GPU is included
  and synchronised). Compare its median with the 0.5B step time of ``test_bench_train_step.py``.

    pytest benchmarks/test_bench_tokenize.py --benchmark-only --benchmark-group-by=group \
        --benchmark-columns=median,rounds -s
"""
from __future__ import annotations

import os
import time

import numpy as np
import pytest
import torch

from effzoo.data import TokenLoader, corpus_documents, train_bpe
from effzoo.data.tokenize import tokenize

CUDA = torch.cuda.is_available()
TEXT_COPIES = int(os.environ.get("EFFZOO_BENCH_TOKENIZE_COPIES", 3))  # x ~0.2 MB of corpus text


@pytest.fixture(scope="module")
def bpe(tmp_path_factory):
    return train_bpe(corpus_documents(), 4096, tmp_path_factory.mktemp("bpe") / "tok")


@pytest.fixture(scope="module")
def texts():
    return list(corpus_documents()) * TEXT_COPIES


@pytest.fixture
def one_core(monkeypatch):
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false")


@pytest.mark.benchmark(group="bpe-encode-1core")
def test_bpe_encode_one_core(benchmark, bpe, texts, one_core):
    cpu = []

    def encode() -> int:
        start = time.process_time()
        n = sum(map(len, bpe.encode_batch(texts)))
        cpu.append(time.process_time() - start)
        return n

    count = benchmark.pedantic(encode, rounds=3, warmup_rounds=1)
    wall_rate, cpu_rate = count / benchmark.stats.stats.median, count / min(cpu)
    benchmark.extra_info.update(tokens=count, tokens_per_s=wall_rate, tokens_per_cpu_s=cpu_rate)
    print(f"\nbyte-level BPE, 1 core: {wall_rate / 1e6:.2f}M tokens/s wall, {cpu_rate / 1e6:.2f}M tokens/CPU-s")


@pytest.mark.benchmark(group="tokenize-pipeline")
@pytest.mark.parametrize("workers", [1, 2])
def test_tokenize_pipeline(benchmark, bpe, texts, tmp_path, workers, one_core):
    src = tmp_path / "src"
    src.mkdir()
    per_file = max(1, len(texts) // 4)
    for i in range(4):
        (src / f"part{i}.txt").write_text("\n\n".join(texts[i * per_file:(i + 1) * per_file]) + "\n")
    runs = iter(range(100))

    def run() -> int:
        manifest = tokenize([src], tmp_path / f"out{next(runs)}", bpe.spec, val_fraction=0.01, workers=workers)
        return manifest["splits"]["train"]["tokens"] + manifest["splits"]["val"]["tokens"]

    count = benchmark.pedantic(run, rounds=3, warmup_rounds=1)
    rate = count / benchmark.stats.stats.median
    benchmark.extra_info.update(tokens=count, tokens_per_s=rate, tokens_per_s_per_worker=rate / workers)
    print(f"\ntokenize pipeline, {workers} worker(s): {rate / 1e6:.2f}M tokens/s")


@pytest.mark.benchmark(group="loader-batch")
@pytest.mark.parametrize("mode", ["random", "packed"])
def test_loader_batch(benchmark, tmp_path, mode):
    path = tmp_path / "tokens.bin"
    np.random.default_rng(0).integers(0, 50_000, size=20_000_000, dtype=np.uint16).tofile(path)
    tokens = np.memmap(path, dtype=np.uint16, mode="r")
    loader = TokenLoader(tokens, 2048, 8, mode=mode, device="cuda" if CUDA else None)

    def batch():
        x, y = next(loader)
        if CUDA:
            torch.cuda.synchronize()
        return x

    x = benchmark.pedantic(batch, rounds=50, warmup_rounds=5)
    assert x.shape == (8, 2048)
    benchmark.extra_info["ms_per_batch"] = benchmark.stats.stats.median * 1e3
