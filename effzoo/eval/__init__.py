"""Evaluation: perplexity on token data and MMLU / CMMLU multiple-choice accuracy."""
from __future__ import annotations

from .mmlu import Question, evaluate_choices, load_mmlu_dir
from .models import LanguageModel, load_language_model
from .ppl import perplexity
from .report import markdown_table, write_report

__all__ = ["LanguageModel", "Question", "evaluate_choices", "load_language_model", "load_mmlu_dir",
           "markdown_table", "perplexity", "write_report"]
