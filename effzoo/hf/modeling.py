"""``EffzooForCausalLM``: any effzoo model behind transformers' ``PreTrainedModel`` + ``GenerationMixin``.

The wrapper holds an :class:`~effzoo.model.decoder.EffzooModel` as ``self.model`` (the base model
prefix). Checkpoints store EffzooModel's own keys (no ``model.`` prefix): transformers adds the
prefix when loading, and :meth:`EffzooForCausalLM.save_pretrained` writes the unprefixed keys, so
one directory loads with both ``effzoo.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained``.
"""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..cache import ModelCache
from ..errors import ConfigError
from ..model.decoder import IGNORE_INDEX, EffzooModel
from .config import EffzooConfig


class EffzooForCausalLM(PreTrainedModel, GenerationMixin):
    """Causal LM head over an effzoo decoder; ``labels`` follow transformers (unshifted, -100 ignored)."""

    config_class = EffzooConfig
    config: EffzooConfig
    base_model_prefix = "model"
    main_input_name = "input_ids"
    supports_gradient_checkpointing = True

    def __init__(self, config: EffzooConfig) -> None:
        super().__init__(config)
        self.model = EffzooModel(config.model_config)
        self.post_init()

    # -- weights ---------------------------------------------------------------------------
    @torch.no_grad()
    def initialize_weights(self) -> None:
        """effzoo's own init (``EffzooModel.init_weights``) for a fresh model; after transformers has
        loaded a checkpoint, only the non-persistent buffers (RoPE frequencies, ...) are rebuilt and
        the loaded tensors are kept as they are."""
        params = list(self.model.parameters())
        loaded = [p for p in params if getattr(p, "_is_hf_initialized", False)]
        if len(loaded) < len(params):
            kept = [(p, p.detach().clone()) for p in loaded]
            self.model.init_weights()
            for param, value in kept:
                param.copy_(value)
            return
        self.model.init_buffers()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed

    def set_input_embeddings(self, value: nn.Embedding) -> None:
        self.model.embed = value

    def get_output_embeddings(self) -> nn.Linear | None:
        return self.model.head  # None when tied: the embedding matrix is the output projection

    def save_pretrained(self, save_directory: Any, *args: Any, state_dict: dict[str, Tensor] | None = None,
                        **kwargs: Any) -> Any:
        """transformers' save, with EffzooModel's unprefixed keys so ``effzoo.from_pretrained`` reads it too."""
        if state_dict is None:
            state_dict = self.model.state_dict()
        return super().save_pretrained(save_directory, *args, state_dict=state_dict, **kwargs)

    # -- forward ---------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        past_key_values: ModelCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        cache_capacity: int | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits for ``input_ids`` (B, T). With ``use_cache`` the decoding cache (KV or recurrent
        state, preallocated for ``cache_capacity`` tokens, default ``max_seq_len``) is returned as
        ``past_key_values`` and fed back by ``generate``."""
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise ConfigError(f"EffzooForCausalLM.forward does not support {', '.join(unsupported)}")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError(
                "effzoo models attend causally over every token: padded batches (attention_mask with zeros) "
                "are not supported; use equal-length prompts or one prompt at a time"
            )
        if use_cache and past_key_values is None:
            past_key_values = self.model.new_cache(input_ids.shape[0], cache_capacity)
        targets = None
        if labels is not None:
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # effzoo takes next-token targets
        out = self.model(input_ids, targets=targets, cache=past_key_values if use_cache else None)
        result = CausalLMOutputWithPast(loss=out.loss, logits=out.logits, past_key_values=out.cache)
        return result if return_dict is not False else result.to_tuple()

    # -- generation ------------------------------------------------------------------------
    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        """effzoo blocks keep their own states (KV or recurrent): forward creates the cache."""
        return False

    def _prepare_cache_for_generation(self, generation_config: Any, model_kwargs: dict[str, Any],
                                      generation_mode: Any, batch_size: int, max_cache_length: int) -> None:
        """Size the cache that forward allocates to this ``generate`` call instead of ``max_seq_len``."""
        if generation_config.num_beams > 1:
            raise ConfigError("beam search is not supported by effzoo models; use greedy or sampled decoding")
        if generation_config.use_cache is not False:
            model_kwargs["cache_capacity"] = max_cache_length + 1
