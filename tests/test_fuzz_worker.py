"""Fuzzing: whatever goes into a task or comes out of a handler, the worker survives.

Hypothesis generates payloads, metadata, results, error messages and retry delays, including
what no database can store (NUL characters, lone surrogates, integers of thousands of
digits, NaN, nesting hundreds deep, delays of 1e300 s). Enqueue either stores a task or
refuses it with taskqueue's own exception; a real worker then runs every stored task, and
the test checks that each ends in a terminal state (or waits for a bounded retry), that the
worker is still alive, and that every row reads back.

``TASKQUEUE_FUZZ_EXAMPLES`` sets the number of examples per pool (default 12); examples are
derandomized so CI sees the same ones every run (set ``TASKQUEUE_FUZZ_RANDOM=1`` to explore).
"""

from __future__ import annotations

import math
import os
import subprocess
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import taskqueue
from taskqueue.core.limits import MAX_DELAY
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption, UnknownTaskType
from taskqueue.models import DeadLetter, Task, TaskStatus
from taskqueue.store.sql import db_now
from tests.conftest import wait_for, worker_stderr_on_failure

pytestmark = pytest.mark.django_db(transaction=True)

EXAMPLES = int(os.environ.get("TASKQUEUE_FUZZ_EXAMPLES", "12"))
FINISHED = (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.CANCELLED)
REFUSALS = (InvalidPayload, InvalidTaskOption, UnknownTaskType)

# Text with the characters databases refuse, and plenty of ordinary ones.
texts = st.text(
    alphabet=st.one_of(
        st.sampled_from(["\x00", "\ud800", "\udfff", "é", "€", "\n", "<", ">", "@"]),
        st.characters(codec="utf-8"),
        st.characters(),  # lone surrogates included
    ),
    max_size=30,
)
numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([2**63, -(2**63) - 1, 2**63 - 1]),
    # Built by map: Hypothesis would otherwise print them, and Python refuses to print
    # integers of over 4,300 digits.
    st.integers(min_value=300, max_value=6000).map(lambda digits: -(10**digits)),
    st.floats(allow_nan=True, allow_infinity=True),
)
leaves = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.recursive(
    leaves,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(texts, children, max_size=4),
    ),
    max_leaves=12,
)
delays = st.one_of(
    st.floats(min_value=0, max_value=0.2),
    st.sampled_from([math.inf, -math.inf, math.nan, 1e12, 1e300, -1.0]),
    st.integers(min_value=10, max_value=6000).map(lambda digits: 10**digits),
    st.floats(),
)


def encode(value: Any, depth: int = 0) -> Any:
    """A storable recipe for ``value`` (``decode_fuzz_value`` in tests/testapp/tasks.py)."""
    if value is None:
        return ["none"]
    if isinstance(value, bool):
        return ["bool", value]
    if isinstance(value, int):
        return ["int", hex(value)]
    if isinstance(value, float):
        return ["float", value.hex()]
    if isinstance(value, str):
        return ["str", value.encode("utf-8", "surrogatepass").hex()]
    if isinstance(value, list):
        return ["list", [encode(item) for item in value]]
    return ["dict", [[encode(key), encode(item)] for key, item in value.items()]]


outcomes = st.one_of(
    st.builds(lambda v: {"mode": "return", "recipe": encode(v)}, values),
    st.builds(
        lambda depth, v: {"mode": "return", "recipe": ["deep", depth, encode(v)]},
        st.integers(min_value=90, max_value=400),
        leaves,
    ),
    st.builds(lambda t: {"mode": "raise", "recipe": encode(t)}, texts),
    st.builds(lambda t: {"mode": "permanent", "recipe": encode(t)}, texts),
    st.builds(lambda d: {"mode": "retry", "recipe": encode(d)}, delays),
)
task_specs = st.fixed_dictionaries(
    {
        "outcome": outcomes,
        "extra": st.dictionaries(texts, values, max_size=3),
        "metadata": st.one_of(st.none(), st.dictionaries(texts, values, max_size=3)),
        "delay": st.one_of(st.none(), st.sampled_from([0, 0.05]), delays),
    }
)


def enqueue_spec(spec: dict[str, Any]) -> Task | None:
    """Enqueue one fuzzed task; None when enqueue refused it with a taskqueue exception."""
    payload = {**spec["extra"], **spec["outcome"]}
    options: dict[str, Any] = {"metadata": spec["metadata"]}
    delay = spec["delay"]
    if delay is not None:
        # A valid long delay would leave the task scheduled for the test's whole life.
        options["delay"] = delay if not (0.05 < delay <= 1e9) else 0
    try:
        return taskqueue.enqueue("fuzz_outcome", payload, **options)
    except REFUSALS:
        return None


def settled(task: Task, now: Any) -> bool:
    """Finished, or waiting for a retry that a bounded delay will bring back."""
    if task.status in FINISHED:
        return True
    return task.status == TaskStatus.RETRYING and task.run_at <= now + MAX_DELAY


def check_example(worker: subprocess.Popen[str], specs: list[dict[str, Any]]) -> None:
    stored = [task for task in map(enqueue_spec, specs) if task is not None]
    ids = [task.id for task in stored]

    def all_settled() -> bool:
        now = db_now("default")
        # A retry due within a second will run again: wait for it.
        return all(
            settled(task, now)
            and not (
                task.status == TaskStatus.RETRYING and task.run_at <= now + timedelta(seconds=1)
            )
            for task in Task.objects.filter(id__in=ids)
        )

    wait_for(all_settled, timeout=60, message="every fuzzed task to settle")
    assert worker.poll() is None, "the worker died"
    rows = list(Task.objects.filter(id__in=ids))  # every row reads back
    assert len(rows) == len(ids)
    for task in rows:
        if task.status == TaskStatus.FAILED:
            assert task.last_error
            assert DeadLetter.objects.filter(task_id=task.id).exists()
    list(DeadLetter.objects.all())


@pytest.mark.parametrize("pool", ["processes", "threads"])
def test_fuzzed_tasks_all_settle_and_the_worker_lives(start_worker: Any, pool: str) -> None:
    worker = start_worker("--queues", "fuzz", "--concurrency", "2", "--pool", pool)

    @settings(
        max_examples=EXAMPLES,
        deadline=None,
        derandomize=os.environ.get("TASKQUEUE_FUZZ_RANDOM") != "1",
        database=None,
        suppress_health_check=[
            HealthCheck.function_scoped_fixture,
            HealthCheck.too_slow,
            HealthCheck.data_too_large,
        ],
    )
    @given(st.lists(task_specs, min_size=1, max_size=6))
    def run(specs: list[dict[str, Any]]) -> None:
        check_example(worker, specs)

    with worker_stderr_on_failure(worker):
        run()
        assert worker.poll() is None
        # The examples reached the worker and ended both ways (not all refused at enqueue).
        statuses = set(Task.objects.values_list("status", flat=True))
        assert {TaskStatus.COMPLETED, TaskStatus.FAILED} <= statuses, statuses
    worker.terminate()
    assert worker.wait(timeout=30) == 0
