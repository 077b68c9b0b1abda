"""Runnable benchmark scripts: `python -m benchmarks.NAME`; figures are ratios to floors."""
