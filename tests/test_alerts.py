"""Alerts: mail to ADMINS for dead letters of critical types, the chat webhook, throttling
across processes, the summary after the window, and settings checks."""

from __future__ import annotations

import email
import email.policy
import json
import logging
import threading
import uuid
from collections.abc import Iterator
from datetime import timedelta
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from django.core import mail
from django.db import connection
from django.test import override_settings

import taskqueue
from taskqueue import signals
from taskqueue.checks import check_settings
from taskqueue.events import Severity, TaskEvent, emit
from taskqueue.models import AlertState, DeadLetter, TaskType
from taskqueue.monitoring import alerts
from taskqueue.monitoring.alerts import Alert, alert_sender
from tests.conftest import finish_worker, wait_for

ADMINS = [("Ops", "ops@example.com")]
THROTTLE = 300


class Webhook:
    """A local chat webhook: records each JSON body, answers with ``status``."""

    def __init__(self, status: int = 200) -> None:
        self.status = status
        self.bodies: list[dict[str, Any]] = []
        webhook = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers["Content-Length"])
                raw = self.rfile.read(length)
                webhook.bodies.append(
                    {"content_type": self.headers["Content-Type"], "json": json.loads(raw)}
                )
                self.send_response(webhook.status)
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T000/secret"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def texts(self) -> list[str]:
        return [body["json"]["text"] for body in self.bodies]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    server = Webhook()
    yield server
    server.close()


@pytest.fixture
def sender(transactional_db: None) -> Iterator[alerts.AlertSender]:
    """The in-process sender, stopped (and its connection closed) after the test."""
    yield alert_sender
    alert_sender.stop()


def alerts_settings(**options: Any) -> dict[str, Any]:
    from django.conf import settings

    return {**settings.TASKQUEUE, "ALERTS": {"THROTTLE": THROTTLE, **options}}


def dead_letter(
    task_type: str = "alerts_critical_fail",
    error_type: str = "AlertTestError",
    message: str = "card declined for order 42",
) -> uuid.UUID:
    task_id = uuid.uuid4()
    emit(
        signals.task_dead_lettered,
        name="dead_lettered",
        severity=Severity.ERROR,
        task_id=task_id,
        task_type=task_type,
        queue="alerts",
        attempt=3,
        max_attempts=3,
        error_type=error_type,
        message=message,
        traceback="Traceback (most recent call last):\n  ...\nAlertTestError: boom",
        worker_id="host:1:abc",
    )
    return task_id


def settle() -> None:
    wait_for(alert_sender.idle, timeout=30, message="the alert sender to go idle")


def move_window_back(key: str, seconds: float = THROTTLE + 1) -> None:
    """Pretend the last send was ``seconds`` earlier, instead of waiting for the window."""
    state = AlertState.objects.get(key=key)
    AlertState.objects.filter(pk=state.pk).update(
        last_sent_at=state.last_sent_at - timedelta(seconds=seconds)
    )


def read_mail_files(directory: Path) -> list[EmailMessage]:
    """Messages written by the file mail backend (one file per connection, messages
    separated by a line of 79 dashes)."""
    messages = []
    for path in sorted(directory.iterdir()):
        for chunk in path.read_text().split("-" * 79):
            if chunk.strip():
                messages.append(email.message_from_string(chunk, policy=email.policy.default))
    return messages


# --- through a real worker ---------------------------------------------------------------------


def test_real_worker_mails_critical_dead_letter_and_posts_to_the_webhook(
    start_worker: Any, tmp_path: Path, webhook: Webhook
) -> None:
    critical = taskqueue.enqueue("alerts_critical_fail", {"order": 42})
    plain = taskqueue.enqueue("alerts_plain_fail", {"order": 7})
    mail_dir = tmp_path / "mail"
    mail_dir.mkdir()
    worker = start_worker(
        "--burst",
        "--queues",
        "alerts",
        extra_env={
            "DJANGO_SETTINGS_MODULE": "tests.alerts_settings",
            "TASKQUEUE_TEST_MAIL_DIR": str(mail_dir),
            "TASKQUEUE_TEST_WEBHOOK_URL": webhook.url,
        },
    )
    code, _, output = finish_worker(worker, timeout=60)
    assert code == 0, output
    assert DeadLetter.objects.filter(task_id__in=[critical.id, plain.id]).count() == 2

    messages = read_mail_files(mail_dir)
    assert len(messages) == 1, output
    message = messages[0]
    assert message["To"] == "ops@example.com"
    assert message["Subject"].endswith(
        "taskqueue: critical task alerts_critical_fail dead-lettered (AlertTestError)"
    )
    body = message.get_content()
    assert f"Task:      {critical.id}" in body
    assert "Queue:     alerts" in body
    assert "Attempts:  1 of 1" in body
    assert "AlertTestError: card declined for order 42" in body
    assert f"Admin:     /admin/taskqueue/task/{critical.id}/change/" in body
    assert "Traceback (most recent call last)" in body
    assert '"order"' not in body  # no payload in the mail
    assert "alerts_plain_fail" not in body
    # Left out because it is not critical, not because the throttle held it back.
    assert AlertState.objects.get(key="email:dead_lettered").suppressed == 0

    # The webhook takes every dead letter: the first is posted, the second held back.
    assert len(webhook.bodies) == 1, output
    assert webhook.bodies[0]["content_type"] == "application/json"
    text = webhook.texts()[0]
    assert text.startswith("[taskqueue] task ")
    assert "dead-lettered after attempt 1/1: tests.testapp.tasks.AlertTestError:" in text
    assert AlertState.objects.get(key="webhook:dead_lettered").suppressed == 1


# --- email ------------------------------------------------------------------------------------


def test_non_critical_dead_letter_sends_no_mail(sender: Any, settings: Any) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    dead_letter(task_type="alerts_plain_fail")
    settle()
    assert mail.outbox == []
    assert not AlertState.objects.exists()


def test_without_admins_or_webhook_nothing_is_queued(settings: Any) -> None:
    settings.ADMINS = []
    settings.TASKQUEUE = alerts_settings()
    event = TaskEvent(name="dead_lettered", task_type="alerts_critical_fail", queue="alerts")
    assert alerts.alerts_for(event) == []
    settings.ADMINS = ADMINS
    assert [alert.channel for alert in alerts.alerts_for(event)] == ["email"]
    settings.TASKQUEUE = alerts_settings(EMAIL=False)
    assert alerts.alerts_for(event) == []


def test_type_unknown_to_this_process_is_critical_by_its_task_type_row(
    sender: Any, settings: Any
) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    TaskType.objects.create(name="remote_critical", critical=True)
    TaskType.objects.create(name="remote_plain", critical=False)
    dead_letter(task_type="remote_plain")
    dead_letter(task_type="remote_critical")
    settle()
    assert len(mail.outbox) == 1
    assert "remote_critical" in mail.outbox[0].subject


def test_burst_of_200_sends_one_mail_then_one_summary(sender: Any, settings: Any) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    first = dead_letter()
    for n in range(149):
        dead_letter(message=f"card declined for order {n}")
    for n in range(50):
        dead_letter(error_type="TimeoutError", message=f"gateway slow for order {n}")
    settle()
    assert len(mail.outbox) == 1
    assert str(first) in mail.outbox[0].body
    state = AlertState.objects.get(key="email:dead_lettered")
    assert state.suppressed == 199
    assert alerts.flush() == 0  # the window is not over yet

    alert_sender.stop()  # only this test's flush, not the sender's periodic one
    move_window_back("email:dead_lettered")
    assert alerts.flush() == 1
    assert len(mail.outbox) == 2
    summary = mail.outbox[1]
    assert "199 more critical dead letters since" in summary.subject
    assert "149 x AlertTestError in alerts_critical_fail" in summary.body
    assert "50 x TimeoutError in alerts_critical_fail" in summary.body
    assert AlertState.objects.get(key="email:dead_lettered").suppressed == 0
    assert alerts.flush() == 0  # sent once, by whoever won

    # The next dead letter after the summary's window is sent on its own, with no summary.
    move_window_back("email:dead_lettered")
    latest = dead_letter()
    settle()
    assert len(mail.outbox) == 3
    assert str(latest) in mail.outbox[2].body
    assert "more critical" not in mail.outbox[2].body


def test_held_back_alerts_ride_along_with_the_next_send(sender: Any, settings: Any) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    dead_letter()
    settle()
    for _ in range(3):
        dead_letter(error_type="KeyError", message="'sku'")
    settle()
    move_window_back("email:dead_lettered")
    dead_letter()
    settle()
    assert len(mail.outbox) == 2
    body = mail.outbox[1].body
    assert "3 more critical dead letters since" in body
    assert "3 x KeyError in alerts_critical_fail (e.g. task " in body


def test_failing_mail_backend_is_logged_and_harmless(
    sender: Any, settings: Any, caplog: pytest.LogCaptureFixture
) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    settings.EMAIL_BACKEND = "tests.no_such_module.Backend"
    with caplog.at_level(logging.WARNING, logger="taskqueue.alerts"):
        dead_letter()  # does not raise
        settle()
    assert "taskqueue email alert could not be sent" in caplog.text
    # The sender lives on: with a working backend the next window's alert goes out.
    settings.EMAIL_BACKEND = "django.core.mail.backends.locmem.EmailBackend"
    move_window_back("email:dead_lettered")
    dead_letter()
    settle()
    assert len(mail.outbox) == 1


# --- webhook ----------------------------------------------------------------------------------


def test_webhook_posts_slack_json_and_a_summary(
    sender: Any, settings: Any, webhook: Webhook
) -> None:
    settings.TASKQUEUE = alerts_settings(WEBHOOK_URL=webhook.url)
    for n in range(4):
        emit(
            signals.circuit_opened,
            name="circuit_opened",
            severity=Severity.WARNING,
            task_type="charge_order",
            message=f"circuit of charge_order opened after {n + 5} failures in a row",
        )
    dead_letter(task_type="alerts_plain_fail")  # non-critical types too, by default
    emit(
        signals.schedule_late,
        name="schedule_late",
        severity=Severity.WARNING,
        task_type="cleanup",
        message="schedule 'nightly-cleanup' is late",
        extra={"schedule": "nightly-cleanup"},
    )
    emit(signals.task_succeeded, name="succeeded", task_type="alerts_plain_fail")  # not alerted
    settle()
    assert len(webhook.texts()) == 3
    assert (
        webhook.texts()[0] == "[taskqueue] circuit of charge_order opened after 5 failures in a row"
    )
    assert webhook.texts()[2] == "[taskqueue] schedule 'nightly-cleanup' is late"
    assert "alerts_plain_fail, queue alerts) dead-lettered after attempt 3/3" in webhook.texts()[1]
    assert mail.outbox == []  # no ADMINS

    alert_sender.stop()
    move_window_back("webhook:circuit_opened")
    assert alerts.flush() == 1
    assert webhook.texts()[3].startswith("[taskqueue] 3 more circuit openings since ")
    assert webhook.texts()[3].endswith(" UTC: 3 x circuit of charge_order")


def test_webhook_critical_only_skips_ordinary_dead_letters(
    sender: Any, settings: Any, webhook: Webhook
) -> None:
    settings.TASKQUEUE = alerts_settings(WEBHOOK_URL=webhook.url, WEBHOOK_CRITICAL_ONLY=True)
    dead_letter(task_type="alerts_plain_fail")
    critical = dead_letter()
    settle()
    assert len(webhook.bodies) == 1
    assert str(critical) in webhook.texts()[0]


@pytest.mark.parametrize("failure", ["status 500", "unreachable"])
def test_failing_webhook_is_logged_and_harmless(
    sender: Any, settings: Any, webhook: Webhook, caplog: pytest.LogCaptureFixture, failure: str
) -> None:
    url = webhook.url
    if failure == "status 500":
        webhook.status = 500
    else:
        webhook.close()  # nothing listens on its port any more
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings(WEBHOOK_URL=url, WEBHOOK_TIMEOUT=2)
    with caplog.at_level(logging.WARNING, logger="taskqueue.alerts"):
        dead_letter()  # does not raise
        settle()
    expected = "answered 500" if failure == "status 500" else "unreachable"
    assert (
        f"taskqueue webhook alert could not be sent: RuntimeError: webhook at 127.0.0.1 {expected}"
        in caplog.text
    )
    assert "secret" not in caplog.text  # the URL's path (its secret) is never logged
    assert len(mail.outbox) == 1  # the other channel is unaffected


# --- throttling across processes ----------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_racing_processes_never_both_send_within_a_window(settings: Any) -> None:
    settings.ADMINS = ADMINS
    settings.TASKQUEUE = alerts_settings()
    racers = 6
    barrier = threading.Barrier(racers)
    decided: list[Alert | None] = []
    flushed: list[int] = []
    errors: list[BaseException] = []

    def race(index: int, what: str) -> None:
        try:
            barrier.wait(timeout=30)
            if what == "record":
                alert = Alert(channel="email", event="dead_lettered", task_id=str(index))
                decided.append(alerts.record("email:dead_lettered", [alert])[0])
            else:
                flushed.append(alerts.flush())
        except BaseException as exc:
            errors.append(exc)
        finally:
            connection.close()

    for what in ("record", "flush"):
        threads = [threading.Thread(target=race, args=(i, what)) for i in range(racers)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not any(thread.is_alive() for thread in threads)
        assert errors == []
        if what == "record":
            assert len([alert for alert in decided if alert is not None]) == 1
            assert AlertState.objects.get(key="email:dead_lettered").suppressed == racers - 1
            move_window_back("email:dead_lettered")
    assert sum(flushed) == 1
    assert len(mail.outbox) == 1  # the summary; record() decides, it does not deliver
    assert f"{racers - 1} more critical dead letters" in mail.outbox[0].subject


# --- settings ---------------------------------------------------------------------------------


def test_default_alert_settings_are_clean() -> None:
    with override_settings(TASKQUEUE={"ALERTS": {}}):
        assert check_settings() == []
    with override_settings(
        TASKQUEUE={"ALERTS": {"WEBHOOK_URL": "https://hooks.example.com/x", "THROTTLE": 60.5}}
    ):
        assert check_settings() == []


@pytest.mark.parametrize(
    ("key", "value", "id_", "text"),
    [
        ("EMAIL", "yes", "E002", "TASKQUEUE['ALERTS']['EMAIL'] must be True or False"),
        ("WEBHOOK_CRITICAL_ONLY", 1, "E002", "['WEBHOOK_CRITICAL_ONLY'] must be True or False"),
        ("WEBHOOK_URL", "hooks.example.com/x", "E010", "['WEBHOOK_URL'] must be an http://"),
        ("WEBHOOK_URL", "ftp://example.com/", "E010", "['WEBHOOK_URL'] must be an http://"),
        ("WEBHOOK_EVENTS", ["dead_lettered", "exploded"], "E007", "['WEBHOOK_EVENTS'] must be"),
        ("WEBHOOK_EVENTS", "dead_lettered", "E002", "['WEBHOOK_EVENTS'] must be a list"),
        ("THROTTLE", 0, "E006", "['THROTTLE'] must be a positive number of seconds, got 0"),
        ("WEBHOOK_TIMEOUT", "5", "E002", "['WEBHOOK_TIMEOUT'] must be a positive number"),
    ],
)
def test_bad_alert_setting_is_reported_naming_it(key: str, value: Any, id_: str, text: str) -> None:
    # Ids by kind of problem (docs/checks.md): E002 type, E006 range, E007 choice, E010 URL.
    with override_settings(TASKQUEUE={"ALERTS": {key: value}}):
        messages = check_settings()
    assert [message.id for message in messages] == [f"taskqueue.{id_}"]
    assert text in messages[0].msg


def test_unknown_alert_key_is_e001() -> None:
    with override_settings(TASKQUEUE={"ALERTS": {"SLACK": "https://x"}}):
        messages = check_settings()
    assert [message.id for message in messages] == ["taskqueue.E001"]
    assert "'SLACK'" in messages[0].msg


def test_alert_settings_merge_with_defaults(settings: Any) -> None:
    settings.TASKQUEUE = {"ALERTS": {"THROTTLE": 60}}
    from taskqueue.conf import settings as tq_settings

    assert tq_settings.ALERTS["THROTTLE"] == 60
    assert tq_settings.ALERTS["WEBHOOK_EVENTS"] == [
        "dead_lettered",
        "circuit_opened",
        "schedule_late",
    ]
