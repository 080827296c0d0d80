"""effzoo data sample: language ratios, score filters, shard sizes, determinism."""
import json
import random

import pytest

from effzoo.cli import main
from effzoo.data import DataError
from effzoo.data.sample import sample

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def make_corpus(root):
    """FineWeb-Edu-like English parquet (language + score) and Ultra-FineWeb-like zh/ folders (content)."""
    rng = random.Random(0)
    (root / "en").mkdir(parents=True)
    (root / "zh").mkdir()
    for f in range(3):
        texts = [f"english doc {f}-{i} " + "word " * rng.randint(20, 60) for i in range(200)]
        scores = [rng.choice([1.0, 2.5, 3.0, 4.2]) for _ in texts]
        pq.write_table(pa.table({"text": texts, "language": ["en"] * 200, "score": scores,
                                 "int_score": [int(s) for s in scores]}), root / "en" / f"part{f}.parquet")
    for f in range(2):
        texts = [f"中文文档{f}-{i}" + "汉字" * rng.randint(10, 30) for i in range(200)]
        pq.write_table(pa.table({"content": texts, "score": [rng.random() for _ in texts]}),
                       root / "zh" / f"zh_{f}.parquet")
    return root


def read_all(out):
    return pq.read_table(sorted(out.glob("part-*.parquet"))).to_pylist() if list(out.glob("part-*.parquet")) else []


def test_ratio_and_scores_hold(tmp_path):
    src = make_corpus(tmp_path / "src")
    report = sample([src], tmp_path / "out", target_bytes=60_000, ratios={"zh": 0.2, "en": 0.8},
                    min_score={"zh": 0.5, "en": 3.0}, shard_bytes=15_000, seed=1)
    rows = read_all(tmp_path / "out")
    by_lang = {lang: sum(len(r["text"].encode()) for r in rows if r["language"] == lang) for lang in ("zh", "en")}
    max_doc = max(len(r["text"].encode()) for r in rows)
    assert 12_000 <= by_lang["zh"] < 12_000 + max_doc
    assert 48_000 <= by_lang["en"] < 48_000 + max_doc
    assert all(r["score"] >= (0.5 if r["language"] == "zh" else 3.0) for r in rows)
    assert report["languages"]["en"]["complete"] and report["skipped"]["en below min score"] > 0
    # shards of about the target size: each but the last is just over it
    sizes = [s["text_bytes"] for s in report["shards"]]
    assert len(sizes) >= 4 and all(15_000 <= s < 15_000 + max_doc for s in sizes[:-1])
    assert json.loads((tmp_path / "out" / "sample_report.json").read_text())["shards"] == report["shards"]
    from effzoo.data import open_dataset
    from effzoo.data.tokenize import tokenize

    manifest = tokenize([tmp_path / "out"], tmp_path / "tokens", val_fraction=0)  # the report is not input
    assert manifest["splits"]["train"]["documents"] == len(rows)
    assert len(open_dataset(tmp_path / "tokens").train) == sum(len(r["text"].encode()) + 1 for r in rows)


def test_same_seed_same_sample_other_seed_differs(tmp_path):
    src = make_corpus(tmp_path / "src")
    kwargs = dict(target_bytes=20_000, ratios={"zh": 0.5, "en": 0.5}, min_score=0.0)
    sample([src], tmp_path / "a", seed=5, **kwargs)
    sample([src], tmp_path / "b", seed=5, **kwargs)
    sample([src], tmp_path / "c", seed=6, **kwargs)
    assert read_all(tmp_path / "a") == read_all(tmp_path / "b") != read_all(tmp_path / "c")


def test_unreachable_budget_is_reported_and_jsonl_works(tmp_path):
    (tmp_path / "src").mkdir()
    lines = [json.dumps({"text": f"doc {i} " * 10, "int_score": i % 4}) for i in range(40)]
    (tmp_path / "src" / "a.jsonl").write_text("\n".join(lines) + "\n")
    report = sample([tmp_path / "src"], tmp_path / "out", target_bytes=10**6, min_score=2)
    rows = read_all(tmp_path / "out")
    assert len(rows) == 20 and all(r["score"] >= 2 for r in rows)
    assert not report["languages"]["en"]["complete"]


def test_score_filter_without_scores_is_an_error(tmp_path):
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "a.jsonl").write_text('{"text": "no score here"}\n')
    with pytest.raises(DataError, match=r"a\.jsonl, row 0: no score or int_score"):
        sample([tmp_path / "src"], tmp_path / "out", target_bytes=100, min_score=0.5)


def test_cli_sample_matches_the_lab_options(tmp_path, capsys):
    src = make_corpus(tmp_path / "src")
    args = ["data", "sample", str(src), "--out", str(tmp_path / "out"), "--size-gb", "0.00003", "--zh-ratio", "0.2",
            "--en-ratio", "0.8", "--min-score-zh", "0.5", "--min-score-en", "2", "--shard-mb", "0.01", "--quiet"]
    assert main(args) == 0
    assert "zh:" in capsys.readouterr().out
    assert main(args) == 2  # refuses to mix with an earlier sample
    assert main(args + ["--overwrite"]) == 0
