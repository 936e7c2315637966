"""``Step``: one task to be, the unit ``taskqueue.chain`` and ``taskqueue.group`` are made of.

Shared by ``taskqueue.handlers`` (``handler.step(...)``) and ``taskqueue.workflows``, which
imports the handlers, so it lives a layer below both. Touches no models.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

# Options a step cannot take: the workflow decides what a step waits on, and an idempotency
# key could hand back a task that belongs to another workflow.
STEP_FORBIDDEN_OPTIONS = {
    "depends_on": "a workflow step waits on the steps before it; depends_on is not accepted",
    "idempotency_key": "idempotency_key is not supported on workflow steps",
}


class Step:
    """One task to be: a task type, its payload and its enqueue options."""

    __slots__ = ("options", "payload", "task_type")

    def __init__(
        self,
        task_type: str,
        payload: Mapping[str, Any] | None = None,
        options: Mapping[str, Any] | None = None,
    ) -> None:
        if not isinstance(task_type, str):
            raise TypeError(f"a step's task type must be a string, got {task_type!r}")
        options = dict(options or {})
        for name, message in STEP_FORBIDDEN_OPTIONS.items():
            if name in options:
                raise TypeError(f"step {task_type!r}: {message}")
        self.task_type = task_type
        self.payload = payload
        self.options = options

    def __repr__(self) -> str:
        return f"<Step {self.task_type!r} {self.payload!r}>"


def step(task_type: str, payload: Mapping[str, Any] | None = None, **options: Any) -> Step:
    """A workflow step: the arguments of ``taskqueue.enqueue``, enqueued later as part of a
    ``chain`` or ``group``."""
    return Step(task_type, payload, options)
