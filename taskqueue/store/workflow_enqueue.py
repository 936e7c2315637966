"""Store a whole workflow (``taskqueue.chain``/``taskqueue.group``): the workflow row, its
validated tasks and their dependency rows, in one transaction.

``taskqueue.workflows`` builds and validates the tasks; this module only writes them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from django.db import transaction

from taskqueue.exceptions import InvalidTaskOption
from taskqueue.models import Task, TaskDependency, TaskStatus, Workflow
from taskqueue.store import sql
from taskqueue.store.bulk_enqueue import emit_enqueued
from taskqueue.store.common import database_alias, user_or_none


def enqueue_workflow(
    tasks: list[Task],
    upstreams: list[list[int]],
    *,
    name: str = "",
    created_by: Any = None,
) -> Workflow:
    """Store a workflow and its validated, unsaved ``tasks`` in one transaction.

    ``upstreams[i]`` lists the indexes of the earlier tasks that ``tasks[i]`` waits on, in
    the order its handler receives their results.
    """
    if not isinstance(name, str) or len(name) > 200:
        raise InvalidTaskOption(
            f"workflow name must be a string of at most 200 characters: {name!r}"
        )
    using = database_alias()
    # One clock read for the batch; tasks keep their order as their arrival order.
    stamp_batch(tasks, using)
    for index, task in enumerate(tasks):
        if any(not 0 <= upstream < index for upstream in upstreams[index]):
            raise ValueError(f"task {index} may only wait on earlier tasks: {upstreams[index]}")
        if upstreams[index]:
            task.status = TaskStatus.WAITING
        for upstream in upstreams[index]:
            tasks[upstream].has_dependents = True
    with transaction.atomic(using=using):
        workflow = Workflow.objects.using(using).create(
            name=name, created_by=user_or_none(created_by)
        )
        for task in tasks:
            task.workflow = workflow
        Task.objects.using(using).bulk_create(tasks, batch_size=1000)
        TaskDependency.objects.using(using).bulk_create(
            [
                TaskDependency(task_id=task.id, depends_on_id=tasks[upstream].id, position=position)
                for task, ids in zip(tasks, upstreams, strict=True)
                for position, upstream in enumerate(ids)
            ],
            batch_size=1000,
        )
    transaction.on_commit(lambda: emit_enqueued(*tasks), using=using)
    return workflow


def stamp_batch(tasks: Sequence[Task], using: str) -> None:
    """Give a batch its times from one read of the database clock.

    Literal times let the bulk insert skip per-row DEFAULT expressions (twice as fast), and
    a microsecond apart each keeps the batch's arrival order for the claim's tie-break.
    """
    now = sql.db_now(using)
    for offset, task in enumerate(tasks):
        arrival = now + timedelta(microseconds=offset)
        task.created_at = task.updated_at = arrival
        delay = getattr(task, "_taskqueue_delay", None)
        if delay is not None:
            task.run_at = now + delay
            task.status = TaskStatus.SCHEDULED
        elif task.status != TaskStatus.SCHEDULED:
            task.run_at = arrival
