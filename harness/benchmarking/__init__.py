"""Benchmarking: speed and memory sweeps of the plugins and the regression gate against a committed baseline."""
