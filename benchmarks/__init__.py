"""Benchmarks of the dagtask engine: ``python -m benchmarks.run`` (figures only, never a gate)."""
