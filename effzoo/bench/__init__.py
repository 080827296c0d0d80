"""Benchmark suites that train each variant of a group under identical settings and write the
EfficientLLM tables (CSV, Markdown, LaTeX, JSON) and plots."""
