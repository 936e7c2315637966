"""A schedule's definition, validated field by field.

Shared by ``@taskqueue.periodic``, ``TASKQUEUE["SCHEDULES"]`` and the admin form, so each
says what is wrong in the same words. Nothing here touches the database.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from django.core.exceptions import ImproperlyConfigured, ValidationError
from django.core.validators import URLValidator

from taskqueue.conf import settings as tq_settings
from taskqueue.core import outbound
from taskqueue.core.limits import MAX_DELAY_SECONDS
from taskqueue.core.payloads import check_json, short_repr
from taskqueue.core.priorities import resolve_priority
from taskqueue.core.registry import registry, validate_queue_name
from taskqueue.exceptions import InvalidPayload, InvalidTaskOption
from taskqueue.schedules.cron import CronError, get_zone, validate_cron

# The values of ``taskqueue.models.CatchUp`` (not imported: models need the app registry).
CATCH_UP_CHOICES = ("once", "all", "skip")
SOURCE_CODE = "code"
SOURCE_SETTINGS = "settings"
SETTINGS_KEYS = frozenset(
    {
        "task",
        "cron",
        "timezone",
        "payload",
        "queue",
        "priority",
        "catch_up",
        "grace",
        "heartbeat_url",
        "enabled",
        "description",
    }
)
NAME_MAX_LENGTH = 200
URL_MAX_LENGTH = 500
HEARTBEAT_HOSTS_SETTING = "TASKQUEUE['HEARTBEAT_HOSTS']"
PENDING_ATTRIBUTE = "_taskqueue_periodic"
_url_validator = URLValidator(schemes=["http", "https"])


class ScheduleDefinitionError(ValueError):
    """One field of a schedule is invalid; the message names it and says why."""


@dataclass(frozen=True)
class ScheduleDeclaration:
    """A schedule as written in code or settings, validated."""

    name: str
    task: str
    cron: str
    timezone: str = "UTC"
    payload: dict[str, Any] = field(default_factory=dict)
    queue: str = ""
    priority: int | None = None
    catch_up: str = "once"
    grace: float | None = None
    heartbeat_url: str = ""
    description: str = ""
    enabled: bool = True
    source: str = SOURCE_CODE
    origin: str = ""  # where it was declared, for messages

    def definition(self) -> dict[str, Any]:
        """The ``Schedule`` columns this declaration decides."""
        return {
            "task_type": self.task,
            "cron": self.cron,
            "timezone": self.timezone,
            "payload": self.payload,
            "queue": self.queue,
            "priority": self.priority,
            "catch_up": self.catch_up,
            "grace": self.grace,
            "heartbeat_url": self.heartbeat_url,
            "description": self.description,
            "source": self.source,
        }


# --- field validation (shared with the admin form) -----------------------------------------


def validate_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip() or len(name) > NAME_MAX_LENGTH:
        raise ScheduleDefinitionError(
            f"schedule name must be a non-empty string of at most {NAME_MAX_LENGTH} "
            f"characters, got {short_repr(name)}"
        )
    return name


def validate_timezone(timezone: Any) -> str:
    get_zone(timezone)
    return str(timezone)


def validate_payload(payload: Any) -> dict[str, Any]:
    if payload is None:
        return {}
    if not isinstance(payload, Mapping):
        raise ScheduleDefinitionError(
            f"payload must be a dict of keyword arguments, got {type(payload).__name__}"
        )
    try:
        check_json(payload)
    except InvalidPayload as exc:
        raise ScheduleDefinitionError(str(exc)) from None
    return dict(payload)


def validate_payload_for_task(task: str, payload: dict[str, Any]) -> None:
    """Check that ``payload`` binds to the handler of ``task``, when this process has it."""
    if task not in registry:
        return
    spec = registry.get(task)
    try:
        spec.bind_payload(payload, context=object())
    except TypeError as exc:
        raise ScheduleDefinitionError(
            f"payload does not match handler {task!r}{spec.signature}: {exc}"
        ) from None


def validate_catch_up(catch_up: Any) -> str:
    if catch_up not in CATCH_UP_CHOICES:
        choices = ", ".join(repr(choice) for choice in CATCH_UP_CHOICES)
        raise ScheduleDefinitionError(
            f"catch_up must be one of {choices}, got {short_repr(catch_up)}"
        )
    return str(catch_up)


def validate_grace(grace: Any) -> float | None:
    if grace is None:
        return None
    if (
        isinstance(grace, bool)
        or not isinstance(grace, int | float)
        or (isinstance(grace, float) and not math.isfinite(grace))
        or grace <= 0
        or grace > MAX_DELAY_SECONDS
    ):
        raise ScheduleDefinitionError(
            "grace must be a positive number of seconds up to 10 years (or None for "
            f"SCHEDULE_GRACE), got {short_repr(grace)}"
        )
    return float(grace)


def validate_heartbeat_url(url: Any, *, entered_in_admin: bool = False) -> str:
    """Check a heartbeat URL's shape; one entered in the admin must pass the outbound guard.

    URLs declared in code or settings are written by the project's developers: any host may
    be named there (their addresses are still judged when pinged). A URL typed into the
    admin is untrusted: its host must be in ``TASKQUEUE['HEARTBEAT_HOSTS']`` and resolve to
    addresses ``taskqueue.core.outbound`` allows.
    """
    if url in ("", None):
        return ""
    if not isinstance(url, str) or len(url) > URL_MAX_LENGTH:
        shown = _url_without_path(url) if isinstance(url, str) else repr(url)
        raise ScheduleDefinitionError(
            f"heartbeat_url must be an http(s) URL of at most {URL_MAX_LENGTH} characters, "
            f"got {shown}"
        )
    try:
        _url_validator(url)
    except ValidationError:
        raise ScheduleDefinitionError(
            f"heartbeat_url must be an http:// or https:// URL, got {_url_without_path(url)}"
        ) from None
    try:
        if entered_in_admin:
            hosts = outbound.AllowList.parse(tq_settings.HEARTBEAT_HOSTS, HEARTBEAT_HOSTS_SETTING)
            outbound.check_url(url, hosts)
        else:
            outbound.parse_url(url)
    except outbound.OutboundRefused as exc:
        raise ScheduleDefinitionError(f"heartbeat_url {exc}") from None
    except ImproperlyConfigured as exc:
        raise ScheduleDefinitionError(f"heartbeat URLs cannot be checked: {exc}") from None
    return url


def _url_without_path(url: str) -> str:
    # A monitor's ping URL keeps its secret in the path: messages show the rest.
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        return f"a URL of {len(url)} characters"
    return repr(f"{parts.scheme}://{host}/..." if parts.scheme else f"{url.partition('/')[0]}/...")


def declaration(name: Any, task: Any, cron: Any, **options: Any) -> ScheduleDeclaration:
    """Validate a schedule's fields; ``ScheduleDefinitionError`` names the first bad one."""
    try:
        cron = validate_cron(cron)
        timezone = validate_timezone(options.pop("timezone", "UTC"))
    except CronError as exc:
        raise ScheduleDefinitionError(str(exc)) from None
    if not isinstance(task, str) or not task:
        raise ScheduleDefinitionError(f"task must be a task type name, got {short_repr(task)}")
    queue = options.pop("queue", None)
    priority = options.pop("priority", None)
    enabled = options.pop("enabled", True)
    description = options.pop("description", "")
    try:
        if queue not in (None, ""):
            validate_queue_name(queue)
        if priority is not None:
            priority = resolve_priority(priority)
    except InvalidTaskOption as exc:
        raise ScheduleDefinitionError(str(exc)) from None
    if not isinstance(enabled, bool):
        raise ScheduleDefinitionError(f"enabled must be True or False, got {short_repr(enabled)}")
    if not isinstance(description, str):
        raise ScheduleDefinitionError(
            f"description must be a string, got {short_repr(description)}"
        )
    payload = validate_payload(options.pop("payload", None))
    return ScheduleDeclaration(
        name=validate_name(name),
        task=task,
        cron=cron,
        timezone=timezone,
        payload=payload,
        queue=queue or "",
        priority=priority,
        catch_up=validate_catch_up(options.pop("catch_up", "once")),
        grace=validate_grace(options.pop("grace", None)),
        heartbeat_url=validate_heartbeat_url(options.pop("heartbeat_url", "")),
        description=description,
        enabled=enabled,
        **options,
    )
