"""Workflow bookkeeping: release dependents when their upstream tasks complete, cancel them
when an upstream task dies.
"""

from __future__ import annotations

import uuid


def release_dependents(using: str, upstream_ids: list[uuid.UUID]) -> list[uuid.UUID]:
    """Make waiting dependents of ``upstream_ids`` ready once all their upstreams completed.

    Called in the completion's transaction. Returns the ids released.
    """
    return []  # TODO(workflows): implement


def cancel_dependents(using: str, upstream_ids: list[uuid.UUID], reason: str) -> list[uuid.UUID]:
    """Cancel (transitively) the unfinished dependents of dead or cancelled upstream tasks."""
    return []  # TODO(workflows): implement
