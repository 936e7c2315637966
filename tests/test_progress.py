"""Progress: ``ctx.set_progress`` is saved throttled, flushed when the handler returns, fenced
by the claim, and shown (escaped) in the admin.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from django.db import connection
from django.urls import reverse

import taskqueue
from taskqueue import store
from taskqueue.context import TaskContext
from taskqueue.models import Task, TaskStatus
from tests.factories import TaskFactory, claim, past
from tests.testapp.models import LedgerEntry

TASKS_URL = reverse("admin:taskqueue_task_changelist")
SCRIPT = "<script>alert('x')</script>"

# Every UPDATE that sets a task's progress leaves a ledger row (pid -1) holding the value
# in thousandths: the database itself counts the writes, whichever process makes them.
SQLITE_TRIGGER = [
    """
    CREATE TRIGGER taskqueue_test_progress_writes AFTER UPDATE OF progress ON taskqueue_task
    BEGIN
        INSERT INTO testapp_ledgerentry (n, pid)
        VALUES (COALESCE(CAST(round(NEW.progress * 1000) AS INTEGER), -1), -1);
    END
    """
]
POSTGRES_TRIGGER = [
    """
    CREATE FUNCTION taskqueue_test_progress_write() RETURNS trigger AS $$
    BEGIN
        INSERT INTO testapp_ledgerentry (n, pid)
        VALUES (COALESCE(round(NEW.progress * 1000)::integer, -1), -1);
        RETURN NEW;
    END
    $$ LANGUAGE plpgsql
    """,
    """
    CREATE TRIGGER taskqueue_test_progress_writes AFTER UPDATE OF progress ON taskqueue_task
    FOR EACH ROW EXECUTE FUNCTION taskqueue_test_progress_write()
    """,
]


@pytest.fixture
def progress_writes(transactional_db: None) -> Iterator[None]:
    """Count progress writes with a trigger; dropped afterwards, as other tests share the db."""
    postgres = connection.vendor == "postgresql"
    with connection.cursor() as cursor:
        for statement in POSTGRES_TRIGGER if postgres else SQLITE_TRIGGER:
            cursor.execute(statement)
    try:
        yield
    finally:
        with connection.cursor() as cursor:
            if postgres:
                cursor.execute("DROP TRIGGER taskqueue_test_progress_writes ON taskqueue_task")
                cursor.execute("DROP FUNCTION taskqueue_test_progress_write()")
            else:
                cursor.execute("DROP TRIGGER taskqueue_test_progress_writes")


def written_values() -> list[int]:
    return list(LedgerEntry.objects.filter(pid=-1).order_by("id").values_list("n", flat=True))


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_progress_through_a_worker_is_throttled_and_the_last_value_flushed(
    progress_writes: None, run_worker: Any, pool: str
) -> None:
    task = taskqueue.enqueue("progress_steps", {"steps": 300, "seconds": 1.5, "final": 0.75})
    run_worker("--burst", "--pool", pool)
    task.refresh_from_db()
    assert (task.status, task.result) == (TaskStatus.COMPLETED, 300)
    # The value reported just before returning, although the last write was under 1 s ago.
    assert (task.progress, task.progress_message) == (0.75, "last step")
    writes = written_values()
    # 301 reports over 1.5 s: the first at once, one after a second, the last one flushed.
    assert 2 <= len(writes) <= 4, writes
    assert writes[0] == 0
    assert writes[-1] == 750
    assert writes == sorted(writes)


@pytest.mark.django_db(transaction=True)
def test_set_progress_writes_at_most_once_a_second_until_flushed(progress_writes: None) -> None:
    claimed = claim(TaskFactory(run_at=past()))
    ctx = TaskContext(
        task_id=claimed.id,
        task_type="noop",
        queue="default",
        attempt=1,
        max_attempts=3,
        worker_id="test-worker",
        lease_id=claimed.lease_id,
    )
    for step in range(100):
        ctx.set_progress(step / 200, f"step {step}")
    assert written_values() == [0]
    row = Task.objects.get(id=claimed.id)
    assert (row.progress, row.progress_message) == (0.0, "step 0")
    ctx.flush_progress()
    row = Task.objects.get(id=claimed.id)
    assert (row.progress, row.progress_message) == (0.495, "step 99")
    ctx.flush_progress()  # nothing new: no write
    ctx.set_progress(1.0, "done")  # the end is written at once
    assert written_values() == [0, 495, 1000]


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("value", "error"),
    [
        (1.5, ValueError),
        (-0.1, ValueError),
        ("half", TypeError),
        (True, TypeError),
        (None, TypeError),
    ],
)
def test_set_progress_rejects_values_outside_zero_to_one(value: Any, error: type) -> None:
    ctx = TaskContext(TaskFactory().id, "noop", "default", 1, 3, "test-worker")
    with pytest.raises(error, match="progress must be"):
        ctx.set_progress(value)


@pytest.mark.django_db
def test_progress_of_a_lost_claim_is_not_written() -> None:
    task = TaskFactory(run_at=past())
    first = claim(task)
    assert store.retry_later(first, delay=0, worker_id="w", error_type="E", error="e")
    second = claim(task)
    assert store.save_progress(task.id, first.lease_id, 0.9, "stale") is False
    assert store.save_progress(task.id, second.lease_id, 0.2, "current") is True
    row = Task.objects.get(id=task.id)
    assert (row.progress, row.progress_message) == (0.2, "current")


@pytest.mark.django_db
def test_the_admin_shows_progress_escaped_in_the_list_and_on_the_task_page(
    admin_client: Any,
) -> None:
    claimed = claim(TaskFactory(run_at=past()))
    assert store.save_progress(claimed.id, claimed.lease_id, 0.5, f"half way {SCRIPT}")
    TaskFactory()  # no progress yet: a dash, not an empty bar
    listing = admin_client.get(TASKS_URL).content.decode()
    assert '<progress value="50" max="100"' in listing
    assert "50% <span" in listing
    escaped = "half way &lt;script&gt;alert(&#x27;x&#x27;)&lt;/script&gt;"
    assert f'<span class="taskqueue-progress-message">{escaped}</span>' in listing
    assert SCRIPT not in listing
    page = admin_client.get(reverse("admin:taskqueue_task_change", args=[claimed.id]))
    text = page.content.decode()
    assert f'<progress value="50" max="100" title="{escaped}"></progress> 50%' in text
    assert SCRIPT not in text
