"""Helpers for scripts/bench.py: clips and statistics, service processes, in-process baselines, sections."""
