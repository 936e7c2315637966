"""Work on queues no worker serves: the W003 check and the worker's start-up warning."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.core.checks import WARNING, run_checks
from django.test import override_settings

from taskqueue.checks import check_queues_served
from taskqueue.checks.queues import unserved_queues_line
from taskqueue.core.registry import build_spec, registry
from taskqueue.schedules import declare_builtin
from taskqueue.schedules.declarations import declarations

NOT_SERVED = "taskqueue.W003"


def send_email() -> None: ...


def send_receipt() -> None: ...


def nightly_report() -> None: ...


@pytest.fixture
def handlers() -> Iterator[None]:
    """Only these handlers and no declared schedules (the test app's are set aside)."""
    specs = [
        build_spec("send_email", send_email, queue="emails"),
        build_spec("send_receipt", send_receipt, queue="emails"),
        build_spec("nightly_report", nightly_report),
    ]
    with registry.override(*specs, keep_existing=False), declarations.override():
        yield


def queue_warnings(**taskqueue: Any) -> list[Any]:
    with override_settings(TASKQUEUE=taskqueue):
        return check_queues_served()


def test_a_handler_queue_missing_from_queues_is_w003_naming_handlers_and_fix(
    handlers: None,
) -> None:
    [warning] = queue_warnings(QUEUES=["default"])
    assert (warning.id, warning.level) == (NOT_SERVED, WARNING)
    assert warning.msg == (
        "Handlers send_email, send_receipt of queue 'emails': TASKQUEUE['QUEUES'] (default) "
        "does not list that queue, so workers started without --queues leave its tasks pending."
    )
    assert "Add 'emails' to TASKQUEUE['QUEUES']" in warning.hint
    assert "--queues default,emails" in warning.hint
    assert "SILENCED_SYSTEM_CHECKS = ['taskqueue.W003']" in warning.hint


def test_the_default_queues_setting_applies_when_unset(handlers: None) -> None:
    [warning] = queue_warnings()
    assert "'emails'" in warning.msg


def test_served_queues_give_no_warning(handlers: None) -> None:
    assert queue_warnings(QUEUES=["default", "emails"]) == []


def test_each_unserved_queue_is_one_warning(handlers: None) -> None:
    warnings = queue_warnings(QUEUES=["other"])
    assert [w.msg.split(" of queue ")[1].split(":")[0] for w in warnings] == [
        "'default'",
        "'emails'",
    ]
    assert warnings[0].msg.startswith("Handler nightly_report of queue 'default'")


@pytest.mark.parametrize("queues", [[], "emails", ["bad name"], None])
def test_invalid_queues_give_the_settings_error_only(handlers: None, queues: Any) -> None:
    assert queue_warnings(QUEUES=queues) == []


def test_a_schedule_on_an_unserved_queue_is_w003(handlers: None) -> None:
    declare_builtin("weekly-report", "nightly_report", "0 6 * * 1", queue="reports")
    schedules = {"hourly": {"task": "nightly_report", "cron": "0 * * * *", "queue": "billing"}}
    warnings = queue_warnings(QUEUES=["default", "emails"], SCHEDULES=schedules)
    assert [w.id for w in warnings] == [NOT_SERVED, NOT_SERVED]
    assert warnings[0].msg.startswith("Schedule 'hourly' enqueues on queue 'billing'")
    assert warnings[1].msg.startswith("Schedule 'weekly-report' enqueues on queue 'reports'")
    assert "--queues default,emails,billing" in warnings[0].hint


def test_a_schedule_on_its_handlers_queue_adds_nothing(handlers: None) -> None:
    schedules = {"mail": {"task": "send_email", "cron": "0 * * * *"}}
    assert len(queue_warnings(QUEUES=["default"], SCHEDULES=schedules)) == 1


def test_w003_is_registered_with_django(handlers: None) -> None:
    with override_settings(TASKQUEUE={"QUEUES": ["default"]}):
        assert [m.id for m in run_checks() if m.id == NOT_SERVED] == [NOT_SERVED]


def test_the_worker_line_names_queues_handlers_and_its_own_queues(handlers: None) -> None:
    assert unserved_queues_line(["default", "emails"]) is None
    assert unserved_queues_line(["default"]) == (
        "handlers of queue 'emails' (send_email, send_receipt) are not served by this worker "
        "(queues: default); their tasks wait for a worker started with --queues naming them"
    )
    assert unserved_queues_line(["x", "y"]).startswith(
        "handlers of queues 'default' (nightly_report) and 'emails' (send_email, send_receipt) "
        "are not served by this worker (queues: x, y)"
    )


def test_a_long_list_of_handlers_is_cut(handlers: None) -> None:
    specs = [build_spec(f"mail_{n:02}", send_email, queue="emails") for n in range(12)]
    with registry.override(*specs, keep_existing=False):
        line = unserved_queues_line(["default"])
    assert "(mail_00, mail_01, mail_02, mail_03, mail_04, mail_05, mail_06, mail_07, " in line
    assert "mail_09 and 2 more)" in line


# --- the worker, as a real subprocess ---------------------------------------------------------


def test_worker_warns_once_at_start_about_queues_it_does_not_serve(
    run_worker: Callable[..., Any],
) -> None:
    unserved = sorted({spec.queue for spec in registry.specs()} - {"default"})
    assert "slow" in unserved  # the test app's handlers (sleepy, ...) are on other queues
    result = run_worker("--burst", "--queues", "default")
    lines = [line for line in result.stderr.splitlines() if "are not served by this worker" in line]
    # The test settings log "taskqueue" at WARNING and up: the line is at least a warning.
    assert len(lines) == 1, result.stderr
    assert "(queues: default)" in lines[0]
    for queue in unserved:
        assert f"'{queue}' (" in lines[0]
    assert "sleepy" in lines[0]
    # The settings-only W003 would contradict a worker's --queues: the worker leaves it out.
    assert "taskqueue.W003" not in result.stderr


def test_worker_serving_every_handler_queue_says_nothing(
    run_worker: Callable[..., Any],
) -> None:
    queues = ",".join(sorted({spec.queue for spec in registry.specs()}))
    result = run_worker("--burst", "--queues", queues)
    assert "are not served by this worker" not in result.stderr
    assert "taskqueue.W003" not in result.stderr
