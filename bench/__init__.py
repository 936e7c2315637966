"""Benchmarks of taskqueue: figures of merit, printed, never asserted (see docs/benchmarks.md)."""
