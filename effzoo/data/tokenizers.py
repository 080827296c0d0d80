"""Tokenizers behind one small interface: the zero-download byte tokenizer, local Hugging Face
tokenizers (a ``tokenizer.json`` file or a tokenizer directory such as Qwen2.5's), and byte-level BPE
training with HF ``tokenizers``.

Every tokenizer has ``name``, ``spec`` (what ``load_tokenizer`` takes to rebuild it), ``vocab_size``,
``eos_id``, ``encode(text) -> list[int]``, ``encode_batch(texts)``, ``decode(ids)`` and ``fingerprint``.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any, Protocol

from effzoo.errors import EffzooError, close_matches

from ..atomic import atomic_dir
from .errors import DataError
from .manifest import file_sha256

EOS_TOKEN = "<|endoftext|>"
# Tried in order when a tokenizer directory does not name its EOS token.
EOS_CANDIDATES = (EOS_TOKEN, "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>")
BUILTIN = ("byte",)


class Tokenizer(Protocol):
    name: str
    spec: str
    vocab_size: int
    eos_id: int | None
    fingerprint: str

    def encode(self, text: str) -> list[int]: ...
    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]: ...
    def decode(self, ids: Iterable[int]) -> str: ...


class ByteTokenizer:
    """UTF-8 bytes are ids 0..255; id 256 is ``<|endoftext|>``. Vocabulary 257, nothing to download."""

    name = spec = "byte"
    vocab_size = 257
    eos_id = 256
    fingerprint = "byte-v1"

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [list(t.encode("utf-8")) for t in texts]

    def decode(self, ids: Iterable[int]) -> str:
        return bytes(i for i in ids if 0 <= i < 256).decode("utf-8", errors="replace")

    def token_to_id(self, token: str) -> int | None:
        return self.eos_id if token == EOS_TOKEN else None

    def __repr__(self) -> str:
        return "ByteTokenizer(vocab_size=257, eos_id=256)"


def _configured_eos(directory: Path) -> str | None:
    config = directory / "tokenizer_config.json"
    if not config.is_file():
        return None
    try:
        eos = json.loads(config.read_text(encoding="utf-8")).get("eos_token")
    except (ValueError, AttributeError) as exc:
        raise DataError(f"not a readable tokenizer config ({exc})", path=config) from exc
    return eos.get("content") if isinstance(eos, dict) else eos


class HFTokenizer:
    """A Hugging Face ``tokenizers`` tokenizer read from a local ``tokenizer.json`` (no network)."""

    def __init__(self, path: str | os.PathLike[str], eos_token: str | None = None) -> None:
        from tokenizers import Tokenizer as RustTokenizer

        path = Path(path)
        file = path / "tokenizer.json" if path.is_dir() else path
        try:
            self._tok = RustTokenizer.from_file(str(file))
        except Exception as exc:  # tokenizers raises a bare Exception for unreadable or malformed files
            raise DataError(f"not a readable tokenizer file ({str(exc).splitlines()[0] if str(exc) else exc!r})",
                            path=file) from exc
        self.spec = str(path.resolve())
        self.name = path.name if path.is_dir() else path.parent.name or path.stem
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)
        self.fingerprint = file_sha256(file)[:16]
        self.eos_id = _find_eos(self._tok.token_to_id, eos_token or _configured_eos(file.parent))

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # encode_batch_fast (tokenizers >= 0.21) skips character offsets, which effzoo never reads
        encode = getattr(self._tok, "encode_batch_fast", self._tok.encode_batch)
        return [e.ids for e in encode(list(texts), add_special_tokens=False)]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids), skip_special_tokens=False)

    def token_to_id(self, token: str) -> int | None:
        return self._tok.token_to_id(token)

    def __repr__(self) -> str:
        return f"HFTokenizer({self.spec!r}, vocab_size={self.vocab_size}, eos_id={self.eos_id})"


class TransformersTokenizer:
    """A local directory that only ``transformers.AutoTokenizer`` reads (e.g. a SentencePiece model)."""

    def __init__(self, directory: str | os.PathLike[str], eos_token: str | None = None) -> None:
        from transformers import AutoTokenizer

        directory = Path(directory)
        try:
            self._tok = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        except Exception as exc:  # transformers raises many types for a damaged tokenizer directory
            raise DataError(f"transformers cannot read this tokenizer directory ({type(exc).__name__}: "
                            f"{str(exc).splitlines()[0] if str(exc) else ''})", path=directory) from exc
        self.spec = str(directory.resolve())
        self.name = directory.name
        self.vocab_size = len(self._tok)
        digest = hashlib.sha256()
        for file in sorted(directory.iterdir()):
            if file.is_file():
                digest.update(file.name.encode() + file_sha256(file)[:16].encode())
        self.fingerprint = digest.hexdigest()[:16]
        vocab = self._tok.get_vocab()
        self.eos_id = _find_eos(vocab.get, eos_token or self._tok.eos_token)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return self._tok(list(texts), add_special_tokens=False)["input_ids"]

    def decode(self, ids: Iterable[int]) -> str:
        return self._tok.decode(list(ids))

    def token_to_id(self, token: str) -> int | None:
        return self._tok.get_vocab().get(token)


def _find_eos(lookup, configured: str | None) -> int | None:
    for token in ((configured,) if configured else ()) + EOS_CANDIDATES:
        idx = lookup(token)
        if idx is not None:
            return int(idx)
    return None


def load_tokenizer(spec: str | os.PathLike[str] | Tokenizer = "byte", *, eos_token: str | None = None) -> Tokenizer:
    """``"byte"``, a ``tokenizer.json`` file, or a local tokenizer directory (HF layout). Never downloads."""
    if not isinstance(spec, (str, os.PathLike)):
        return spec
    text = str(spec)
    if text == "byte":
        return ByteTokenizer()
    path = Path(text).expanduser()
    if path.is_file():
        return HFTokenizer(path, eos_token)
    if path.is_dir():
        if (path / "tokenizer.json").is_file():
            return HFTokenizer(path, eos_token)
        if any(path.glob("*.model")) or (path / "vocab.json").is_file():
            return TransformersTokenizer(path, eos_token)
        raise EffzooError(f"{path} holds no tokenizer.json, vocab.json or *.model file; not a tokenizer directory")
    hint = close_matches(text, BUILTIN)
    raise EffzooError(
        f"tokenizer {text!r} is neither a built-in tokenizer ({', '.join(BUILTIN)}) nor an existing path"
        + (f"; did you mean {hint[0]!r}?" if hint else "")
        + ". Bring a tokenizer directory (e.g. a downloaded Qwen2.5 tokenizer) or train one with "
        "`effzoo data tokenizer train`."
    )


def train_bpe(
    texts: Iterable[str], vocab_size: int, out_dir: str | os.PathLike[str], *,
    min_frequency: int = 2, show_progress: bool = False,
) -> HFTokenizer:
    """Train a byte-level BPE tokenizer (every byte representable, ``<|endoftext|>`` as EOS) and save
    ``tokenizer.json`` + ``tokenizer_config.json`` into ``out_dir`` atomically."""
    from tokenizers import Tokenizer as RustTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257 + 1:
        raise EffzooError(f"a byte-level BPE vocabulary needs more than 257 entries (got {vocab_size})")
    tok = RustTokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=show_progress,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    config: dict[str, Any] = {
        "tokenizer_class": "PreTrainedTokenizerFast", "eos_token": EOS_TOKEN,
        "model_max_length": 1 << 20, "added_by": "effzoo data tokenizer train",
    }
    with atomic_dir(out_dir) as staging:
        tok.save(str(staging / "tokenizer.json"))
        (staging / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return HFTokenizer(out_dir)
