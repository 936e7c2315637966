"""Rows of the live event stream (``EventRecord``): written in bulk, never updated."""

from __future__ import annotations

from collections.abc import Sequence

from django.db import transaction

from taskqueue.models import EventRecord
from taskqueue.store.common import database_alias


def insert_events(records: Sequence[EventRecord]) -> None:
    """Insert unsaved event rows in as few statements as the database allows."""
    using = database_alias()
    # Its own savepoint: a failed insert inside a caller's transaction must not break it.
    with transaction.atomic(using=using):
        EventRecord.objects.using(using).bulk_create(records, batch_size=500)
