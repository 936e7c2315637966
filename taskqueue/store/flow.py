"""Per task type flow control kept in the database: pause, rate limit, concurrency limit,
circuit breaker.
"""

from __future__ import annotations


def record_successes(using: str, task_types: list[str]) -> None:
    """Close or reset the circuit breakers of ``task_types`` after successes."""
    # TODO(flow control): implement


def record_failure(using: str, task_type: str) -> None:
    """Count a failed attempt towards ``task_type``'s circuit breaker."""
    # TODO(flow control): implement
