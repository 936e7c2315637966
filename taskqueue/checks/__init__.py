"""System checks for ``settings.TASKQUEUE``, with one stable id per kind of problem.

``manage.py check`` (and every management command that runs checks, ``run_worker``
included) reports them; docs/checks.md lists the ids. Importing this package registers
the checks (``TaskqueueConfig.ready`` does).

- ``settings``: each top-level setting by its rule, the database, STALE_AFTER (W002);
- ``sections``: the merged dicts RETENTION, HEALTH, METRICS, EVENTS, ALERTS;
- ``schedules``: SCHEDULES and ``@periodic`` (E004);
- ``queues``: handler and schedule queues no worker serves (W003);
- ``rules`` and ``messages``: the value rules, the ids and safe wording.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

from django.core.checks import CheckMessage, Tags, register

from taskqueue.checks.messages import CHECK_FAILED, error
from taskqueue.checks.queues import check_queues_served
from taskqueue.checks.settings import check_settings

Check = Callable[..., list[CheckMessage]]


def never_raising(check: Check) -> Check:
    """``check`` reporting E011 instead of raising, so ``manage.py check`` always finishes."""

    @functools.wraps(check)
    def run(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
        try:
            return check(app_configs, **kwargs)
        except Exception as exc:  # each rule is guarded already: this is the last resort
            return [
                error(
                    CHECK_FAILED,
                    f"taskqueue's {check.__name__} could not finish: it raised "
                    f"{type(exc).__name__}.",
                    hint="Please report this as a taskqueue bug, with your TASKQUEUE setting "
                    "(tokens and webhook URLs left out).",
                )
            ]

    return run


register(never_raising(check_settings), Tags.compatibility)
register(never_raising(check_queues_served), Tags.compatibility)

__all__ = ["check_queues_served", "check_settings"]
