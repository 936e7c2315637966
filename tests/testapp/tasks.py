"""Handlers the tests enqueue; worker subprocesses discover them like any project's tasks.py."""

import asyncio
import os
from typing import Any

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


# --- Workflows (depends_on, chain, group): tests/test_workflows.py -------------------------


@taskqueue.handler("wf_step", takes_context=True)
def wf_step(ctx: taskqueue.TaskContext, label: str, work: float = 0.0) -> dict:
    """Report what this step saw of its upstream tasks, and when it ran (wall clock)."""
    import time

    started = time.time()
    if work:
        time.sleep(work)  # the handler's own work, so parallel steps overlap
    return {
        "label": label,
        # Labels only: whole upstream results would nest ever deeper down a chain.
        "upstream": [r["label"] if isinstance(r, dict) else r for r in ctx.upstream_results],
        "started": started,
        "finished": time.time(),
    }


@taskqueue.handler("wf_fails", max_attempts=1)
def wf_fails(message: str = "boom") -> None:
    raise ValueError(message)


# --- cancellation and progress (tests/test_cancellation.py, tests/test_progress.py) -----------


@taskqueue.handler("await_cancel", queue="cancel", takes_context=True, max_attempts=3)
def await_cancel(ctx: taskqueue.TaskContext, key: str, then: str, seconds: float = 60) -> str:
    """Mark the start with a Counter row, then work for ``seconds``, polling for a cancel.

    On a cancel request: ``raise`` raises, ``retry`` raises Retry, ``return`` returns;
    ``ignore`` never looks and just works on.
    """
    import time

    from tests.testapp.models import Counter

    Counter.objects.create(key=key)
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if then != "ignore" and ctx.cancel_requested:
            if then == "raise":
                raise RuntimeError("stopping: a cancel was requested")
            if then == "retry":
                raise taskqueue.Retry("asked to stop")
            return "stopped early"
        time.sleep(0.05)  # the handler's own work between two looks at the flag
    return "ran to the end"


@taskqueue.handler("async_await_cancel", queue="cancel")
async def async_await_cancel(key: str, seconds: float = 60) -> str:
    """An async handler that marks its start, then ignores cancel requests."""
    from tests.testapp.models import Counter

    await Counter.objects.acreate(key=key)
    await asyncio.sleep(seconds)
    return "ran to the end"


@taskqueue.handler("cancel_ledger", queue="cancel", max_attempts=1)
def cancel_ledger(n: int, work_ms: float = 0) -> int:
    """Record that the handler ran (a ledger row), work a little, and return ``n``."""
    import time

    with connection.cursor() as cursor:
        cursor.execute("INSERT INTO testapp_ledgerentry (n, pid) VALUES (%s, %s)", [n, os.getpid()])
    time.sleep(work_ms / 1000)  # the handler's own work, so cancels land while tasks run
    return n


@taskqueue.handler("progress_steps", takes_context=True)
def progress_steps(ctx: taskqueue.TaskContext, steps: int, seconds: float, final: float) -> int:
    """Report progress ``steps`` times over ``seconds``, then ``final`` just before returning."""
    import time

    for step in range(steps):
        ctx.set_progress(step / steps * final, f"step {step} of {steps}")
        time.sleep(seconds / steps)  # the handler's own work between two reports
    ctx.set_progress(final, "last step")
    return steps


# --- flow control (pause, rate limit, concurrency limit, circuit breaker):
# tests/test_flow_control.py -------------------------------------------------------------------


@taskqueue.handler("flow_plain", queue="flow")
def flow_plain(n: int = 0) -> int:
    return n


@taskqueue.handler("flow_marked", queue="flow")
def flow_marked(key: str, seconds: float = 0.0) -> None:
    """Leave a Counter row saying the handler has started, then work for ``seconds``."""
    import time

    from tests.testapp.models import Counter

    Counter.objects.create(key=key)
    time.sleep(seconds)  # the handler's own work, not test synchronisation


@taskqueue.handler("flow_rated", queue="flow", rate_limit="10/s")
def flow_rated(n: int) -> int:
    return n


@taskqueue.handler("flow_limited", queue="flow", concurrency_limit=2)
def flow_limited(n: int, seconds: float = 0.2) -> None:
    """Count the handlers of this type running at once (Counter 'flow:running'), keeping the
    highest count seen in Counter 'flow:most'."""
    import time

    from django.db import transaction
    from django.db.models import F

    from tests.testapp.models import Counter

    with transaction.atomic():
        Counter.objects.filter(key="flow:running").update(value=F("value") + 1)
        now_running = Counter.objects.get(key="flow:running").value
        Counter.objects.filter(key="flow:most", value__lt=now_running).update(value=now_running)
    time.sleep(seconds)  # the handler's own work, so runs overlap when the limit allows
    Counter.objects.filter(key="flow:running").update(value=F("value") - 1)


@taskqueue.handler(
    "flow_breaker",
    queue="flow",
    max_attempts=50,
    retry=taskqueue.Fixed(0),
    circuit_breaker=taskqueue.CircuitBreaker(failures=3, cooldown=1.5),
)
def flow_breaker(n: int) -> int:
    """Fail until a Counter row 'flow:healthy' exists, like a call to a service that is down."""
    from tests.testapp.models import Counter

    if not Counter.objects.filter(key="flow:healthy").exists():
        raise ConnectionError("service unavailable")
    return n


# --- Schedules (recurring tasks; tests/test_schedule*.py, tests/test_admin_schedules.py) ---


@taskqueue.handler("cleanup")
def cleanup() -> None:
    """The task of the documented SCHEDULES example ("nightly-cleanup")."""
    return None


@taskqueue.handler("schedule_tick")
def schedule_tick(label: str = "") -> str:
    return label


# Declared only for the workers of the firing test: every other worker in the suite would
# otherwise sync and fire it.
if os.environ.get("TASKQUEUE_TEST_PERIODIC") == "1":
    taskqueue.periodic("* * * * * *", name="test-every-second", payload={"label": "tick"})(
        schedule_tick
    )


# --- Alerts (tests/test_alerts.py): dead letters of a critical and of an ordinary type ---


class AlertTestError(Exception):
    """What the alert test handlers raise, so mails and webhooks can be told apart."""


@taskqueue.handler("alerts_critical_fail", queue="alerts", max_attempts=1, critical=True)
def alerts_critical_fail(order: int) -> None:
    raise AlertTestError(f"card declined for order {order}")


@taskqueue.handler("alerts_plain_fail", queue="alerts", max_attempts=1)
def alerts_plain_fail(order: int) -> None:
    raise AlertTestError(f"thumbnail failed for order {order}")


# --- Lifecycle events (tests/test_events.py, tests/test_event_stream.py) -------------------
# With TASKQUEUE_TEST_EVENTS_FILE set, every process (worker, handler process) appends each
# event it sends to that file as one JSON line; with TASKQUEUE_TEST_RAISING_RECEIVER=1 a
# receiver that always raises is connected too.


def _write_event_line(sender, event, **kwargs) -> None:
    import json

    line = json.dumps(
        {
            "name": event.name,
            "severity": event.severity,
            "task_id": str(event.task_id) if event.task_id else None,
            "task_type": event.task_type,
            "queue": event.queue,
            "attempt": event.attempt,
            "max_attempts": event.max_attempts,
            "duration": event.duration,
            "message": event.message,
            "error_type": event.error_type,
            "traceback": event.traceback,
            "worker_id": event.worker_id,
            "time": event.time.isoformat(),
            "pid": os.getpid(),
        }
    )
    # One write of a whole line with O_APPEND: lines from several processes never interleave.
    fd = os.open(os.environ["TASKQUEUE_TEST_EVENTS_FILE"], os.O_WRONLY | os.O_APPEND | os.O_CREAT)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _raising_receiver(sender, event, **kwargs) -> None:
    raise RuntimeError(f"receiver failure on {event.name}")


def _connect_test_receivers() -> None:
    from django.dispatch import Signal

    from taskqueue import signals

    for value in vars(signals).values():
        if not isinstance(value, Signal):
            continue
        if os.environ.get("TASKQUEUE_TEST_EVENTS_FILE"):
            value.connect(_write_event_line, dispatch_uid="tests.events_file")
        if os.environ.get("TASKQUEUE_TEST_RAISING_RECEIVER") == "1":
            value.connect(_raising_receiver, dispatch_uid="tests.raising_receiver")


_connect_test_receivers()


@taskqueue.handler("events_ok", queue="events")
def events_ok(n: int = 0) -> int:
    return n


@taskqueue.handler("events_fail", queue="events", max_attempts=2, retry=taskqueue.Fixed(0))
def events_fail(message: str = "events boom") -> None:
    raise KeyError(message)


@taskqueue.handler("events_slow", queue="events", max_attempts=1, timeout=1)
def events_slow(seconds: float = 30) -> None:
    import time

    time.sleep(seconds)  # overruns its timeout on purpose


# --- outcome metrics recorder (tests/test_metrics.py) --------------------------------------


@taskqueue.handler("metrics_sleep", queue="metrics")
def metrics_sleep(seconds: float = 0.0) -> None:
    import time

    time.sleep(seconds)  # a known run time for the run-time histogram


@taskqueue.handler("metrics_fails", queue="metrics", max_attempts=2, retry=taskqueue.Fixed(0))
def metrics_fails() -> None:
    raise ValueError("metrics: always fails")


@taskqueue.handler("metrics_timeout", queue="metrics", timeout=0.5, max_attempts=1)
def metrics_timeout() -> None:
    import time

    time.sleep(30)  # killed at the 0.5 s timeout


# --- outcomes the database cannot store (tests/test_unstorable_outcomes.py) ---------------


def _unstorable_result(kind: str) -> object:
    if kind == "nul":
        return {"x": "a\x00b"}
    if kind == "surrogate":
        return {"x": "\ud800"}
    if kind == "huge_int":
        return {"x": 10**5000}
    if kind == "nul_key":
        return {"a\x00b": 1}
    if kind == "deep":
        value: object = "bottom"
        for _ in range(150):
            value = [value]
        return {"x": value}
    raise ValueError(f"unknown kind {kind!r}")


@taskqueue.handler("unstorable_result", max_attempts=3, retry=taskqueue.Fixed(0))
def unstorable_result(kind: str) -> object:
    return _unstorable_result(kind)


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("this exception cannot be printed")


@taskqueue.handler("unstorable_error", max_attempts=1)
def unstorable_error(kind: str) -> None:
    if kind == "nul":
        raise ValueError("bad \x00 byte")
    if kind == "surrogate":
        raise ValueError("lone \ud800 surrogate")
    if kind == "huge":
        raise ValueError("x" * 50_000_000 + " the end")
    if kind == "long_type":
        raise type("E" * 300, (Exception,), {})("an error type of 300 characters")
    if kind == "unprintable":
        raise _UnprintableError()
    raise ValueError(f"unknown kind {kind!r}")


def _unbounded_delay(kind: str) -> object:
    from datetime import timedelta

    from taskqueue.core.limits import MAX_DELAY

    delays = {
        "inf": float("inf"),
        "nan": float("nan"),
        "1e12": 1e12,
        "huge_int": 10**5000,
        "timedelta": MAX_DELAY + timedelta(seconds=1),
        "text": "soon",
    }
    return delays[kind]


@taskqueue.handler("retry_unbounded", max_attempts=2, retry=taskqueue.Fixed(0))
def retry_unbounded(delay: str) -> None:
    # Named in the payload: JSON cannot carry inf, nan or a 5,000-digit integer.
    raise taskqueue.Retry("try again later", delay=_unbounded_delay(delay))


@taskqueue.handler("refused_by_database")
def refused_by_database(n: int = 0) -> int:
    """Succeeds; a test trigger makes the database refuse its completion."""
    return n


@taskqueue.handler("claim_refused")
def claim_refused() -> None:
    """Never runs: a test trigger makes the database refuse its claim."""


@taskqueue.handler("sleep_then_ledger")
def sleep_then_ledger(n: int, seconds: float) -> None:
    import time

    time.sleep(seconds)  # a handler that is still running when its worker stops
    ledger(n)


# --- application_name per handler slot (tests/test_unserved_and_rescue.py) ----------------


@taskqueue.handler("appname_sleeper", queue="appname", max_attempts=1)
def appname_sleeper(seconds: float) -> str:
    """A long query that must survive another slot's timeout kill; returns its session name."""
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(%s)", [seconds])
        cursor.execute("SELECT current_setting('application_name')")
        return cursor.fetchone()[0]


@taskqueue.handler("appname_hang", queue="appname", timeout=1, max_attempts=1)
def appname_hang() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_sleep(600)")  # stopped at its 1 s timeout


# --- circuit breaker overshoot (tests/test_circuit_overshoot.py) ------------------------------


@taskqueue.handler(
    "overshoot_fail",
    queue="breaker",
    retry=taskqueue.NoRetry(),
    circuit_breaker=taskqueue.CircuitBreaker(failures=3, cooldown=3600),
)
def overshoot_fail(n: int, seconds: float = 0.0) -> None:
    """Fail after ``seconds``, like a call to a service that is down."""
    import time

    time.sleep(seconds)  # the handler's work, not synchronisation
    raise ConnectionError(f"service unavailable ({n})")


# --- fuzzing outcomes through a real worker (tests/test_fuzz_worker.py) ----------------------


def decode_fuzz_value(recipe: Any) -> Any:
    """Rebuild a value from its storable recipe (see tests/test_fuzz_worker.py ``encode``),
    so a handler can return or raise what no payload could carry (NUL, surrogates, ...)."""
    kind = recipe[0]
    if kind == "none":
        return None
    if kind == "bool":
        return recipe[1]
    if kind == "int":
        return int(recipe[1], 16)
    if kind == "float":
        return float.fromhex(recipe[1])
    if kind == "str":
        return bytes.fromhex(recipe[1]).decode("utf-8", "surrogatepass")
    if kind == "list":
        return [decode_fuzz_value(item) for item in recipe[1]]
    if kind == "dict":
        return {decode_fuzz_value(key): decode_fuzz_value(item) for key, item in recipe[1]}
    if kind == "deep":
        value = decode_fuzz_value(recipe[2])
        for _ in range(recipe[1]):
            value = [value]
        return value
    raise ValueError(f"unknown recipe {kind!r}")


@taskqueue.handler("fuzz_outcome", queue="fuzz", max_attempts=2, retry=taskqueue.Fixed(0))
def fuzz_outcome(mode: str = "return", recipe: Any = None, **extra: Any) -> Any:
    """Return, raise or retry with a value rebuilt from ``recipe``; ``extra`` is fuzzed
    payload that only has to arrive."""
    value = decode_fuzz_value(recipe) if recipe is not None else None
    if mode == "return":
        return value
    if mode == "raise":
        raise RuntimeError(value)
    if mode == "permanent":
        raise taskqueue.PermanentError(value)
    if mode == "retry":
        raise taskqueue.Retry("fuzzed retry", delay=value)
    raise ValueError(f"unknown mode {mode!r}")
