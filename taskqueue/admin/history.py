"""The admin history: every action taken from the taskqueue admin is recorded in Django's
``LogEntry`` (who, when, what), so it shows on the object's History page."""

from __future__ import annotations

from collections.abc import Iterable

from django.contrib.admin.models import CHANGE, DELETION, LogEntry
from django.contrib.contenttypes.models import ContentType
from django.db.models import Model
from django.http import HttpRequest


def record_change(request: HttpRequest, objects: Iterable[Model], message: str) -> None:
    """Say in each object's history that ``request.user`` did ``message`` to it."""
    _record(request, objects, message, CHANGE)


def record_deletion(request: HttpRequest, objects: Iterable[Model], message: str) -> None:
    """Say that ``request.user`` deleted these objects (call before the rows go)."""
    _record(request, objects, message, DELETION)


def _record(request: HttpRequest, objects: Iterable[Model], message: str, flag: int) -> None:
    objects = list(objects)
    if not objects:
        return
    # LogEntry rows live in the default database, whatever alias holds the queue's tables.
    content_type = ContentType.objects.get_for_model(objects[0], for_concrete_model=False)
    LogEntry.objects.bulk_create(
        LogEntry(
            user_id=request.user.pk,
            content_type=content_type,
            object_id=str(obj.pk),
            object_repr=str(obj)[:200],
            action_flag=flag,
            change_message=message,
        )
        for obj in objects
    )
