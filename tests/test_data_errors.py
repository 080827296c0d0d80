"""Bad input: each gives an error naming the file (and row), or is skipped and counted on request."""
import json

import numpy as np
import pytest

from effzoo.cli import main
from effzoo.data import DataError, open_dataset, write_megatron
from effzoo.data.readers import iter_documents
from effzoo.data.tokenize import tokenize

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def test_corrupt_parquet_names_the_file(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"text": ["a b c"] * 100}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match=r"bad\.parquet: not a readable parquet file"):
        list(iter_documents(bad))
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1 this is not parquet at all PAR1")
    with pytest.raises(DataError, match="garbage.parquet"):
        tokenize([garbage], tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    assert not any((tmp_path / "out" / "train").iterdir())


def test_missing_text_column_lists_the_columns(tmp_path):
    path = tmp_path / "x.parquet"
    pq.write_table(pa.table({"body": ["hello"], "score": [1.0]}), path)
    with pytest.raises(DataError, match=r"x\.parquet: no text column 'text' or 'content'; columns are body, score"):
        list(iter_documents(path))
    assert [t for _, t in iter_documents(path, text_column="body")] == ["hello"]
    jsonl = tmp_path / "y.jsonl"
    jsonl.write_text('{"text": "ok"}\n{"body": "no text here"}\n')
    with pytest.raises(DataError, match=r"y\.jsonl, row 1: no text column"):
        list(iter_documents(jsonl))


def test_empty_files_error_or_are_counted(tmp_path):
    from collections import Counter

    for name in ("e.jsonl", "e.txt", "e.parquet"):
        (tmp_path / name).write_bytes(b"")
        with pytest.raises(DataError, match=rf"{name}: file is empty"):
            list(iter_documents(tmp_path / name))
        skipped = Counter()
        assert list(iter_documents(tmp_path / name, on_error="skip", skipped=skipped)) == []
        assert skipped == {"empty file": 1}


def test_non_utf8_bytes_name_the_row(tmp_path):
    text = tmp_path / "t.txt"
    text.write_bytes(b"first paragraph\n\nsecond \xff\xfe line\n\nthird\n")
    with pytest.raises(DataError, match=r"t\.txt, row 2: line is not valid UTF-8"):
        list(iter_documents(text))
    jsonl = tmp_path / "j.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "bad \xc3\x28"}\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=r"j\.jsonl, row 1: line is not valid UTF-8"):
        list(iter_documents(jsonl))
    binary = tmp_path / "b.parquet"
    pq.write_table(pa.table({"text": pa.array([b"ok", b"\xff\xfe"], type=pa.binary())}), binary)
    with pytest.raises(DataError, match=r"b\.parquet, row 1: text is not valid UTF-8"):
        list(iter_documents(binary))


def test_skip_bad_rows_counts_them_in_the_manifest(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    jsonl = src / "j.jsonl"
    jsonl.write_bytes(b'{"text": "fine"}\n{"text": "bad \xc3\x28"}\nnot json\n{"text": ""}\n{"text": "also fine"}\n')
    with pytest.raises(DataError, match=r"j\.jsonl, row 1: line is not valid UTF-8"):
        tokenize([src], tmp_path / "strict")
    (src / "empty.txt").write_bytes(b"")
    manifest = tokenize([src], tmp_path / "out", on_error="skip", val_fraction=0)
    assert manifest["skipped"] == {"line is not valid UTF-8": 1, "line is not valid JSON": 1, "empty text": 1,
                                   "empty file": 1}
    ds = open_dataset(tmp_path / "out")
    assert bytes(np.asarray(ds.train)[np.asarray(ds.train) < 256].astype(np.uint8)) == b"finealso fine"
    assert main(["data", "tokenize", str(jsonl), "--out", str(tmp_path / "cli"), "--quiet"]) == 2


def test_tokens_out_of_vocabulary_range(tmp_path):
    write_megatron(tmp_path / "m", [[1, 2, 3, 4] * 20, [5, 900, 7] * 20])
    ds = open_dataset(tmp_path / "m", vocab_size=512, val_fraction=0)
    with pytest.raises(DataError, match="token 81 is id 900, outside the vocabulary"):
        ds.check_range()
    loader = ds.loader("train", 8, 4, mode="packed", shuffle=False)
    with pytest.raises(DataError, match="token id 900 .* outside the vocabulary"):
        for _ in range(10):
            next(loader)
    assert main(["data", "inspect", str(tmp_path / "m"), "--verify"]) == 0  # vocab inferred: max id + 1


def test_bad_manifest_and_missing_shards(tmp_path):
    (tmp_path / "a.txt").write_text("hello world\n\nsecond doc\n")
    tokenize([tmp_path / "a.txt"], tmp_path / "out", val_fraction=0)
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    (tmp_path / "out" / manifest["splits"]["train"]["shards"][0]["path"]).unlink()
    with pytest.raises(DataError, match="is missing"):
        open_dataset(tmp_path / "out")
    (tmp_path / "out" / "manifest.json").write_text("{not json")
    with pytest.raises(DataError, match=r"manifest\.json: not valid JSON"):
        open_dataset(tmp_path / "out")
