"""Workflows: ``taskqueue.chain`` runs steps one after another, ``taskqueue.group`` runs them
side by side, and they nest. A step after a group waits for every member (fan-in)::

    taskqueue.chain(
        validate.step(order_id=1),
        charge.step(order_id=1),
        taskqueue.group(email.step(order_id=1), invoice.step(order_id=1)),
        ship.step(order_id=1),
        name="order 1",
    ).enqueue()

Each step becomes one task that waits (``waiting``) until its upstream tasks have completed;
its handler reads their results with ``ctx.upstream_results``. When an upstream task is
dead-lettered or cancelled, everything downstream of it is cancelled with that reason.

Importing this module touches no models, so it is safe before the app registry is ready
(``taskqueue`` imports it); the store is loaded when a workflow is enqueued.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from taskqueue.conf import settings as tq_settings
from taskqueue.core.payloads import check_payload
from taskqueue.core.steps import Step, step
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.handlers import TaskHandler

if TYPE_CHECKING:
    from taskqueue.models import Task, Workflow


@dataclass(frozen=True)
class WorkflowRun:
    """What ``.enqueue()`` stored: the workflow row and its tasks, in the order the steps
    were written (depth first, left to right)."""

    workflow: Workflow
    tasks: list[Task] = field(default_factory=list)

    @property
    def id(self) -> Any:
        return self.workflow.id


class _Composite:
    kind = ""

    def __init__(
        self,
        *nodes: Step | _Composite | Any,
        name: str = "",
        created_by: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> None:
        if not nodes:
            raise TypeError(f"{self.kind}() needs at least one step")
        checked: list[Step | _Composite] = []
        for position, node in enumerate(nodes, start=1):
            if isinstance(node, TaskHandler):
                node = node.step()  # a handler without arguments is a step with no payload
            if not isinstance(node, Step | _Composite):
                raise TypeError(
                    f"{self.kind}() argument {position} is {node!r}: pass steps "
                    "(handler.step(...) or taskqueue.step(...)), chains or groups"
                )
            checked.append(node)
        self.nodes = tuple(checked)
        self.name = name
        self.created_by = created_by
        self.metadata = metadata

    def __repr__(self) -> str:
        return f"{self.kind}({', '.join(repr(node) for node in self.nodes)})"

    def _place(self, plan: _Plan, after: list[int]) -> list[int]:
        """Add this node's steps to ``plan`` after the tasks ``after``; return its last tasks."""
        raise NotImplementedError

    def enqueue(
        self,
        *,
        name: str | None = None,
        created_by: Any = None,
        metadata: Mapping[str, Any] | None = None,
    ) -> WorkflowRun:
        """Validate every step, then store the workflow and all its tasks in one transaction.

        Inside ``transaction.atomic()`` they exist only if it commits. ``metadata`` is merged
        into every task's metadata (a step's own keys win); ``created_by`` is recorded on the
        workflow and its tasks.
        """
        # The store imports models; this module loads with the package, before they are ready.
        from taskqueue.store.workflow_enqueue import enqueue_workflow

        name = self.name if name is None else name
        created_by = self.created_by if created_by is None else created_by
        metadata = self.metadata if metadata is None else metadata
        if metadata is not None:
            if not isinstance(metadata, Mapping):
                raise InvalidTaskOption(
                    f"workflow metadata must be a dict, got {type(metadata).__name__}"
                )
            # The rules and the size cap of every task's own metadata.
            metadata = check_payload(metadata, tq_settings.MAX_PAYLOAD_BYTES, what="metadata")
        plan = _Plan(created_by=created_by, metadata=dict(metadata or {}))
        self._place(plan, [])
        workflow = enqueue_workflow(plan.tasks, plan.upstreams, name=name, created_by=created_by)
        return WorkflowRun(workflow=workflow, tasks=plan.tasks)


class Chain(_Composite):
    """Steps run one after another; each waits for the last task(s) of the one before."""

    kind = "chain"

    def _place(self, plan: _Plan, after: list[int]) -> list[int]:
        for node in self.nodes:
            after = plan.place(node, after)
        return after


class Group(_Composite):
    """Steps run side by side; what follows a group waits for all of them, in group order."""

    kind = "group"

    def _place(self, plan: _Plan, after: list[int]) -> list[int]:
        last: list[int] = []
        for node in self.nodes:
            last += plan.place(node, after)
        return last


def chain(
    *nodes: Step | _Composite | Any,
    name: str = "",
    created_by: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> Chain:
    """Steps (or nested chains and groups) that run one after another."""
    return Chain(*nodes, name=name, created_by=created_by, metadata=metadata)


def group(
    *nodes: Step | _Composite | Any,
    name: str = "",
    created_by: Any = None,
    metadata: Mapping[str, Any] | None = None,
) -> Group:
    """Steps (or nested chains and groups) that run side by side."""
    return Group(*nodes, name=name, created_by=created_by, metadata=metadata)


class _Plan:
    """The tasks of a workflow being built, each with the indexes of the tasks it waits on."""

    def __init__(self, *, created_by: Any, metadata: dict[str, Any]) -> None:
        self.created_by = created_by
        self.metadata = metadata
        self.tasks: list[Task] = []
        self.upstreams: list[list[int]] = []

    def place(self, node: Step | _Composite, after: list[int]) -> list[int]:
        if isinstance(node, _Composite):
            return node._place(self, after)
        return [self._add(node, after)]

    def _add(self, node: Step, after: list[int]) -> int:
        # The store imports models; this module loads with the package, before they are ready.
        from taskqueue.store.enqueueing import build_task

        options = dict(node.options)
        if self.metadata:
            step_metadata = options.get("metadata")
            if step_metadata is None or isinstance(step_metadata, Mapping):
                options["metadata"] = {**self.metadata, **(step_metadata or {})}
        if self.created_by is not None:
            options.setdefault("created_by", self.created_by)
        number = len(self.tasks) + 1
        try:
            task = build_task(node.task_type, node.payload, **options)
        except (InvalidPayload, InvalidTaskOption, UnknownTaskType, TypeError) as exc:
            raise type(exc)(f"step {number} ({node.task_type}): {exc}") from None
        self.tasks.append(task)
        self.upstreams.append(list(after))
        return len(self.tasks) - 1


__all__ = ["Chain", "Group", "Step", "WorkflowRun", "chain", "group", "step"]
