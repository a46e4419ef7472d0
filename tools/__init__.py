"""Trace and benchmark tooling: ``tools/replay`` and ``tools/bench``."""
