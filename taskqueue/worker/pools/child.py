"""The main function of a handler child process: set Django up, then run tasks one by one.

The worker sends a task, the child runs it and answers with its outcome. The child ignores
SIGINT and SIGTERM (its worker decides when it stops) and dies with its worker.
"""

from __future__ import annotations

import ctypes
import os
import random
import signal
from multiprocessing.connection import Connection
from typing import Any

PR_SET_PDEATHSIG = 1


def child_main(
    conn: Connection,
    settings_module: str,
    worker_id: str,
    slot: int,
    parent_pid: int,
    max_memory: float | None = None,
) -> None:
    _die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    os.environ["DJANGO_SETTINGS_MODULE"] = settings_module
    import django

    django.setup()
    # Imported once Django is set up: these load models and the project's settings.
    from django.db import connections

    from taskqueue.monitoring import stream
    from taskqueue.worker.executor import AsyncRunner
    from taskqueue.worker.memory import over_ceiling, resident_mib
    from taskqueue.worker.pools import wire
    from taskqueue.worker.pools.base import run_task
    from taskqueue.worker.pools.sessions import application_name

    for alias in connections:
        if connections[alias].vendor == "postgresql":
            options = connections[alias].settings_dict.setdefault("OPTIONS", {})
            options["application_name"] = application_name(worker_id, slot)
    async_runner = AsyncRunner()
    rng = random.Random()
    stream.in_handler_process()
    conn.send_bytes(wire.encode({"kind": "ready", "pid": os.getpid()}))
    while True:
        try:
            message = wire.decode(conn.recv_bytes())
        except EOFError:
            break  # the worker is gone
        if message["kind"] != "task":
            break
        task = wire.task_from_message(message)
        finished = run_task(task, worker_id, async_runner, rng)
        stream.flush_after_task()
        message = wire.outcome_message(finished.outcome)
        if over_ceiling(max_memory):
            # Said with the outcome, so the worker gives this process no further task and
            # starts a fresh one in its slot.
            message["recycle"] = f"holds {resident_mib():.0f} MiB, over MAX_MEMORY {max_memory:g}"
        conn.send_bytes(_encoded_outcome(message))
        if "recycle" in message:
            break
    async_runner.close()
    connections.close_all()


def _encoded_outcome(message: dict[str, Any]) -> bytes:
    """Encode an outcome message; one that cannot be encoded becomes a dead-letter outcome.

    The executor already refuses results the database cannot store, so this only guards
    against what slips past it: crashing this process would cost the task an attempt as
    ``WorkerCrashed`` and hide the reason.
    """
    # Imported here, like in child_main: only once Django is set up.
    from taskqueue.core.outcome import Outcome
    from taskqueue.worker import executor
    from taskqueue.worker.pools import wire

    try:
        return wire.encode(message)
    except (ValueError, TypeError, RecursionError) as exc:
        why = executor.exception_message(exc)
        replacement = Outcome.dead(
            message["duration"],
            "InvalidResult",
            f"the outcome could not be sent to the worker: {why}",
        )
        fallback = wire.outcome_message(replacement)
        if "recycle" in message:
            fallback["recycle"] = message["recycle"]
        return wire.encode(fallback)


def _die_with_parent(parent_pid: int) -> None:
    # Linux: SIGKILL this child when the worker dies, even by kill -9, so no handler
    # outlives its worker and runs on unsupervised.
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent_pid:
        os._exit(0)  # the worker died before we could ask to die with it
