"""What every taskqueue ModelAdmin shares: the queue's database and read-only defaults."""

from __future__ import annotations

from typing import Any

from django.contrib import admin
from django.db.models import Model, QuerySet
from django.http import HttpRequest

from taskqueue import store


class QueueModelAdmin(admin.ModelAdmin):
    """Reads and writes the queue's own database alias (``TASKQUEUE["DATABASE"]``)."""

    # Counting every row of a large task table on each page load is the slow part of a
    # changelist; the filtered count is still shown.
    show_full_result_count = False
    list_per_page = 50

    def get_queryset(self, request: HttpRequest) -> QuerySet[Any]:
        return super().get_queryset(request).using(store.database_alias())

    def save_model(self, request: HttpRequest, obj: Model, form: Any, change: bool) -> None:
        # Rows change only through store verbs: an admin whose form edits a column overrides
        # this with the verb that writes it (dead letter notes, schedules). The others show
        # read-only fields, so their forms change nothing.
        return

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        # Rows are created by enqueue and by workers, never by hand.
        return False


class StoreDeletesModelAdmin(QueueModelAdmin):
    """Without Django's bulk ``delete_selected``: it would bypass the store (and running tasks)."""

    # ``action_location`` is new in Django 6.1, whose admin warns about overrides without it.
    def get_actions(self, request: HttpRequest, action_location: Any = None) -> dict[str, Any]:
        location = {} if action_location is None else {"action_location": action_location}
        found = super().get_actions(request, **location)
        found.pop("delete_selected", None)
        return found


class ReadOnlyModelAdmin(QueueModelAdmin):
    """Pages to look at, never to edit: no change form, no delete, no actions."""

    actions = None

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False
