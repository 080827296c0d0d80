"""The decoder that assembles registered parts, and its building helpers."""
