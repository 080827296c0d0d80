"""effzoo data tokenize: round trips, resume equals one-shot, multiprocessing, manifest, tokenizers."""
import json

import numpy as np
import pytest

from effzoo.cli import main
from effzoo.data import DataError, load_tokenizer, open_dataset, train_bpe
from effzoo.data import tokenize as tokenize_module
from effzoo.data.manifest import verify_shards
from effzoo.data.tokenize import tokenize
from effzoo.errors import ConfigError, EffzooError

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")

DOCS = [f"Document {i}: the quick brown fox {'jumps ' * (i % 5)}over {i} lazy dogs. 你好 {i}." for i in range(120)]


def make_inputs(root):
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"text": DOCS[:50], "score": [3.0] * 50}), root / "a.parquet", row_group_size=16)
    (root / "b.jsonl").write_text("\n".join(json.dumps({"text": d, "id": i}) for i, d in enumerate(DOCS[50:90])) + "\n")
    (root / "c.txt").write_text("\n\n".join(DOCS[90:]) + "\n")
    return root


def tokens_of(docs, tok):
    return [t for d in docs for t in tok.encode(d) + [tok.eos_id]]


def test_round_trip_gives_the_same_tokens(tmp_path):
    src = make_inputs(tmp_path / "src")
    manifest = tokenize([src], tmp_path / "out", "byte", val_fraction=0.2, seed=3)
    ds = open_dataset(tmp_path / "out")
    tok = load_tokenizer("byte")
    assert ds.vocab_size == 257 and ds.eos_id == 256 and ds.tokenizer == "byte" and ds.train.dtype == np.uint16
    both = np.concatenate([np.asarray(ds.train), np.asarray(ds.val)])
    assert sorted(both.tolist()) == sorted(tokens_of(DOCS, tok))
    assert manifest["splits"]["train"]["documents"] + manifest["splits"]["val"]["documents"] == len(DOCS)
    assert 0 < manifest["splits"]["val"]["documents"] < 60
    # every document survives whole: decoding the train stream gives documents in input order
    stream = np.asarray(ds.train).tolist()
    pieces, cur = [], []
    for t in stream:
        if t == 256:
            pieces.append(tok.decode(cur))
            cur = []
        else:
            cur.append(t)
    assert cur == [] and all(p in DOCS for p in pieces)
    assert [DOCS.index(p) for p in pieces] == sorted(DOCS.index(p) for p in pieces)
    assert verify_shards(tmp_path / "out", manifest) == []


def test_bpe_tokenizer_train_load_and_round_trip(tmp_path):
    src = make_inputs(tmp_path / "src")
    tok = train_bpe(DOCS * 3, 300, tmp_path / "bpe")
    assert tok.vocab_size == 300 and tok.eos_id is not None
    again = load_tokenizer(tmp_path / "bpe")
    assert again.encode(DOCS[7]) == tok.encode(DOCS[7]) and again.decode(tok.encode(DOCS[7])) == DOCS[7]
    tokenize([src], tmp_path / "out", str(tmp_path / "bpe"), val_fraction=0.0)
    ds = open_dataset(tmp_path / "out")
    assert np.asarray(ds.train).tolist() == tokens_of(DOCS, again)
    assert len(ds.val) == 0 and ds.load_tokenizer().fingerprint == again.fingerprint


def test_resumed_tokenization_equals_one_shot(tmp_path, monkeypatch):
    src = make_inputs(tmp_path / "src")
    one_shot = tokenize([src], tmp_path / "one", "byte", val_fraction=0.1)
    real = tokenize_module.iter_documents

    def interrupted(path, **kwargs):
        for n, item in enumerate(real(path, **kwargs)):
            if str(path).endswith("b.jsonl") and n == 20:
                raise KeyboardInterrupt
            yield item

    monkeypatch.setattr(tokenize_module, "iter_documents", interrupted)
    with pytest.raises(KeyboardInterrupt):
        tokenize([src], tmp_path / "two", "byte", val_fraction=0.1)
    two = tmp_path / "two"
    assert not (two / "manifest.json").exists()
    assert sorted(p.name for p in (two / "parts").iterdir()) == ["00000-a.json"]
    assert sorted(p.name for p in (two / "train").iterdir()) == ["00000-a.bin"]  # nothing half-written
    with pytest.raises(FileNotFoundError, match="did not finish"):
        open_dataset(two)
    monkeypatch.setattr(tokenize_module, "iter_documents", real)
    calls = []
    real_unit = tokenize_module.tokenize_unit
    monkeypatch.setattr(tokenize_module, "tokenize_unit", lambda u, *a: calls.append(u.name) or real_unit(u, *a))
    resumed = tokenize([src], two, "byte", val_fraction=0.1)
    assert calls == ["00001-b", "00002-c"]  # the finished file was skipped
    for split in ("train", "val"):
        assert [s["sha256"] for s in resumed["splits"][split]["shards"]] == \
               [s["sha256"] for s in one_shot["splits"][split]["shards"]]
    assert np.array_equal(np.asarray(open_dataset(two).train), np.asarray(open_dataset(tmp_path / "one").train))
    with pytest.raises(ConfigError, match="other settings"):
        tokenize([src], two, "byte", val_fraction=0.3)
    (two / "train" / ".00001-b.bin.x.tmp").write_bytes(b"left by a killed run")
    tokenize([src], two, "byte", val_fraction=0.1, on_error="skip")  # a rerun may add --skip-bad
    assert not list((two / "train").glob(".*.tmp"))


def test_two_worker_processes_give_the_same_shards(tmp_path):
    src = make_inputs(tmp_path / "src")
    a = tokenize([src], tmp_path / "a", "byte", val_fraction=0.1, workers=1)
    b = tokenize([src], tmp_path / "b", "byte", val_fraction=0.1, workers=2)
    assert [s["sha256"] for s in a["splits"]["train"]["shards"]] == [s["sha256"] for s in b["splits"]["train"]["shards"]]


def test_cli_tokenize_and_inspect(tmp_path, capsys):
    src = make_inputs(tmp_path / "src")
    assert main(["data", "tokenize", str(src), "--out", str(tmp_path / "out"), "--quiet", "--val-fraction", "0.1"]) == 0
    assert main(["data", "inspect", str(tmp_path / "out"), "--verify"]) == 0
    assert "verified: True" in capsys.readouterr().out
    shard = next((tmp_path / "out" / "train").iterdir())
    shard.write_bytes(shard.read_bytes()[:-2] + b"\x01\x01")
    assert main(["data", "inspect", str(tmp_path / "out"), "--verify"]) == 1
    assert "checksum" in capsys.readouterr().err


def test_unknown_tokenizer_spec_is_explained():
    with pytest.raises(EffzooError, match="did you mean 'byte'"):
        load_tokenizer("bytes")


def test_hf_tokenizer_directory_uses_its_configured_eos(tmp_path):
    train_bpe(DOCS, 290, tmp_path / "tok")
    config = tmp_path / "tok" / "tokenizer_config.json"
    config.write_text(json.dumps({"eos_token": {"content": "<|endoftext|>"}}))
    tok = load_tokenizer(tmp_path / "tok")
    assert tok.eos_id == tok.token_to_id("<|endoftext|>") and tok.name == "tok"
    assert load_tokenizer(tmp_path / "tok" / "tokenizer.json").vocab_size == 290
    with pytest.raises(DataError, match="row 1"):
        bad = tmp_path / "bad.jsonl"
        bad.write_text('{"text": "fine"}\n{"text": 5}\n')
        tokenize([bad], tmp_path / "o", str(tmp_path / "tok"))


def test_byte_tokenizer_and_embedded_corpus_with_other_tokenizers(tmp_path):
    tok = load_tokenizer("byte")
    assert tok.encode("é中") == list("é中".encode()) and tok.decode(tok.encode("é中") + [256]) == "é中"
    assert tok.decode([0xE4, 0xB8]) == "\ufffd"  # a cut character decodes as a replacement, not an error
    from effzoo.data import embedded_dataset

    bpe = train_bpe(DOCS, 280, tmp_path / "bpe")
    ds = embedded_dataset(bpe.spec)
    assert ds.vocab_size == 280 and ds.tokenizer == bpe.spec and int(np.max(ds.train)) < 280


def test_vocab_json_directory_loads_through_transformers(tmp_path):
    bpe = train_bpe(DOCS, 300, tmp_path / "bpe")
    slow = tmp_path / "slow"
    slow.mkdir()
    bpe._tok.model.save(str(slow))  # vocab.json + merges.txt, no tokenizer.json
    (slow / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "GPT2Tokenizer",
                                                            "eos_token": "<|endoftext|>"}))
    tok = load_tokenizer(slow)
    assert type(tok).__name__ == "TransformersTokenizer" and tok.eos_id == bpe.eos_id
    assert tok.encode(DOCS[3][:40].split(" 你")[0]) == bpe.encode(DOCS[3][:40].split(" 你")[0])
