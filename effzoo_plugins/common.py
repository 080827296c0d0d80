"""Constants the built-in size families share; third-party plugins may import them too."""
from __future__ import annotations

QWEN25_VOCAB = 151_936
"""The Qwen2.5 tokenizer's vocabulary, which the EfficientLLM runs use for every architecture."""
