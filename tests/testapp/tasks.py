"""Handlers the tests enqueue; worker subprocesses discover them like any project's tasks.py."""

import asyncio
import os

from django.db import connection

import taskqueue


@taskqueue.handler("noop")
def noop() -> None:
    return None


@taskqueue.handler("echo")
def echo(value=None):
    return {"value": value}


@taskqueue.handler("add", priority="high")
def add(a: int, b: int) -> int:
    return a + b


@taskqueue.handler("ledger")
def ledger(n: int) -> None:
    """Record one execution per call, with the worker's pid, in its own table."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_ledgerentry (n, pid) VALUES (%s, %s)", [n, os.getpid()])


@taskqueue.handler("always_fails", max_attempts=3, retry=taskqueue.Fixed(0))
def always_fails(message: str = "boom") -> None:
    raise ValueError(message)


@taskqueue.handler("fails_then_succeeds", max_attempts=3, retry=taskqueue.Fixed(0))
def fails_then_succeeds(key: str, failures: int) -> str:
    from tests.testapp.models import Counter

    counter, _ = Counter.objects.get_or_create(key=key)
    counter.value += 1
    counter.save()
    if counter.value <= failures:
        raise RuntimeError(f"failure {counter.value} of {failures}")
    return f"succeeded on attempt {counter.value}"


@taskqueue.handler("permanent")
def permanent() -> None:
    raise taskqueue.PermanentError("card declined")


@taskqueue.handler("asks_retry", max_attempts=2)
def asks_retry(delay: float = 0) -> None:
    raise taskqueue.Retry("not ready", delay=delay)


@taskqueue.handler("async_add")
async def async_add(a: int, b: int) -> int:
    await asyncio.sleep(0)
    return a + b


@taskqueue.handler("async_slow", timeout=0.2, max_attempts=1)
async def async_slow() -> None:
    await asyncio.sleep(30)


@taskqueue.handler("with_context", takes_context=True)
def with_context(ctx: taskqueue.TaskContext, label: str) -> dict:
    ctx.set_progress(1.0, "done")
    return {"attempt": ctx.attempt, "label": label}


@taskqueue.handler("bad_result")
def bad_result() -> object:
    return object()


@taskqueue.handler("sleepy", queue="slow")
def sleepy(seconds: float) -> None:
    import time

    time.sleep(seconds)  # the handler's own work, not test synchronisation


@taskqueue.handler("linear_retry", max_attempts=3, retry=taskqueue.Linear(base=30, step=10))
def linear_retry() -> None:
    raise RuntimeError("still broken")


@taskqueue.handler("marked_sleep", queue="slow")
def marked_sleep(key: str, seconds: float) -> None:
    """Leave a Counter row saying the handler has started, then sleep: tests poll for the row."""
    import time

    from tests.testapp.models import Counter

    Counter.objects.create(key=key)
    time.sleep(seconds)  # the handler's own work, not test synchronisation


@taskqueue.handler("slow_first_attempt", queue="slow", takes_context=True, max_attempts=3)
def slow_first_attempt(ctx: taskqueue.TaskContext, key: str, seconds: float) -> dict:
    """Attempt 1 marks its start and works for ``seconds``; later attempts return at once."""
    import time

    from tests.testapp.models import Counter

    if ctx.attempt == 1:
        Counter.objects.create(key=key)
        time.sleep(seconds)  # the handler's own work, not test synchronisation
    return {"pid": os.getpid(), "attempt": ctx.attempt}


@taskqueue.handler("crash_worker", priority="critical", max_attempts=2)
def crash_worker() -> None:
    """Kill the worker process running this task, as a segfaulting C extension would."""
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


@taskqueue.handler("patient_ledger", max_attempts=10, retry=taskqueue.Fixed(0))
def patient_ledger(n: int) -> None:
    """Like 'ledger', with attempts to spare: outage tests cut its connection mid-task."""
    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_ledgerentry (n, pid) VALUES (%s, %s)", [n, os.getpid()])


@taskqueue.handler("chaos_ledger", takes_context=True, max_attempts=25, retry=taskqueue.Fixed(0))
def chaos_ledger(ctx: taskqueue.TaskContext, n: int, work_ms: float = 3) -> dict:
    """Count this execution in the chaos ledger (a connection of its own), then work a little.

    Attempts to spare: every SIGKILL spends the attempts of the tasks its worker held, and
    the chaos tests prove nothing is lost, not that attempts run out.
    """
    import time

    from tests.chaos import record_execution

    record_execution(n, ctx.worker_id, ctx.attempt)
    time.sleep(work_ms / 1000)  # the handler's own work, so kills land mid-task
    return {"worker": ctx.worker_id, "attempt": ctx.attempt}


@taskqueue.handler("hang_sleep", queue="hang", timeout=1, max_attempts=1)
def hang_sleep() -> None:
    import time

    time.sleep(600)  # a handler stuck in a sleep: the worker must stop it at its timeout


@taskqueue.handler("hang_cpu", queue="hang", timeout=1, max_attempts=1)
def hang_cpu() -> None:
    while True:  # a pure-Python CPU loop that never yields
        pass


@taskqueue.handler("hang_sql", queue="hang", timeout=1, max_attempts=2, retry=taskqueue.Fixed(0))
def hang_sql() -> None:
    """A long query: pg_sleep on PostgreSQL, a huge recursive count on SQLite."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_sleep(600)")
        else:
            cursor.execute(
                "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c "
                "WHERE x < 10000000000) SELECT max(x) FROM c"
            )


@taskqueue.handler("atomic_ledger", atomic=True, max_attempts=20, retry=taskqueue.Fixed(0))
def atomic_ledger(n: int, work: float = 0.0) -> int:
    """An effect in the queue's database, committed together with the task's completion."""
    import time

    from tests.testapp.models import LedgerEntry

    LedgerEntry.objects.create(n=n, pid=os.getpid())
    if work:
        time.sleep(work)  # the handler's own work: gives kill -9 a window mid-transaction
    return n


@taskqueue.handler("atomic_then_fail", atomic=True, max_attempts=1)
def atomic_then_fail(n: int) -> None:
    from tests.testapp.models import LedgerEntry

    LedgerEntry.objects.create(n=n, pid=os.getpid())
    raise RuntimeError("fails after writing")


_HOARD: list[bytes] = []


@taskqueue.handler("hoard_memory", queue="memory")
def hoard_memory(mib: int) -> None:
    """Keep ``mib`` MiB alive in this process, as a leaking handler would."""
    _HOARD.append(b"x" * (mib * 2**20))
