"""Megatron/MindSpeed indexed datasets written by an independent reference writer are read correctly."""
import struct

import numpy as np
import pytest

from effzoo.data import DataError, TokenLoader, open_dataset, read_megatron, write_megatron


def reference_write(prefix, docs, dtype_code=8, np_dtype="<u2"):
    """Megatron's layout spelled out field by field (REFERENCE.md §6), independent of effzoo's writer."""
    itemsize = np.dtype(np_dtype).itemsize
    with open(f"{prefix}.bin", "wb") as fh:
        for doc in docs:
            fh.write(np.asarray(doc, dtype=np_dtype).tobytes())
    lengths = [len(d) for d in docs]
    pointers, offset = [], 0
    for n in lengths:
        pointers.append(offset)
        offset += n * itemsize
    with open(f"{prefix}.idx", "wb") as fh:
        fh.write(b"MMIDIDX\x00\x00")
        fh.write(struct.pack("<Q", 1))
        fh.write(struct.pack("<B", dtype_code))
        fh.write(struct.pack("<Q", len(docs)))
        fh.write(struct.pack("<Q", len(docs) + 1))
        fh.write(struct.pack(f"<{len(docs)}i", *lengths))
        fh.write(struct.pack(f"<{len(docs)}q", *pointers))
        fh.write(struct.pack(f"<{len(docs) + 1}q", *range(len(docs) + 1)))


DOCS = [list(range(i, i + 5 + 3 * i)) for i in range(12)]


@pytest.mark.parametrize("code,dtype", [(8, "<u2"), (4, "<i4")])
def test_reference_files_read_back(tmp_path, code, dtype):
    reference_write(tmp_path / "corpus_text_document", DOCS, code, dtype)
    ds = read_megatron(tmp_path / "corpus_text_document")
    assert len(ds) == 12 and ds.num_documents == 12 and ds.dtype == np.dtype(dtype)
    for i, doc in enumerate(DOCS):
        assert ds.sequence(i).tolist() == doc
    assert ds.tokens.tolist() == [t for d in DOCS for t in d]


def test_open_dataset_on_prefixes_and_train_val_folders(tmp_path):
    reference_write(tmp_path / "c", DOCS)
    flat = [t for d in DOCS for t in d]
    for name in ("c", "c.bin", "c.idx"):
        ds = open_dataset(tmp_path / name, vocab_size=300, eos_id=0, val_fraction=0.1)
        assert ds.vocab_size == 300 and ds.eos_id == 0
        assert np.asarray(ds.train).tolist() + np.asarray(ds.val).tolist() == flat
        assert np.asarray(ds.val).tolist() == DOCS[-1]  # the last whole document(s), >= 10% of tokens
    (tmp_path / "split" / "train").mkdir(parents=True)
    (tmp_path / "split" / "val").mkdir()
    reference_write(tmp_path / "split" / "train" / "a_text_document", DOCS[:6])
    reference_write(tmp_path / "split" / "train" / "b_text_document", DOCS[6:10])
    reference_write(tmp_path / "split" / "val" / "v_text_document", DOCS[10:])
    ds = open_dataset(tmp_path / "split", vocab_size=300)
    assert np.asarray(ds.train).tolist() == [t for d in DOCS[:10] for t in d]
    assert np.asarray(ds.val).tolist() == [t for d in DOCS[10:] for t in d]
    x, y = next(TokenLoader(ds.train, 10, 2, mode="packed", shuffle=False))
    assert x[0].tolist() == flat[:10] and y[1].tolist() == flat[11:21]


def test_effzoo_writer_round_trip(tmp_path):
    write_megatron(tmp_path / "w", DOCS, dtype=np.uint16)
    reference_write(tmp_path / "r", DOCS)
    assert (tmp_path / "w.idx").read_bytes() == (tmp_path / "r.idx").read_bytes()
    assert (tmp_path / "w.bin").read_bytes() == (tmp_path / "r.bin").read_bytes()


def test_broken_index_files_are_named(tmp_path):
    reference_write(tmp_path / "c", DOCS)
    raw = (tmp_path / "c.idx").read_bytes()
    (tmp_path / "c.idx").write_bytes(b"NOTMEGA\x00\x00" + raw[9:])
    with pytest.raises(DataError, match=r"c\.idx: not a Megatron index"):
        read_megatron(tmp_path / "c")
    (tmp_path / "c.idx").write_bytes(raw[:40])
    with pytest.raises(DataError, match="truncated"):
        read_megatron(tmp_path / "c")
    (tmp_path / "c.idx").write_bytes(raw)
    (tmp_path / "c.bin").write_bytes((tmp_path / "c.bin").read_bytes()[:-4])
    with pytest.raises(DataError, match=r"c\.bin: size .* does not match its index"):
        read_megatron(tmp_path / "c")
