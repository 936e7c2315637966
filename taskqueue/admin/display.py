"""HTML fragments the admin pages share; every value from a task goes through format_html."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import urlencode

from django.urls import reverse
from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString
from django.utils.text import Truncator

from taskqueue.models import TaskStatus

# Badge colours from the admin's own palette; the keys are the contract's state values.
STATUS_COLOURS: dict[str, str] = {
    TaskStatus.PENDING: "#417690",
    TaskStatus.SCHEDULED: "#79aec8",
    TaskStatus.WAITING: "#8a8a8a",
    TaskStatus.RUNNING: "#b68d00",
    TaskStatus.RETRYING: "#c05f00",
    TaskStatus.COMPLETED: "#2e7d32",
    TaskStatus.FAILED: "#ba2121",
    TaskStatus.CANCELLED: "#5f5f5f",
}
PRE_STYLE = "white-space: pre-wrap; word-break: break-word; max-height: 40em; overflow: auto;"


def status_badge(status: str) -> SafeString:
    """Render a task status as a small coloured badge."""
    colour = STATUS_COLOURS.get(status, "#5f5f5f")
    label = TaskStatus(status).label if status in TaskStatus.values else status
    return format_html(
        '<span class="taskqueue-status taskqueue-status-{}" style="background: {}; color: #fff; '
        'padding: 1px 6px; border-radius: 8px; font-size: 0.85em; white-space: nowrap;">'
        "{}</span>",
        status,
        colour,
        label,
    )


def pretty_json(value: Any) -> str:
    """Return ``value`` as indented JSON with sorted keys."""
    # default=str: a JSON column always holds JSON, but a page must never fail to render.
    return json.dumps(value, indent=2, sort_keys=True, ensure_ascii=False, default=str)


def json_block(value: Any) -> SafeString:
    """Render a JSON value pretty-printed in an escaped ``<pre>``."""
    return text_block(pretty_json(value))


def text_block(text: str) -> SafeString:
    """Render text (errors, tracebacks) in an escaped ``<pre>``."""
    return format_html('<pre class="taskqueue-pre" style="{}">{}</pre>', PRE_STYLE, text)


def collapsed_text(summary: str, text: str) -> SafeString:
    """Render long text (a traceback) folded under a summary line."""
    if not text:
        return format_html("{}", "-")
    return format_html("<details><summary>{}</summary>{}</details>", summary, text_block(text))


def truncated(text: str, length: int = 80) -> str:
    """Shorten ``text`` to one line of at most ``length`` characters."""
    return Truncator(" ".join(text.split())).chars(length)


def progress_bar(progress: float | None, message: str = "") -> SafeString | str:
    """Render a 0..1 progress fraction as a bar with its percentage."""
    if progress is None:
        return "-"
    percent = round(max(0.0, min(1.0, progress)) * 100)
    return format_html(
        '<progress value="{}" max="100" title="{}"></progress> {}%', percent, message, percent
    )


def progress_summary(progress: float | None, message: str = "") -> SafeString | str:
    """Render progress for a list row: the bar, its percentage and the message, shortened."""
    bar = progress_bar(progress, message)
    if progress is None or not message:
        return bar
    return format_html(
        '{} <span class="taskqueue-progress-message">{}</span>', bar, truncated(message, 60)
    )


def admin_link(model_name: str, pk: Any, text: Any) -> SafeString:
    """Link to one taskqueue object's admin page."""
    url = reverse(f"admin:taskqueue_{model_name}_change", args=[pk])
    return format_html('<a href="{}">{}</a>', url, text)


def changelist_url(model_name: str, query: dict[str, Any]) -> str:
    """URL of a taskqueue changelist filtered by ``query``."""
    return f"{reverse(f'admin:taskqueue_{model_name}_changelist')}?{urlencode(query)}"


def changelist_link(model_name: str, query: dict[str, Any], text: Any) -> SafeString:
    """Link to a taskqueue changelist filtered by ``query``."""
    return format_html('<a href="{}">{}</a>', changelist_url(model_name, query), text)


def links(items: list[SafeString]) -> SafeString | str:
    """Join links one per line; "-" when there are none."""
    if not items:
        return "-"
    return format_html_join("", "<div>{}</div>", ((item,) for item in items))
