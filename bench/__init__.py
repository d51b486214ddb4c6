"""Benchmarks: each script prints its figures (medians, ratios against named peers)."""
