"""Signals for every lifecycle event; each is sent with ``event=TaskEvent(...)``."""

from django.dispatch import Signal

task_enqueued = Signal()
task_started = Signal()
task_succeeded = Signal()
task_failed = Signal()  # one attempt failed (a retry or a dead letter follows)
task_retry_scheduled = Signal()
task_dead_lettered = Signal()
task_cancelled = Signal()
task_timed_out = Signal()
worker_started = Signal()
worker_stopped = Signal()
circuit_opened = Signal()
circuit_closed = Signal()
schedule_late = Signal()
