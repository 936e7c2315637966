"""``TaskContext``: what a handler with ``takes_context=True`` receives first."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any

# Progress and cancellation are read and written at most this often, whatever the handler does.
PROGRESS_INTERVAL = 1.0
CANCEL_CHECK_INTERVAL = 1.0


@dataclass
class TaskContext:
    """The running task as its handler sees it."""

    task_id: uuid.UUID
    task_type: str
    queue: str
    attempt: int
    max_attempts: int
    worker_id: str
    lease_id: uuid.UUID | None = None
    _progress_written_at: float = field(default=0.0, repr=False)
    _pending_progress: tuple[float, str] | None = field(default=None, repr=False)
    _cancel_checked_at: float = field(default=0.0, repr=False)
    _cancel_requested: bool = field(default=False, repr=False)
    _upstream_results: list[Any] | None = field(default=None, repr=False)

    @property
    def is_last_attempt(self) -> bool:
        return self.attempt >= self.max_attempts

    def set_progress(self, fraction: float, message: str = "") -> None:
        """Record progress (0.0 to 1.0) shown in the admin; written at most once a second."""
        if isinstance(fraction, bool) or not isinstance(fraction, int | float):
            raise TypeError(f"progress must be a number from 0 to 1, got {fraction!r}")
        if not 0.0 <= fraction <= 1.0:
            raise ValueError(f"progress must be from 0 to 1, got {fraction}")
        self._pending_progress = (float(fraction), str(message)[:255])
        now = time.monotonic()
        if now - self._progress_written_at >= PROGRESS_INTERVAL or fraction >= 1.0:
            self.flush_progress()

    def flush_progress(self) -> None:
        """Write the last progress now (the worker calls this when the handler returns)."""
        if self._pending_progress is None or self.lease_id is None:
            return
        # The store imports models; this module loads with the package, before they are ready.
        from taskqueue import store

        fraction, message = self._pending_progress
        store.save_progress(self.task_id, self.lease_id, fraction, message)
        self._pending_progress = None
        self._progress_written_at = time.monotonic()

    @property
    def cancel_requested(self) -> bool:
        """True once someone asked to cancel this task; checked at most once a second."""
        if self._cancel_requested or self.lease_id is None:
            return self._cancel_requested
        now = time.monotonic()
        if now - self._cancel_checked_at >= CANCEL_CHECK_INTERVAL:
            # The store imports models; this module loads with the package, before they are ready.
            from taskqueue import store

            self._cancel_checked_at = now
            self._cancel_requested = store.is_cancel_requested(self.task_id)
        return self._cancel_requested

    @property
    def upstream_results(self) -> list[Any]:
        """Results of the tasks this one waited on (``depends_on``, chain, group), in the
        order they were given; read from the database on first use."""
        if self._upstream_results is None:
            # The store imports models; this module loads with the package, before they are ready.
            from taskqueue.store.dependencies import upstream_results

            self._upstream_results = upstream_results(self.task_id)
        return self._upstream_results

    def as_dict(self) -> dict[str, Any]:
        return {
            "task_id": str(self.task_id),
            "task_type": self.task_type,
            "queue": self.queue,
            "attempt": self.attempt,
            "max_attempts": self.max_attempts,
            "worker_id": self.worker_id,
        }
