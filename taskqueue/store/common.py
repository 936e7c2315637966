"""Helpers shared by the store modules."""

from __future__ import annotations

from typing import Any

from taskqueue.conf import settings as tq_settings


def database_alias() -> str:
    return tq_settings.DATABASE


def user_or_none(user: Any) -> Any:
    # request.user of an anonymous visitor is not a row: record no creator.
    if user is None or not getattr(user, "is_authenticated", True):
        return None
    return user
