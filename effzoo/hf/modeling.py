"""``EffzooForCausalLM``: any effzoo model behind transformers' ``PreTrainedModel`` + ``GenerationMixin``.

The wrapper holds an :class:`~effzoo.model.decoder.EffzooModel` as ``self.model`` (the base model
prefix). Checkpoints store EffzooModel's own keys (no ``model.`` prefix): transformers adds the
prefix when loading, and :meth:`EffzooForCausalLM.save_pretrained` writes the unprefixed keys, so
one directory loads with both ``effzoo.from_pretrained`` and ``AutoModelForCausalLM.from_pretrained``.
"""
from __future__ import annotations

import copy
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from transformers import Cache, GenerationConfig, GenerationMixin, PreTrainedModel
from transformers.modeling_outputs import CausalLMOutputWithPast

from ..cache import ModelCache
from ..errors import ConfigError
from ..model.decoder import IGNORE_INDEX, EffzooModel
from .cache import CACHE_NAME, EffzooCache
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

    # -- activation checkpointing ----------------------------------------------------------
    def activation_checkpointing_enable(self, activation_checkpointing_kwargs: dict[str, Any] | None = None,
                                        **options: Any) -> None:
        """Recompute each block in the backward pass (``torch.utils.checkpoint``, ``use_reentrant=False``)."""
        self._set_checkpointing(True, activation_checkpointing_kwargs, options)

    def gradient_checkpointing_enable(self, gradient_checkpointing_kwargs: dict[str, Any] | None = None,
                                      **options: Any) -> None:
        """The same as :meth:`activation_checkpointing_enable`, under the name every transformers 5.x has."""
        self._set_checkpointing(True, gradient_checkpointing_kwargs, options)

    def activation_checkpointing_disable(self) -> None:
        self._set_checkpointing(False, None, {})

    def gradient_checkpointing_disable(self) -> None:
        self._set_checkpointing(False, None, {})

    def _set_checkpointing(self, enable: bool, checkpoint_kwargs: dict[str, Any] | None,
                           options: dict[str, Any]) -> None:
        if checkpoint_kwargs and checkpoint_kwargs != {"use_reentrant": False}:
            raise ConfigError(f"effzoo checkpoints every block with use_reentrant=False; got {checkpoint_kwargs}")
        refused = {k: v for k, v in options.items() if (k, v) not in (("every_n_layers", 1), ("offload", False))}
        if refused:
            raise ConfigError(f"activation checkpointing options not supported by effzoo: {refused}")
        self.model.gradient_checkpointing = enable

    # -- forward ---------------------------------------------------------------------------
    def new_cache(self, batch_size: int, max_length: int | None = None) -> EffzooCache:
        """An empty decoding cache (KV or recurrent state) for ``max_length`` tokens (default ``max_seq_len``),
        to pass to ``forward`` or ``generate`` as ``cache=`` / ``past_key_values=``."""
        return EffzooCache(self.model.new_cache(batch_size, max_length))

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor | None = None,
        cache: EffzooCache | ModelCache | None = None,
        past_key_values: EffzooCache | ModelCache | None = None,
        labels: Tensor | None = None,
        use_cache: bool | None = None,
        return_dict: bool | None = None,
        **kwargs: Any,
    ) -> CausalLMOutputWithPast | tuple:
        """Logits for ``input_ids`` (B, T). With ``use_cache`` (or a cache given as ``cache`` or, on older
        transformers, ``past_key_values``) the decoding cache is advanced and returned as an
        :class:`EffzooCache`; without one, a cache for ``max_seq_len`` tokens is made."""
        unsupported = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if unsupported:
            raise ConfigError(f"EffzooForCausalLM.forward does not support {', '.join(unsupported)}")
        if cache is not None and past_key_values is not None:
            raise ConfigError("pass the decoding cache once, as cache= or past_key_values=, not both")
        if attention_mask is not None and not bool(attention_mask.all()):
            raise ConfigError(
                "effzoo models attend causally over every token: padded batches (attention_mask with zeros) "
                "are not supported; use equal-length prompts or one prompt at a time"
            )
        state = self._as_effzoo_cache(cache if cache is not None else past_key_values, input_ids.shape[0], use_cache)
        targets = None
        if labels is not None:
            targets = F.pad(labels[:, 1:], (0, 1), value=IGNORE_INDEX)  # effzoo takes next-token targets
        out = self.model(input_ids, targets=targets, cache=state.model_cache if state is not None else None)
        result = CausalLMOutputWithPast(loss=out.loss, logits=out.logits, **{CACHE_NAME: state})
        return result if return_dict is not False else result.to_tuple()

    def _as_effzoo_cache(self, given: Any, batch_size: int, use_cache: bool | None) -> EffzooCache | None:
        """The cache to decode with: the one given, wrapped if needed; a new one for ``use_cache``; or None."""
        if isinstance(given, EffzooCache):
            return given
        if isinstance(given, ModelCache):
            return EffzooCache(given)
        if given is not None:
            if isinstance(given, Cache) and given.get_seq_length() == 0:
                return self.new_cache(batch_size)  # an empty transformers cache: effzoo keeps its own states
            raise ConfigError(
                f"effzoo models decode with their own states, not a filled {type(given).__name__}; "
                "pass an EffzooCache (EffzooForCausalLM.new_cache)"
            )
        return self.new_cache(batch_size) if use_cache else None

    # -- generation ------------------------------------------------------------------------
    def prepare_inputs_for_generation(self, input_ids: Tensor, **kwargs: Any) -> dict[str, Any]:
        """The tokens the cache has not seen yet, the cache, and the mask (public ``generate`` hook)."""
        state = kwargs.get(CACHE_NAME)
        seen = state.get_seq_length() if state is not None else 0
        inputs: dict[str, Any] = {"input_ids": input_ids[:, seen:], "use_cache": kwargs.get("use_cache")}
        if kwargs.get("attention_mask") is not None:
            inputs["attention_mask"] = kwargs["attention_mask"]
        if state is not None:
            inputs[CACHE_NAME] = state
        return inputs

    @torch.no_grad()
    def generate(self, inputs: Tensor | None = None, generation_config: GenerationConfig | None = None,
                 **kwargs: Any) -> Any:
        """transformers' ``generate`` (greedy or sampled; stopping criteria, streamers, ...) over an
        :class:`EffzooCache` sized for this call, passed as a user cache through the public API."""
        settings = copy.deepcopy(generation_config if generation_config is not None else self.generation_config)
        settings.update(**{k: v for k, v in kwargs.items() if hasattr(settings, k)})
        if (settings.num_beams or 1) > 1:
            raise ConfigError("beam search is not supported by effzoo models; use greedy or sampled decoding")
        given = kwargs.pop("cache", None)
        given = kwargs.pop("past_key_values", None) if given is None else given
        prompt = inputs if inputs is not None else kwargs.get("input_ids")
        if given is not None:
            kwargs[CACHE_NAME] = self._as_effzoo_cache(given, 0, True) if not isinstance(given, Cache) else given
        elif settings.use_cache is not False and prompt is not None:
            length = prompt.shape[1]
            # unset fields (None on newer transformers) take GenerationConfig's documented defaults
            total = length + settings.max_new_tokens if settings.max_new_tokens is not None else settings.max_length or 20
            total = max(total, length + 1)
            if total > self.config.max_position_embeddings:
                raise ConfigError(
                    f"prompt ({length}) + new tokens = {total} exceeds max_seq_len "
                    f"{self.config.max_position_embeddings}; build the model with a larger max_seq_len"
                )
            kwargs[CACHE_NAME] = self.new_cache(prompt.shape[0] * (settings.num_return_sequences or 1), total)
        return super().generate(inputs, generation_config=generation_config, **kwargs)
