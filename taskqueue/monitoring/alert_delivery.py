"""How an alert or a summary goes out: a mail to ``ADMINS`` or a post to the chat webhook.

The texts leave payloads out (they may hold personal data) and escape what a chat service
would read as markup or mentions.
"""

from __future__ import annotations

import json
import logging
import re
import urllib.error
import urllib.request
from urllib.parse import urlsplit

from django.core.mail import mail_admins
from django.urls import NoReverseMatch, reverse

from taskqueue.monitoring.alert_rules import (
    EMAIL,
    TASK_EVENTS,
    WEBHOOK,
    Alert,
    Summary,
    clock_text,
    config,
    one_line,
    webhook_url,
)

logger = logging.getLogger("taskqueue.alerts")

TRACEBACK_CHARS = 4000


def admin_path(task_id: str) -> str:
    """The task's admin page as a path (no host: the worker does not know the site's)."""
    if not task_id:
        return ""
    try:
        return reverse("admin:taskqueue_task_change", args=[task_id])
    except NoReverseMatch:
        return ""


def email_content(alert: Alert | None, summary: Summary | None) -> tuple[str, str]:
    """Subject and body of a mail to ADMINS. The payload is left out on purpose: it may hold
    personal data, and the admin path leads to it."""
    if alert is None:
        assert summary is not None
        subject = one_line(f"taskqueue: {summary.headline(EMAIL)}", 200)
        return subject, summary_body(summary, EMAIL)
    error = f"{alert.error_type}: {alert.message}" if alert.error_type else alert.message
    # The class name only: the module path is in the body, and subjects are short.
    short_error = alert.error_type.rpartition(".")[2] or "error"
    subject = one_line(
        f"taskqueue: critical task {alert.task_type} dead-lettered ({short_error})", 200
    )
    attempts = f"{alert.attempt} of {alert.max_attempts}" if alert.attempt else "?"
    lines = [
        f"A task of the critical type {alert.task_type!r} was dead-lettered.",
        "",
        f"Task:      {alert.task_id}",
        f"Type:      {alert.task_type}",
        f"Queue:     {alert.queue}",
        f"Attempts:  {attempts}",
        f"Error:     {one_line(error, 2000)}",
        f"Worker:    {alert.worker_id}",
        f"Time:      {clock_text(alert.time)}",
    ]
    path = admin_path(alert.task_id)
    if path:
        lines.append(f"Admin:     {path}")
    lines += ["", "The payload is not included; see the task in the admin."]
    if summary is not None:
        lines += ["", summary_body(summary, EMAIL)]
    if alert.traceback:
        lines += ["", alert.traceback[-TRACEBACK_CHARS:]]
    return subject, "\n".join(lines)


def summary_body(summary: Summary, channel: str) -> str:
    lines = [f"{summary.headline(channel)}:"]
    for group in summary.groups:
        example = [f"e.g. task {group['task_id']}"] if group.get("task_id") else []
        example += [group["message"]] if group.get("message") else []
        suffix = f" ({': '.join(example)})" if example else ""
        lines.append(f"  {group['count']} x {group['label']}{suffix}")
    grouped = sum(group["count"] for group in summary.groups)
    if grouped < summary.count:
        lines.append(f"  {summary.count - grouped} other(s)")
    return "\n".join(lines)


# "@" before a word: Slack needs <!channel> to notify, but Mattermost and Discord, which take
# the same JSON, notify on a bare @channel, @here, @everyone or @user.
_MENTION = re.compile(r"@(?=\w)")


def escape_chat_text(text: str) -> str:
    """Return ``text`` with chat markup made inert: ``&``, ``<``, ``>`` and mentions."""
    # Slack's rule for text that is not markup; "&" first, or the others would be doubled.
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return _MENTION.sub("@\u200b", text)


def webhook_text(alert: Alert | None, summary: Summary | None) -> str:
    """The chat message: plain text, every character of task data escaped."""
    lines = []
    if alert is not None:
        if alert.event in TASK_EVENTS:
            what = "dead-lettered" if alert.event == "dead_lettered" else "timed out"
            attempts = (
                f" after attempt {alert.attempt}/{alert.max_attempts}" if alert.attempt else ""
            )
            error = f"{alert.error_type}: {alert.message}" if alert.error_type else alert.message
            line = (
                f"[taskqueue] task {alert.task_id} ({alert.task_type}, queue {alert.queue}) "
                f"{what}{attempts}: {one_line(error)}"
            )
            path = admin_path(alert.task_id)
            if path:
                line += f" (admin: {path})"
        else:
            line = f"[taskqueue] {one_line(alert.message) or alert.label}"
        lines.append(line)
    if summary is not None:
        prefix = "...and " if alert is not None else "[taskqueue] "
        lines.append(prefix + one_line(summary.text(WEBHOOK), 3000))
    # Everything above is plain text, mostly task data (types, queues, errors, labels):
    # escaped as a whole, so no piece can be missed. The admin path stays plain text (no
    # host is known here, so no link markup); markup added later must come after this.
    return escape_chat_text("\n".join(lines))


def deliver(channel: str, alert: Alert | None, summary: Summary | None) -> bool:
    """Send one message; failures are logged, never raised, never retried."""
    try:
        if channel == EMAIL:
            subject, body = email_content(alert, summary)
            mail_admins(subject, body, fail_silently=False)
        else:
            post_webhook(webhook_text(alert, summary))
        return True
    except Exception as exc:
        logger.warning(
            "taskqueue %s alert could not be sent: %s: %s",
            channel,
            type(exc).__name__,
            exc,
            extra={"channel": channel, "event": (alert or summary).event},  # type: ignore[union-attr]
        )
        return False


def post_webhook(text: str) -> None:
    url = webhook_url()
    if url is None:
        raise ValueError("TASKQUEUE['ALERTS']['WEBHOOK_URL'] is not set")
    # Checked here too, not only by manage.py check: urllib would also open file: URLs.
    if urlsplit(url).scheme not in ("http", "https"):
        raise ValueError("TASKQUEUE['ALERTS']['WEBHOOK_URL'] must be an http(s) URL")
    host = urlsplit(url).hostname
    request = urllib.request.Request(  # noqa: S310 - scheme checked above
        url,
        data=json.dumps({"text": text}).encode(),
        headers={"Content-Type": "application/json", "User-Agent": "taskqueue-alerts"},
        method="POST",
    )
    timeout = float(config()["WEBHOOK_TIMEOUT"])
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:  # noqa: S310
            reply.read(1024)
    except urllib.error.HTTPError as exc:
        # The URL is a secret on most chat services: name its host only.
        raise RuntimeError(f"webhook at {host} answered {exc.code} {exc.reason}") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise RuntimeError(f"webhook at {host} unreachable: {reason}") from None
