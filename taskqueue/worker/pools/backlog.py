"""The tasks a pool holds that no slot has started yet, and the types it holds back.

A circuit breaker opens when a type's failures are *recorded*, which happens in the claim
loop a moment after the failure itself. Meanwhile a free slot would start the next task of
that type, spending one more attempt than the threshold allows. So when a pool sees a
failure of a type that has a circuit breaker, it holds that type back: its claimed tasks
wait here, unstarted, until the loop has recorded the failure and looked at the circuit.
An opened circuit sends them back to the queue with their attempt returned; a closed one
lets them start.

Not thread-safe on its own: each pool calls it under its own lock.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Collection
from contextlib import AbstractContextManager
from typing import Any

from taskqueue.core.outcome import Outcome
from taskqueue.core.registry import registry
from taskqueue.models import AttemptOutcome
from taskqueue.store import ClaimedTask

# The attempts a circuit breaker counts (taskqueue.store.flow.record_failure).
_COUNTED = (AttemptOutcome.FAILED, AttemptOutcome.TIMED_OUT)


def has_breaker(task_type: str) -> bool:
    """Whether this process's handler of ``task_type`` declares a circuit breaker."""
    return task_type in registry and registry.get(task_type).circuit_breaker is not None


def counts_against_breaker(task_type: str, outcome: Outcome) -> bool:
    """Whether ``outcome`` is a failure that ``task_type``'s circuit breaker will count."""
    return outcome.failed and outcome.attempt_outcome in _COUNTED and has_breaker(task_type)


class Backlog:
    """Claimed tasks in the order they were handed over, minus those of held-back types."""

    def __init__(self) -> None:
        self._tasks: deque[ClaimedTask] = deque()
        self.held: set[str] = set()

    def __len__(self) -> int:
        return len(self._tasks)

    def add(self, task: ClaimedTask) -> None:
        self._tasks.append(task)

    def put_back(self, task: ClaimedTask) -> None:
        """Return a task taken by ``next`` that could not be started after all."""
        self._tasks.appendleft(task)

    def next(self) -> ClaimedTask | None:
        """Take the first task whose type is not held back (None: nothing can start)."""
        if not self.held:
            return self._tasks.popleft() if self._tasks else None
        for index, task in enumerate(self._tasks):
            if task.task_type not in self.held:
                del self._tasks[index]
                return task
        return None

    def take_all(self) -> list[ClaimedTask]:
        taken = list(self._tasks)
        self._tasks.clear()
        return taken

    def take(self, task_ids: Collection[uuid.UUID]) -> list[ClaimedTask]:
        """Take those of ``task_ids`` that are waiting here."""
        taken = [task for task in self._tasks if task.id in task_ids]
        if taken:
            self._tasks = deque(task for task in self._tasks if task.id not in task_ids)
        return taken

    def note_outcome(self, task_type: str, outcome: Outcome) -> None:
        """Hold ``task_type`` back if ``outcome`` is a failure its breaker will count."""
        if counts_against_breaker(task_type, outcome):
            self.held.add(task_type)

    def release(self, task_types: Collection[str]) -> bool:
        """Let tasks of ``task_types`` start again; True if any type was held."""
        released = self.held & set(task_types)
        self.held -= released
        return bool(released)


class BacklogHolder:
    """What both pools answer about their backlog, under the pool's own lock.

    A pool sets ``backlog`` and ``lock`` and says in ``_on_release`` how its slots learn
    that held types may run again.
    """

    backlog: Backlog
    lock: AbstractContextManager[Any]

    def _on_release(self) -> None:
        raise NotImplementedError

    def take_not_started(self) -> list[ClaimedTask]:
        with self.lock:
            return self.backlog.take_all()

    def withdraw(self, task_ids: Collection[uuid.UUID]) -> list[ClaimedTask]:
        with self.lock:
            return self.backlog.take(task_ids)

    def held_types(self) -> set[str]:
        with self.lock:
            return set(self.backlog.held)

    def release_held(self, task_types: Collection[str]) -> None:
        with self.lock:
            if self.backlog.release(task_types):
                self._on_release()
