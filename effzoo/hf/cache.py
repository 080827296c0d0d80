"""``EffzooCache``: an effzoo decoding cache behind transformers' public ``Cache`` interface.

effzoo blocks keep their own per-layer states (preallocated KV buffers, MLA latents or recurrent
states) in a :class:`~effzoo.cache.ModelCache`; transformers' ``generate`` only needs to know how
many tokens the cache holds and that it can neither be compiled, cropped nor reordered.
"""
from __future__ import annotations

from typing import Any

from transformers import Cache
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..cache import ModelCache
from ..errors import ConfigError

# transformers renamed ``past_key_values`` to ``cache`` (outputs, forward and generate keywords);
# the output dataclass tells which name this installed release reads and writes.
CACHE_NAME = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


class EffzooCache(Cache):
    """A transformers ``Cache`` wrapping one effzoo :class:`~effzoo.cache.ModelCache`."""

    is_compileable = False
    is_croppable = False

    def __init__(self, model_cache: ModelCache) -> None:
        super().__init__(layers=[])  # no transformers layers: the effzoo blocks own their states
        self.model_cache = model_cache

    def __repr__(self) -> str:
        return f"EffzooCache(tokens={self.get_seq_length()}, max_len={self.model_cache.max_len})"

    def __len__(self) -> int:
        return len(self.model_cache.layers)

    def get_seq_length(self, layer_idx: int = 0) -> int:
        """Tokens consumed so far (the same for every layer)."""
        return self.model_cache.offset

    def get_max_length(self, layer_idx: int | None = None) -> int:
        """Capacity in tokens (preallocated)."""
        return self.model_cache.max_len

    def get_max_cache_shape(self, layer_idx: int = 0) -> int:
        """Capacity in tokens, under the name older transformers releases use."""
        return self.model_cache.max_len

    def update(self, *args: Any, **kwargs: Any) -> Any:
        raise ConfigError("EffzooCache is written by effzoo blocks themselves, not through Cache.update")

    def _refuse(self, operation: str) -> ConfigError:
        return ConfigError(f"EffzooCache does not support {operation} (effzoo decodes greedily or by sampling)")

    def reorder_cache(self, beam_idx: Any) -> None:
        raise self._refuse("reordering (beam search)")

    def crop(self, max_length: int) -> None:
        raise self._refuse("cropping (assisted decoding)")

    def batch_repeat_interleave(self, repeats: int) -> None:
        raise self._refuse("batch expansion")

    def batch_select_indices(self, indices: Any) -> None:
        raise self._refuse("batch selection")

    def reset(self) -> None:
        raise self._refuse("reset; make a new one with EffzooForCausalLM.new_cache")
