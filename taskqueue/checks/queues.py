"""W003: work on queues that no worker serves, said by ``check`` and at worker start.

A handler declared with ``queue="emails"`` while workers serve only ``default`` leaves
every task of it pending forever, and nothing fails: so ``manage.py check`` compares the
handlers' (and schedules') queues with ``TASKQUEUE["QUEUES"]``, and each worker compares
them with its own ``--queues`` when it starts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from django.core.checks import CheckMessage, Warning

from taskqueue.checks.messages import QUEUE_NOT_SERVED, SETTINGS_OBJECT, shown
from taskqueue.checks.schedules import declared_with_problems
from taskqueue.checks.sections import is_queue_name
from taskqueue.conf import DEFAULTS, user_settings
from taskqueue.core.registry import registry

# Handler names listed per queue before "and N more".
LISTED_HANDLERS = 10
SILENCE_HINT = (
    "If workers started with --queues serve it, silence this with "
    "SILENCED_SYSTEM_CHECKS = ['taskqueue.W003']."
)


def unserved_handlers(served: Iterable[str]) -> dict[str, list[str]]:
    """Queue name to the registered handlers on it, for each queue not in ``served``."""
    served = set(served)
    unserved: dict[str, list[str]] = {}
    for spec in registry.specs():
        if spec.queue not in served:
            unserved.setdefault(spec.queue, []).append(spec.name)
    return {queue: unserved[queue] for queue in sorted(unserved)}


def _listed(names: Sequence[str]) -> str:
    listed = ", ".join(names[:LISTED_HANDLERS])
    more = len(names) - LISTED_HANDLERS
    return f"{listed} and {more} more" if more > 0 else listed


def unserved_queues_line(served: Sequence[str]) -> str | None:
    """The worker's start-up warning about handler queues it does not serve, if any."""
    unserved = unserved_handlers(served)
    if not unserved:
        return None
    parts = [f"{queue!r} ({_listed(names)})" for queue, names in unserved.items()]
    noun = "queue" if len(parts) == 1 else "queues"
    listed = ", ".join(parts[:-1]) + " and " + parts[-1] if len(parts) > 1 else parts[0]
    return (
        f"handlers of {noun} {listed} are not served by this worker "
        f"(queues: {', '.join(served)}); their tasks wait for a worker started with "
        "--queues naming them"
    )


def configured_queues() -> list[str] | None:
    """``TASKQUEUE["QUEUES"]`` when it is valid, else None (check_settings reports it)."""
    queues: Any = user_settings().get("QUEUES", DEFAULTS["QUEUES"])
    if isinstance(queues, list | tuple) and queues and all(map(is_queue_name, queues)):
        return list(queues)
    return None


def check_queues_served(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """W003 for each handler queue, and each schedule's own queue, not in QUEUES."""
    queues = configured_queues()
    if queues is None:
        return []
    served = ",".join(queues)
    messages: list[CheckMessage] = []
    unserved = unserved_handlers(queues)
    for queue, names in unserved.items():
        noun = "Handler" if len(names) == 1 else "Handlers"
        messages.append(
            Warning(
                f"{noun} {_listed(names)} of queue {queue!r}: TASKQUEUE['QUEUES'] ({served}) "
                "does not list that queue, so workers started without --queues leave "
                "its tasks pending.",
                hint=f"Add {queue!r} to TASKQUEUE['QUEUES'], or run a worker with "
                f"--queues {served},{queue}. {SILENCE_HINT}",
                obj=SETTINGS_OBJECT,
                id=QUEUE_NOT_SERVED,
            )
        )
    for declared in declared_with_problems(user_settings().get("SCHEDULES", {}))[0]:
        # A schedule without a queue of its own uses its handler's: warned about above.
        if declared.queue and declared.queue not in queues and declared.queue not in unserved:
            messages.append(
                Warning(
                    f"Schedule {shown(declared.name)} enqueues on queue {declared.queue!r}: "
                    f"TASKQUEUE['QUEUES'] ({served}) does not list that queue, so workers "
                    "started without --queues leave its tasks pending.",
                    hint=f"Add {declared.queue!r} to TASKQUEUE['QUEUES'], or run a worker "
                    f"with --queues {served},{declared.queue}. {SILENCE_HINT}",
                    obj=SETTINGS_OBJECT,
                    id=QUEUE_NOT_SERVED,
                )
            )
    return messages
