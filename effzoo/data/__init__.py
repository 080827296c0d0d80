"""Data for training and evaluation: tokenizers, token datasets, the resumable loader, the embedded
corpus, and the preparation pipeline behind ``effzoo data`` (download, sample, tokenize).

    >>> from effzoo.data import embedded_dataset
    >>> ds = embedded_dataset()
    >>> loader = ds.loader("train", seq_len=128, batch_size=8, seed=0)
    >>> inputs, targets = next(loader)
"""
from __future__ import annotations

from .corpus import corpus_documents, embedded_dataset
from .dataset import TokenDataset, open_dataset
from .errors import DataError
from .loader import TokenLoader
from .megatron import read_megatron, write_megatron
from .shards import ShardedTokens
from .tokenizers import ByteTokenizer, load_tokenizer, train_bpe

__all__ = [
    "ByteTokenizer", "DataError", "ShardedTokens", "TokenDataset", "TokenLoader", "corpus_documents",
    "embedded_dataset", "load_tokenizer", "open_dataset", "read_megatron", "train_bpe", "write_megatron",
]
