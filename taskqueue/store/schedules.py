"""Schedule bookkeeping: firing due slots, recording successes (dead-man's switch)."""

from __future__ import annotations


def record_successes(using: str, schedule_ids: list[int]) -> None:
    """Note that a run of each schedule succeeded now (called in the completion's transaction)."""
    # TODO(schedules): implement
