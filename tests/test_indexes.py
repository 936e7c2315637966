"""The claim reads only the partial due index, however much finished history the table holds."""

from __future__ import annotations

import uuid

import pytest
from django.db import connection

import taskqueue
from taskqueue import store
from taskqueue.models import Task
from taskqueue.store.sql import claim_statement

pytestmark = [pytest.mark.postgres_only, pytest.mark.django_db]

HISTORY = 200_000
# A backlog, not a handful: with only a few ready rows the sort the partial index saves is
# so cheap that the planner sometimes reads them through taskqueue_task_finished_idx
# (status, completed_at) instead, a near tie in cost.
BACKLOG = 200
DATABASE = "default"

# Every NOT NULL column is filled: this bypasses the ORM to build history cheaply.
INSERT_HISTORY = """
INSERT INTO taskqueue_task (
    id, task_type, queue, payload, status, priority, run_at, attempts, max_attempts,
    last_error, progress_message, metadata, created_at, updated_at, started_at,
    completed_at, cancel_requested, has_dependents
)
SELECT
    gen_random_uuid(), 'echo', 'default', '{}'::jsonb, 'completed', mod(n, 201) - 100,
    now() - n * interval '1 second', 1, 3, '', '', '{}'::jsonb,
    now() - n * interval '1 second', now(), now() - n * interval '1 second', now(), false, false
FROM generate_series(1, %s) AS n
"""


def test_claim_plan_uses_the_partial_due_index() -> None:
    with connection.cursor() as cursor:
        cursor.execute(INSERT_HISTORY, [HISTORY])
    pending = taskqueue.enqueue_many([("noop", {}) for _ in range(BACKLOG)])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE taskqueue_task")
    assert Task.objects.count() == HISTORY + BACKLOG

    # EXPLAIN the very statement taskqueue.store.sql.claim_due runs (it builds it with this helper).
    statement, params = claim_statement(DATABASE, "explainer", ["default"], 10, uuid.uuid4())
    with connection.cursor() as cursor:
        cursor.execute("EXPLAIN " + statement, params)
        plan = "\n".join(row[0] for row in cursor.fetchall())
    assert "taskqueue_task_due_idx" in plan, plan
    # (The trailing space: the tiny taskqueue_tasktype table of the gate subquery may be scanned.)
    assert "Seq Scan on taskqueue_task " not in plan, plan

    claimed = store.claim_due_tasks("explainer", ["default"], 10)
    assert len(claimed) == 10
    assert {task.id for task in claimed} <= {task.id for task in pending}
