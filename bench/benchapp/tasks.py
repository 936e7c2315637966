"""Handlers the benchmark enqueues: ``noop`` for throughput, ``stamp`` for pickup latency."""

import time

import taskqueue


@taskqueue.handler("noop")
def noop() -> None:
    """Do nothing: what is left is the queue's own cost per task."""
    return None


@taskqueue.handler("stamp")
def stamp() -> float:
    """Return the wall clock at handler start; the benchmark subtracts the enqueue time."""
    return time.time()
