"""``EffzooConfig``: the transformers view of an effzoo ``ModelConfig`` (model_type ``"effzoo"``).

The whole effzoo config lives under the ``effzoo`` key of config.json, exactly as
:func:`effzoo.pretrained.save_pretrained` writes it; a few derived keys (``vocab_size``,
``hidden_size``, ...) are mirrored for transformers utilities that read them. Works with the
dataclass configs of newer transformers releases and the ``__init__`` configs of older ones.
"""
from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PretrainedConfig

from ..config import ModelConfig
from ..pretrained import MODEL_TYPE


class EffzooConfig(PretrainedConfig):
    """A transformers config wrapping one effzoo :class:`~effzoo.config.ModelConfig`."""

    model_type = MODEL_TYPE

    effzoo: dict[str, Any] | None = None
    effzoo_version: str | None = None
    vocab_size: int | None = None
    hidden_size: int | None = None
    num_hidden_layers: int | None = None
    num_attention_heads: int | None = None
    num_key_value_heads: int | None = None
    max_position_embeddings: int | None = None
    tie_word_embeddings: bool = True
    use_cache: bool = True

    def __post_init__(self, **kwargs: Any) -> None:
        self._derive_from_effzoo()
        super().__post_init__(**kwargs)

    if not dataclasses.is_dataclass(PretrainedConfig):  # transformers releases before dataclass configs

        def __init__(self, effzoo: dict[str, Any] | None = None, effzoo_version: str | None = None,
                     **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.effzoo, self.effzoo_version = effzoo, effzoo_version
            self._derive_from_effzoo()

    def _derive_from_effzoo(self) -> None:
        """Validate the effzoo config (filling in every field) and mirror the keys transformers reads."""
        model_config = ModelConfig.from_dict(self.effzoo) if self.effzoo is not None else ModelConfig()
        self.effzoo = model_config.to_dict()
        self.vocab_size = model_config.vocab_size
        self.hidden_size = model_config.d_model
        self.num_hidden_layers = model_config.n_layers
        self.num_attention_heads = model_config.n_heads
        self.num_key_value_heads = model_config.n_kv_heads
        self.max_position_embeddings = model_config.max_seq_len
        self.tie_word_embeddings = model_config.tie_embeddings

    @property
    def model_config(self) -> ModelConfig:
        """The effzoo config this transformers config stands for."""
        return ModelConfig.from_dict(self.effzoo)

    @classmethod
    def from_model_config(cls, config: ModelConfig, **kwargs: Any) -> "EffzooConfig":
        from .. import __version__

        return cls(effzoo=config.to_dict(), effzoo_version=__version__, **kwargs)
