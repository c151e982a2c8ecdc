"""Benchmarks of the mesh against same-run baselines (``python -m ops.bench``; see docs/BENCHMARKS.md)."""
