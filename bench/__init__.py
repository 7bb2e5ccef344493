"""Benchmarks (not tests): run as scripts, e.g. ``python bench/rank_speed.py`` or ``python -m bench.rank_speed``."""
