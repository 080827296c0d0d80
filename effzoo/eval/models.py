"""A model and its tokenizer behind one interface for evaluation: effzoo models (saved directories,
training runs, or a registered variant built from scratch) and transformers directories."""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from effzoo.data.tokenizers import Tokenizer, load_tokenizer
from effzoo.errors import ConfigError

log = logging.getLogger(__name__)
_STEP = re.compile(r"(\d+)$")


@dataclass
class LanguageModel:
    """``model(ids)`` must return logits or an object with ``.logits`` of shape (batch, length, vocab)."""

    model: nn.Module
    tokenizer: Tokenizer
    name: str
    max_len: int = 2048

    @property
    def device(self) -> torch.device:
        return next(iter(self.model.parameters()), torch.zeros(0)).device

    @torch.no_grad()
    def logits(self, ids: torch.Tensor) -> torch.Tensor:
        out = self.model(ids.to(self.device))
        return getattr(out, "logits", out)


def _is_effzoo_dir(path: Path) -> bool:
    config = path / "config.json"
    if not config.is_file():
        return False
    try:
        return "effzoo" in json.loads(config.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{config} is not valid JSON ({exc})") from exc


def _latest_checkpoint(run: Path) -> Path | None:
    """A training run's newest intact checkpoint (damaged ones are skipped, with a warning), else the
    newest saved effzoo model below ``run``; hidden staging folders are never candidates."""
    from effzoo.train.checkpoint import checkpoint_dir, list_checkpoints, newest_intact

    if list_checkpoints(run):
        found = newest_intact(run, log.warning)
        if found is None:
            raise ConfigError(f"no intact checkpoint in {checkpoint_dir(run)}: every one is damaged")
        return found
    found = [p.parent for p in run.rglob("config.json")
             if not any(part.startswith(".") for part in p.relative_to(run).parts) and _is_effzoo_dir(p.parent)]
    if not found:
        return None

    def key(p: Path) -> tuple[int, float]:
        match = _STEP.search(p.name)
        return (int(match.group(1)) if match else -1, p.stat().st_mtime)
    return max(found, key=key)


def _run_tokenizer(run: Path) -> str | None:
    """The tokenizer a training run used, from its ``train_config.json`` (embedded corpus -> byte)."""
    config = run / "train_config.json"
    if not config.is_file():
        return None
    data = json.loads(config.read_text()).get("data")
    if not data:
        return "byte"
    from effzoo.data import open_dataset

    path = Path(data).expanduser()
    if not path.is_absolute() and not path.exists() and not Path(f"{path}.idx").exists():
        raise ConfigError(f"{config} names the relative data path {data!r}, which does not exist from here "
                          f"(runs now record absolute paths); run from the folder it was trained in, or pass --tokenizer")
    return open_dataset(path).tokenizer


def _own_tokenizer(path: Path) -> str | None:
    return str(path) if (path / "tokenizer.json").is_file() or any(path.glob("*.model")) else None


def load_language_model(
    spec: str, *, size: str = "tiny", tokenizer: str | None = None, device: str | torch.device = "cpu",
    dtype: str | torch.dtype | None = None,
) -> LanguageModel:
    """``spec`` is a saved effzoo directory, a training run directory (its latest checkpoint), a
    transformers directory (AutoModelForCausalLM + AutoTokenizer, local files only), or a registered
    variant name built at ``size`` with fresh weights. ``tokenizer`` overrides the one found."""
    path = Path(spec).expanduser()
    if path.is_dir():
        if _is_effzoo_dir(path):
            return _effzoo(path, tokenizer or _own_tokenizer(path) or _run_tokenizer(path.parent.parent) or "byte",
                           device, dtype)
        if (path / "config.json").is_file():
            return _transformers(path, tokenizer, device, dtype)
        checkpoint = _latest_checkpoint(path)
        if checkpoint is None:
            raise FileNotFoundError(f"{path} holds no config.json and no saved effzoo checkpoint")
        log.info("evaluating %s", checkpoint)
        return _effzoo(checkpoint, tokenizer or _own_tokenizer(checkpoint) or _run_tokenizer(path) or "byte",
                       device, dtype)
    import effzoo

    tok = load_tokenizer(tokenizer or "byte")
    model = effzoo.build(spec, size=size, device=device, dtype=dtype)
    if model.config.vocab_size < tok.vocab_size:
        raise ConfigError(f"{spec} {size} has vocab_size {model.config.vocab_size}, smaller than tokenizer "
                          f"{tok.name} ({tok.vocab_size})")
    model.eval()
    return LanguageModel(model, tok, f"{spec}-{size} (untrained)", model.config.max_seq_len)


def _effzoo(path: Path, tokenizer: str, device: Any, dtype: Any) -> LanguageModel:
    import effzoo

    model = effzoo.from_pretrained(path, device=device, dtype=dtype).eval()
    tok = load_tokenizer(tokenizer)
    if model.config.vocab_size < tok.vocab_size:
        raise ConfigError(f"model {path} has vocab_size {model.config.vocab_size}, smaller than tokenizer "
                          f"{tok.spec} ({tok.vocab_size}); pass the tokenizer it was trained with (--tokenizer)")
    return LanguageModel(model, tok, path.name if path.name else str(path), model.config.max_seq_len)


def _transformers(path: Path, tokenizer: str | None, device: Any, dtype: Any) -> LanguageModel:
    from transformers import AutoModelForCausalLM

    from effzoo.build import parse_dtype

    model = AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, dtype=parse_dtype(dtype) or "auto")
    model = model.to(device).eval()
    tok = load_tokenizer(tokenizer or path)
    limit = getattr(model.config, "max_position_embeddings", None) or 2048
    return LanguageModel(model, tok, path.name, int(limit))
